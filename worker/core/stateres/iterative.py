"""The iterative auth checks of state resolution v2 and v2.1.

Spec: https://spec.matrix.org/latest/rooms/v2/#iterative-auth-checks. Each event, in the
order given, is applied to a state map if the auth rules allow it against that state; the
auth events come from the state for every key the rules need, and fall back to the event's
own auth events where the state has none.

Rejected events (`Events.rejected`) take no part, as in Synapse: a previously rejected event
is never applied, and never read as an auth event, neither from the state (a state set can
hold an event rejected here, e.g. one another server accepted) nor from the event's own
auth events; where the state's event is rejected, the event's own auth event stands in.
The spec's text would check a previously rejected event again; docs/interop.md says why we
do not.

Self-joins and self-leaves, nearly all of what a big room's resolution checks, are decided
by `SelfMembershipTable` (rule 5 of `worker.core.auth.member`, tabulated) when the spec's
rules are in use; everything else, and whatever the table does not answer, runs the full
rules. Long runs of self-joins (a big room's fork) are decided a run at a time when all are
allowed (`_Checks._joins_at_once`). `tests/core/test_stateres_shortcut.py` checks that all
of these give the same states.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from itertools import compress, repeat
from operator import attrgetter, eq, is_, itemgetter, not_
from typing import Any, cast

from worker.core.auth import check_auth
from worker.core.auth.self_membership import SelfMembershipTable, Table, table_for
from worker.core.events import MEMBER, Event, StateKey
from worker.core.stateres import join_runs
from worker.core.stateres.events import CREATE, JOIN_RULES, POWER_LEVELS, Events
from worker.core.stateres.join_runs import table_fields
from worker.core.stateres.model import Authorizer

# Marks a missing entry where None is a value.
_ABSENT: Any = object()
# From how many self-joins in a row the table decides them together (`_Checks.run`).
_AUTH_IDS = attrgetter("auth_event_ids")
_STATE_KEY = attrgetter("state_key")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


def iterative_auth_checks(
    events: Events,
    authz: Authorizer,
    order: list[str],
    state: dict[StateKey, str],
    order_events: Sequence[Event] | None = None,
    *,
    keys: Sequence[StateKey] = (),
    start: StartState | None = None,
) -> int:
    """Apply each event of `order` to `state` (in place) if the auth rules allow it against
    that state. `order_events[i]`, when given, is the event of `order[i]`. Returns how many
    checks ran (state events that were not rejected before).

    `keys` may hold key tuples to write `state`'s new entries with (the state sets' own, so
    that thousands of equal ones are not built again), none of them a key `state` held at
    the start; `start`, when given, keeps what the checks overwrite of that starting
    state (see `StartState`).
    """
    if order_events is None:
        cache = events.cache
        found = list(map(cache.get, order))
        if all(found):
            order_events = cast("list[Event]", found)
        else:
            # Every event must be known; `must` raises for the first one that is not.
            order_events = [
                ev if ev else events.must(e) for e, ev in zip(order, found, strict=True)
            ]
    checks = _Checks(events, authz, state, keys)
    checks.start = start
    return checks.run(order, order_events)


class StartState:
    """The entries of a starting state the checks overwrote, with their values from the
    start (`saved`), and the keys the checks added (`added`): v2 runs the checks twice over
    U itself, then puts back what they overwrote of it, instead of copying U first. A key
    written is the starting state's if the state holds it, the checks did not add it and
    it is not one of the `keys` given to them (those are conflicted keys)."""

    __slots__ = ("added", "saved")

    def __init__(self) -> None:
        self.saved: dict[StateKey, str] = {}
        self.added: set[StateKey] = set()

    def before_write(self, key: StateKey, state: Mapping[StateKey, str]) -> None:
        """Note `key` before a write to `state` (not a key given to the checks)."""
        if key in self.added or key in self.saved:
            return
        old = state.get(key)
        if old is None:
            self.added.add(key)
        else:
            self.saved[key] = old


class _Checks:
    """One run of the iterative auth checks over one state map.

    `auth_state` is the state as the auth rules read it: `state` itself, or, when `state`
    holds rejected events, a copy without them (rejected events are never applied, so only
    the starting state can hold them).
    """

    __slots__ = (
        "auth_state",
        "authz",
        "create",
        "events",
        "in_state",
        "join_verdicts",
        "key_source",
        "member_keys",
        "not_member",
        "pl_unchecked",
        "rejected",
        "spec_rules",
        "start",
        "state",
        "table",
    )

    def __init__(
        self,
        events: Events,
        authz: Authorizer,
        state: dict[StateKey, str],
        keys: Sequence[StateKey] = (),
    ) -> None:
        self.events = events
        self.authz = authz
        self.state = state
        self.rejected = events.rejected
        self.auth_state = _without_rejected(events, state)
        # Auth event IDs known not to be anybody's usable membership event: events of other
        # types, unknown events, rejected events. Most events cite only such events besides
        # their sender's membership, so the fallback is usually one subset test.
        self.not_member: set[str] = set()
        # user -> the membership of their m.room.member event in `auth_state` (as the rules
        # read it), for the users met so far: their later events skip the lookups (a stale
        # fork checks each user's old event, then their new one).
        self.in_state: dict[str, Any] = {}
        # user -> a key tuple (m.room.member, user) of `keys`, built when first needed.
        self.key_source = keys
        self.member_keys: dict[str, StateKey] | None = None
        # What the checks overwrite of the starting state (`iterative_auth_checks`).
        self.start: StartState | None = None
        # The full rules look up the power levels event for every membership event, so an
        # unknown one must fail the same way when the table decides, once.
        self.pl_unchecked = self.auth_state.get(POWER_LEVELS)
        # The table is exact only for the spec's rules.
        self.spec_rules = authz.check is check_auth
        create_id = self.auth_state.get(CREATE)
        self._use_create(events.must(create_id) if create_id is not None else None)

    def _use_create(self, create: Event | None) -> None:
        """The create event in force (only applying a create event changes it)."""
        self.create = create
        self.table: SelfMembershipTable | None = None
        if self.spec_rules and create is not None:
            table = table_for(self.events.rules, create)
            self.table = table if table.usable else None
        # The join verdicts of the state's join rules event (None: to be built).
        self.join_verdicts: Table | None = None

    def run(self, order: list[str], order_events: Sequence[Event]) -> int:
        rejected = self.rejected
        if rejected:
            # Rejected events never change the state.
            keep = [eid not in rejected for eid in order]
            order = list(compress(order, keep))
            order_events = list(compress(order_events, keep))
        # user -> their last self-membership event the table accepted (`_apply_members`).
        accepted: dict[str, str] = {}
        checked = 0
        start = 0
        table = self.table
        if table is not None and len(order) >= join_runs.BATCH:
            for lo, hi in join_runs.self_join_runs(table, order_events):
                # (Applying a create event changes the table the runs were found with.)
                if self.table is not table:
                    break
                checked += self._one_by_one(order[start:lo], order_events[start:lo], accepted)
                ids, evs = order[lo:hi], order_events[lo:hi]
                users = cast("list[str]", list(map(_STATE_KEY, evs)))
                if self._joins_at_once(ids, evs, users, accepted, hi < len(order)):
                    checked += hi - lo
                else:
                    checked += self._one_by_one(ids, evs, accepted)
                start = hi
        if start:
            order, order_events = order[start:], order_events[start:]
        checked += self._one_by_one(order, order_events, accepted)
        if accepted:
            self._apply_members(accepted)
        return checked

    def _one_by_one(
        self, order: list[str], order_events: Sequence[Event], accepted: dict[str, str]
    ) -> int:
        """Check the events one at a time; returns how many checks ran."""
        # Locals: this loop runs for every conflicted event of a big room, and nearly all
        # of them are self-joins and self-leaves, decided here by the table without a call.
        # What the table reads is copied into locals, read again whenever the full rules
        # applied an event (which may change the create event, hence the table, or the
        # join rules).
        in_state, auth_state = self.in_state, self.auth_state
        in_get = in_state.get
        cites_no_member = self.not_member.issuperset
        checked = 0
        table = self.table
        rules, room_id, first_joiner, create_prev, leave_allowed = table_fields(table)
        joins = self.join_verdicts
        for eid, ev in zip(order, order_events, strict=True):
            state_key = ev.state_key
            # Only state events change the state.
            if state_key is None:
                continue
            checked += 1
            membership = ev.plain_self_membership
            # Rules 2-4 and 5.2 cannot refuse the event, 5.3.1 is not involved.
            if (
                table is not None
                and (membership == "join" or membership == "leave")
                and ev.rules is rules
                and (room_id is None or ev.room_id == room_id)
                and not (
                    state_key == first_joiner
                    and membership == "join"
                    and ev.prev_event_ids == create_prev
                )
            ):
                if self.pl_unchecked is not None:
                    self.events.must(self.pl_unchecked)
                    self.pl_unchecked = None
                current = in_get(state_key, _ABSENT)
                if current is _ABSENT:
                    # Met for the first time: usually the state has no membership for
                    # them and the event cites none (the implied create event of v12
                    # is nobody's membership either).
                    if (MEMBER, state_key) not in auth_state and cites_no_member(ev.auth_event_ids):
                        current = None
                    else:
                        current = self._membership(ev, state_key)
                verdict: bool | None
                if membership == "join":
                    if joins is None:
                        verdicts, default = self._join_verdicts(table, ev)
                        # (Kept only when they come from the state's join rules.)
                        joins = self.join_verdicts
                    else:
                        verdicts, default = joins
                    try:
                        verdict = verdicts.get(current, default)
                    except TypeError:
                        # An unhashable membership is no membership (`membership_of`).
                        verdict = default
                else:
                    try:
                        verdict = current in leave_allowed
                    except TypeError:
                        verdict = False
                if verdict is not None:
                    if verdict:
                        accepted[state_key] = eid
                        in_state[state_key] = membership
                    continue
            if accepted:
                self._apply_members(accepted)
            self._by_rules(eid, ev, state_key)
            # (Applying a create event changes the table, join rules their verdicts.)
            if self.table is not table:
                table = self.table
                rules, room_id, first_joiner, create_prev, leave_allowed = table_fields(table)
            joins = self.join_verdicts
        return checked

    def _joins_at_once(
        self,
        ids: list[str],
        evs: Sequence[Event],
        users: list[str],
        acc: dict[str, str],
        more: bool,
    ) -> bool:
        """Decide and write a run of self-joins the table answers (`join_runs.self_join_runs`;
        `users` are their senders) at once when all are allowed; else return False, having
        changed only memos and when `acc` (accepted) is written (see `_apply_members`).
        `more`: whether events follow (which would read `in_state`).

        Under the state's join rules a join depends on the sender's current membership
        alone: a user's first join here reads it as `_one_by_one` does, each later one finds
        the join before it. So "all allowed" asks about each user's first join and, if some
        user joins twice, about a join from "join"; the writes follow from the run itself.
        """
        table = self.table
        auth_state = self.auth_state
        join_rules = auth_state.get(JOIN_RULES)
        # No join rules in the state: each join reads its own. An unknown one: the error
        # must come when `_one_by_one` raises it, after the memberships it reads first.
        if table is None or join_rules is None or self.events.get(join_rules) is None:
            return False
        if self.pl_unchecked is not None:
            self.events.must(self.pl_unchecked)
            self.pl_unchecked = None
        verdicts, default = self.join_verdicts or self._join_verdicts(table, evs[0])
        # user -> their last join, in the order the users are first met.
        last = dict(zip(users, ids, strict=True))
        if len(last) < len(users) and verdicts.get("join", default) is not True:
            return False
        met = list(last)
        if met == users[: len(met)]:
            # The first joins of the users come first (each user's first join comes before
            # anyone's second): they are the first events of the run.
            firsts = list(evs[: len(met)])
        else:
            # user -> their first join (reversed, so that the earliest one stays).
            first = dict(zip(reversed(users), reversed(evs), strict=True))
            firsts = list(map(first.__getitem__, met))
        keys = self._member_keys(met)
        in_state = self.in_state
        currents: list[Any] = []
        new, new_keys = met, keys
        if in_state and not in_state.keys().isdisjoint(met):
            got = list(map(in_state.get, met, repeat(_ABSENT)))
            fresh = list(map(is_, got, repeat(_ABSENT)))
            currents = list(compress(got, map(not_, fresh)))
            new = list(compress(met, fresh))
            new_keys = list(compress(keys, fresh))
            firsts = list(compress(firsts, fresh))
        if new:
            # Users met for the first time, read as `_one_by_one` reads them.
            currents += self._first_memberships(new, new_keys, firsts)
        try:
            if not all(map(verdicts.get, currents, repeat(default))):
                return False
        except TypeError:
            # (An unhashable membership: `_one_by_one` knows what it means.)
            return False
        if acc:
            self._apply_members(acc)
        if more:
            in_state.update(zip(last, repeat("join")))
        self.state.update(zip(keys, last.values(), strict=True))
        if auth_state is not self.state:
            auth_state.update(zip(keys, last.values(), strict=True))
        return True

    def _first_memberships(
        self, users: list[str], keys: list[StateKey], evs: list[Event]
    ) -> list[Any]:
        """The memberships (any order, repeats allowed) of `users`, met first with `evs`
        (`keys`: their member keys), as `_one_by_one` reads them."""
        auth_state = self.auth_state
        if not auth_state.keys().isdisjoint(keys):
            return list(map(self._membership, evs, users))
        # Usually no join cites a membership: one reading learns which auth events are
        # nobody's (those every join cites), before the others are tested again.
        auths = list(map(_AUTH_IDS, evs))
        cites_none = self.not_member.issuperset
        out: list[Any] = []
        if self.not_member:
            plain = list(map(cites_none, auths))
            i = -1 if all(plain) else plain.index(False)
        else:
            # Nothing learnt yet: the first event citing anything is the first to read.
            i = next(compress(range(len(auths)), auths), -1)
            plain = [True] * len(auths) if i < 0 else []
        if i >= 0:
            out.append(self._own_membership(evs[i]))
            plain = list(map(cites_none, auths))
            out += map(self._own_membership, compress(evs, map(not_, plain)))
        if any(plain):
            out.append(None)
        return out

    def _apply_members(self, accepted: dict[str, str]) -> None:
        """Write the self-memberships the table accepted into the state, and forget them.

        They wait in `accepted` (user -> event ID) until the full rules next read the
        state, or the run ends: the table reads a sender's membership from `in_state`,
        which is kept current, so the state is only written once per user, and in the
        order the users were first accepted, as writing each event at once would.
        """
        keys = self._member_keys(accepted)
        self.state.update(zip(keys, accepted.values(), strict=True))
        if self.auth_state is not self.state:
            self.auth_state.update(zip(keys, accepted.values(), strict=True))
        accepted.clear()

    def _member_keys(self, users: Collection[str]) -> list[StateKey]:
        """The keys (m.room.member, user) of `users`, taken from `key_source` where it has
        them: thousands of new tuples kept at once would wake the garbage collector, which
        then walks them all, and everything else created since, a few times over."""
        known = self._known_keys()
        keys = list(map(known.get, users))
        if None in keys:
            made = [
                (MEMBER, user) if key is None else key
                for key, user in zip(keys, users, strict=True)
            ]
            # (Noted whether written or not: a key noted but not written is put back as
            # it is, or was not in the state.)
            start = self.start
            if start is not None:
                for key, given in zip(made, keys, strict=True):
                    if given is None:
                        start.before_write(key, self.state)
            return made
        return cast("list[StateKey]", keys)

    def _known_keys(self) -> dict[str, StateKey]:
        """user -> their key among `key_source`, built when first needed."""
        known = self.member_keys
        if known is None:
            source = self.key_source
            members = list(compress(source, map(eq, map(_FIRST, source), repeat(MEMBER))))
            known = self.member_keys = dict(zip(map(_SECOND, members), members, strict=True))
        return known

    def _given(self, key: StateKey) -> bool:
        """Whether `key` is one of the member keys given to the checks."""
        return key[0] == MEMBER and self._known_keys().get(key[1]) == key

    def _own_membership(self, ev: Event) -> Any:
        """The sender's membership in the event's own auth events (the state has none)."""
        member = self._own_auth_event(ev, (MEMBER, cast(str, ev.state_key)))
        return member.content.get("membership") if member is not None else None

    def _membership(self, ev: Event, user: str) -> Any:
        """The sender's membership as the auth events would hold it: the state's event,
        else the event's own (usually: it cites none)."""
        sid = self.auth_state.get((MEMBER, user))
        member: Event | None
        if sid is not None:
            member = self.events.must(sid)
        else:
            member = self._own_auth_event(ev, (MEMBER, user))
        current = member.content.get("membership") if member is not None else None
        if sid is not None:
            self.in_state[user] = current
        return current

    def _join_verdicts(self, table: SelfMembershipTable, ev: Event) -> Table:
        """The self-join table under the state's join rules (else the event's own)."""
        sid = self.auth_state.get(JOIN_RULES)
        if sid is None:
            return table.join_table(self._own_auth_event(ev, JOIN_RULES))
        self.join_verdicts = table.join_table(self.events.must(sid))
        return self.join_verdicts

    def _by_rules(self, eid: str, ev: Event, state_key: str) -> None:
        """Decide an event by the full auth rules."""
        if self.authz.check(ev, self._auth_events(ev)) is not None:
            return
        key = (ev.type, state_key)
        self._apply(key, eid)
        # (A membership changed by the full rules is read again when next needed.)
        self.in_state.pop(state_key, None)
        if key == JOIN_RULES:
            self.join_verdicts = None
        elif key == CREATE:
            self._use_create(ev)

    def _auth_events(self, ev: Event) -> dict[StateKey, Event]:
        """The auth events of `ev`: the state's for every key the rules need, the event's own
        (not rejected) where the state has none."""
        auth_state = self.auth_state
        must = self.events.must
        auth_events: dict[StateKey, Event] = {}
        missing = False
        for k in self.authz.auth_types(ev):
            sid = auth_state.get(k)
            if sid is not None:
                auth_events[k] = must(sid)
            else:
                missing = True
        # The auth rules read the create event in every version, including v12 where it
        # is no longer among the selected auth types.
        if self.create is not None:
            auth_events[CREATE] = self.create
        else:
            missing = True
        if missing:
            # (The rules only read the keys of the auth types and create.)
            get = self.events.get
            rejected = self.rejected
            for aid in self.events.auth_refs(ev):
                if aid in rejected:
                    continue
                aev = get(aid)
                if aev is not None and aev.state_key is not None:
                    auth_events.setdefault((aev.type, aev.state_key), aev)
        return auth_events

    def _own_auth_event(self, ev: Event, key: StateKey) -> Event | None:
        """The event's own auth event for `key`, unless rejected."""
        events = self.events
        # (Only v12 events cite their create event implicitly, see `Events.auth_refs`.)
        refs = events.auth_refs(ev) if events.rules.room_id_from_create_event else ev.auth_event_ids
        not_member = self.not_member
        etype, skey = key
        if etype == MEMBER and not_member.issuperset(refs):
            return None
        rejected = self.rejected
        for aid in refs:
            if aid in rejected:
                not_member.add(aid)
                continue
            aev = events.get(aid)
            if aev is None or aev.type != MEMBER:
                not_member.add(aid)
            if aev is not None and aev.state_key == skey and aev.type == etype:
                return aev
        return None

    def _apply(self, key: StateKey, eid: str) -> None:
        start = self.start
        if start is not None and not self._given(key):
            start.before_write(key, self.state)
        self.state[key] = eid
        if self.auth_state is not self.state:
            self.auth_state[key] = eid


def _without_rejected(events: Events, state: dict[StateKey, str]) -> dict[StateKey, str]:
    """`state`, or a copy without its rejected events when it holds any."""
    rejected = events.rejected
    if not rejected:
        return state
    shadowed = [
        k
        for r in rejected
        if (ev := events.get(r)) is not None
        and (k := ev.state_tuple) is not None
        and state.get(k) == r
    ]
    if not shadowed:
        return state
    kept = dict(state)
    for k in shadowed:
        del kept[k]
    return kept
