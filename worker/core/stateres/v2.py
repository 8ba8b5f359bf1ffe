"""State resolution v2 (room versions 2-11) and v2.1 (room version 12, MSC4297).

v2.1 is v2 with two flags:

- the *conflicted state subgraph* (every event on an auth path from one conflicted state event
  to another, both ends included) joins the full conflicted set, and
- the first iterative auth checks start from an empty state map instead of the unconflicted
  state map (which is still applied over the result at the end).

Both flags come from `RoomRules.state_res` (STYLE R2), never from a version string.

Spec: https://spec.matrix.org/latest/rooms/v2/#state-resolution (v2),
https://spec.matrix.org/latest/rooms/v12/#state-resolution (v2.1). Synapse's
`synapse/state/v2.py` and ruma's `state_res.rs` were read for comparison.

Where the work goes: splitting the state sets touches every key once (dict lookups only);
everything after that is proportional to the conflicted events, the auth difference and
the auth-chain walks that find it. The unconflicted state is walked once, and that walk
stops as soon as it reaches events that every state set's auth chain contains.

In a big room nearly all of that is thousands of membership events, so the per-event
costs are kept to a few dict and attribute reads (measured by `python -m bench stateres`:
about 2 µs per conflicted event, all steps included):

- the conflicted events are looked up once and travel as parallel (IDs, events) lists;
- auth chains are walked a generation at a time with set algebra (`Events.walk`);
- the mainline ordering sorts by one key at a time (`Mainline.order_events`);
- the iterative auth checks decide self-joins and self-leaves through a table
  (`worker.core.auth.fast`), running the full auth rules for everything else.

Every shortcut gives the same answers as the plain algorithm: the tests in
`tests/core/test_stateres_shortcut.py` and `test_stateres_wide.py` compare them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from typing import Any, cast

from worker.core.auth import check_auth
from worker.core.auth.fast import VIA, shortcut_for
from worker.core.events import Event, StateKey
from worker.core.stateres.common import (
    CREATE,
    JOIN_RULES,
    MEMBER,
    POWER_LEVELS,
    Authorizer,
    Events,
    Mainline,
    ResolutionStats,
    UnknownEvent,
    is_power_event,
    lexicographic_topo_sort,
    sender_power,
    separate_v2,
)
from worker.core.versions import StateResAlgorithm


@dataclass(frozen=True, slots=True)
class V2Flags:
    """The v2.1 tweaks (ruma calls them `StateResolutionV2Rules`)."""

    # MSC4297: include the conflicted state subgraph in the full conflicted set.
    conflicted_subgraph: bool
    # MSC4297: begin the first iterative auth checks from an empty state map.
    start_from_empty_state: bool

    @staticmethod
    def for_algorithm(alg: StateResAlgorithm) -> V2Flags:
        on = alg is StateResAlgorithm.V2_1
        return V2Flags(conflicted_subgraph=on, start_from_empty_state=on)


# From how many events the mainline ordering reuses what the auth-chain walks saw.
_MANY = 64
# Marks a missing entry where None is a value.
_ABSENT: Any = object()


def resolve_v2(
    state_sets: Sequence[Mapping[StateKey, str]],
    events: Events,
    authz: Authorizer,
    flags: V2Flags,
) -> tuple[dict[StateKey, str], ResolutionStats]:
    """Resolve `state_sets` with state resolution v2 (or v2.1, per `flags`).

    Spec: https://spec.matrix.org/latest/rooms/v2/#algorithm (steps 1-5), with the v12
    changes of https://spec.matrix.org/latest/rooms/v12/#state-resolution.
    """
    # Definitions (v2+): the unconflicted state map U and the conflicted state set; a key
    # missing from some state set is conflicted.
    # `ordered` (lists) and `per_set` (sets) hold each state set's conflicted events: only
    # those are needed to find the auth difference below.
    unconflicted, ordered = _split_ordered(state_sets)
    # Nothing conflicted: U is the answer (also the case for a single state set).
    if not ordered:
        return unconflicted, ResolutionStats()
    per_set = [set(x) for x in ordered]
    conflicted_ids: set[str] = per_set[0].union(*per_set[1:])

    # The conflicted events, in the state sets' order: that order never reaches the result
    # (everything below sorts by the spec's keys), but state sets usually list events
    # roughly chronologically, and the mainline sort is fastest on nearly sorted input.
    full_list = list(chain.from_iterable(ordered))
    if len(full_list) != len(conflicted_ids):
        full_list = list(dict.fromkeys(full_list))
    # Every value of a state map must be known: the caller vouched for these events. The
    # smallest unknown ID is reported, so the error does not depend on set order.
    events.load(full_list)
    cache = events.cache
    found = list(map(cache.get, full_list))
    if not all(found):
        raise UnknownEvent(min(e for e, ev in zip(full_list, found, strict=True) if not ev))
    full_evs = cast("list[Event]", found)
    if len(full_list) >= _MANY and len(full_list) == sum(map(len, ordered)):
        # No event in two sets: `full_evs` is the sets' events one after the other.
        start = 0
        for roots, listed in zip(per_set, ordered, strict=True):
            events.prime(roots, full_evs[start : start + len(listed)])
            start += len(listed)

    # Definitions (v2+): the full conflicted set is the conflicted state set plus the auth
    # difference.
    chains_union, difference = _auth_difference(events, unconflicted, per_set)
    # Auth-chain events we could not look up cannot be checked or applied; they only
    # matter through the events citing them, whose checks then fail or fall back.
    added = difference - conflicted_ids
    # v12+ (MSC4297): ... plus the conflicted state subgraph (conflicted events and the
    # known events citing them).
    if flags.conflicted_subgraph:
        added |= _conflicted_subgraph(events, conflicted_ids, chains_union) - conflicted_ids
    full = conflicted_ids
    if added:
        events.load(added)
        # Sorted only so that the lists below do not follow set order (they are sorted
        # by the spec's keys later anyway).
        more = [(eid, ev) for eid in sorted(added) if (ev := cache.get(eid)) is not None]
        full_list += [eid for eid, _ in more]
        full_evs += [ev for _, ev in more]
        full = set(full_list)

    checked = 0
    # Step 1: power events of the full conflicted set and their auth ancestors within it,
    # in reverse topological power ordering.
    power: list[str] = []
    for eid, ev in zip(full_list, full_evs, strict=True):
        # Membership changes of one's own are never power events: tested first, as they
        # are nearly all the conflicted events of a big room.
        if (ev.state_key != ev.sender or ev.type != MEMBER) and is_power_event(ev):
            power.append(eid)
    power.sort()
    graph = _power_graph(events, power, full)

    # The comparison of the "reverse topological power ordering": greater sender power
    # first (v12+: creators above all), then earlier origin_server_ts, then event ID.
    def power_key(eid: str) -> tuple[float, int, str]:
        ev = events.must(eid)
        return (-sender_power(events, ev), ev.origin_server_ts, eid)

    power_order = lexicographic_topo_sort(graph, power_key)

    # Step 2: iterative auth checks from the unconflicted state map (v2) or from nothing
    # (v2.1, MSC4297: so that unconflicted state cannot vouch for conflicted events).
    state: dict[StateKey, str] = {} if flags.start_from_empty_state else dict(unconflicted)
    checked += iterative_auth_checks(events, authz, power_order, state)

    # Step 3: everything else, in mainline order of the partially resolved power levels.
    rest, rest_evs = full_list, full_evs
    if graph:
        keep = [eid not in graph for eid in full_list]
        rest = list(compress(full_list, keep))
        rest_evs = list(compress(full_evs, keep))
    mainline = Mainline(events, state.get(POWER_LEVELS))

    # The comparison of the "mainline ordering": greater mainline position first (an event
    # based on older power levels, or on none, comes earlier), then origin_server_ts, then
    # event ID. Power levels events are all power events, so none is left to sort here.
    # (What the events cite was mostly seen by the walks of the auth difference.)
    cited = events.cited_by(full) if len(full) >= _MANY else None
    rest, rest_evs = mainline.order_events(rest, rest_evs, cited)

    # Step 4: iterative auth checks over them, continuing from the partial state.
    checked += iterative_auth_checks(events, authz, rest, state, rest_evs)

    # Step 5 (all versions): the unconflicted state map wins wherever it has an entry. In
    # v2.1 this is where U first enters the result.
    state.update(unconflicted)
    stats = ResolutionStats(
        conflicted=len(conflicted_ids),
        auth_difference=len(full) - len(conflicted_ids),
        auth_checked=checked,
    )
    return state, stats


def _split(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], list[set[str]]]:
    """The unconflicted state map, and each state set's conflicted events (none: empty list).

    The same split as `separate_v2`, in one pass over the state (a big room's state sets
    hold thousands of entries, nearly all unconflicted), without the per-key value lists
    that resolution does not need.
    """
    unconflicted, ordered = _split_ordered(state_sets)
    return unconflicted, [set(x) for x in ordered]


def _split_ordered(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], list[list[str]]]:
    """`_split`, with each state set's conflicted events listed in the set's own order."""
    if len(state_sets) != 2:
        unconflicted, conflicted = separate_v2(state_sets)
        if not conflicted:
            return unconflicted, []
        return unconflicted, [
            [eid for key in conflicted if (eid := s.get(key)) is not None] for s in state_sets
        ]
    # The usual case, a two-way fork: compare the two maps directly.
    first, second = state_sets
    mine: list[str] = []
    theirs: list[str] = []
    conflicted_keys: list[StateKey] = []
    second_get = second.get
    for key, eid in first.items():
        other = second_get(key)
        if other != eid:
            # A key missing from one set is conflicted too (spec v2 definitions).
            conflicted_keys.append(key)
            mine.append(eid)
            if other is not None:
                theirs.append(other)
    # A copy (in C) less the conflicted keys: in a big room nearly every key is shared.
    unconflicted = dict(first)
    for key in conflicted_keys:
        del unconflicted[key]
    # Keys only `second` has: there are some unless every key of `second` was met above.
    if len(unconflicted) + len(theirs) != len(second):
        for key, eid in second.items():
            if key not in first:
                theirs.append(eid)
    if not mine and not theirs:
        return unconflicted, []
    return unconflicted, [mine, theirs]


def _auth_difference(
    events: Events, unconflicted: Mapping[StateKey, str], per_set: list[set[str]]
) -> tuple[set[str], set[str]]:
    """The spec's auth difference ∪Cᵢ − ∩Cᵢ, and the union of the conflicted events' chains.

    Cᵢ, the full auth chain of Sᵢ, is C(U) ∪ C(Xᵢ) where U is the unconflicted state and
    Xᵢ the conflicted events of Sᵢ. Whatever is in C(U) is in every Cᵢ, so the difference is
    (∪C(Xᵢ) − ∩C(Xᵢ)) − C(U). C(U) is never built: a walk from U only has to find which of
    those candidates it reaches, and it may stop at any event in ∩C(Xᵢ), because everything
    behind such an event is in ∩C(Xᵢ) as well (chains are closed under "auth event of").
    An event's auth chain excludes the event itself (spec "Auth chain").
    """
    # Each closure is a set, whatever order its walk takes.
    chains = [events.closure(x) for x in per_set]
    union: set[str] = set().union(*chains)
    inter: set[str] = chains[0].intersection(*chains[1:]) if chains else set()
    candidates = union - inter
    # Conflicted events join the full conflicted set anyway: whether they are also in the
    # auth difference changes nothing, so only the others need the walk from U (which
    # then is usually skipped, e.g. when a stale fork's old events are all it finds).
    undecided = candidates.difference(*per_set)
    if not undecided:
        return union, candidates
    reached = _reached(events, list(unconflicted.values()), inter, undecided)
    return union, candidates - reached


def _reached(events: Events, roots: list[str], stop: set[str], wanted: set[str]) -> set[str]:
    """Which of `wanted` are reachable through auth references from `roots`.

    The walk does not expand past `stop`, and ends as soon as every wanted event is found.
    """
    left = set(wanted)
    seen: set[str] = set()
    stack: list[str] = []
    for r in roots:
        ev = events.get(r)
        if ev is not None:
            stack.extend(events.auth_refs(ev))
    while stack and left:
        eid = stack.pop()
        if eid in seen or eid in stop:
            continue
        seen.add(eid)
        left.discard(eid)
        ev = events.get(eid)
        if ev is not None:
            stack.extend(events.auth_refs(ev))
    return wanted - left


def _conflicted_subgraph(
    events: Events, conflicted_ids: set[str], chains_union: set[str]
) -> set[str]:
    """MSC4297's conflicted state subgraph: events x such that some conflicted event reaches
    x through auth references and x reaches some conflicted event (ends included).

    Everything reachable from a conflicted event is in `chains_union` (or conflicted), so
    the search inverts the auth edges inside that set and floods forwards from the
    conflicted events.
    """
    backwards = chains_union | conflicted_ids
    cited_by: dict[str, list[str]] = {}
    for x in backwards:
        ev = events.get(x)
        if ev is None:
            continue
        for a in events.auth_refs(ev):
            if a in backwards:
                cited_by.setdefault(a, []).append(x)
    out: set[str] = set()
    stack = list(conflicted_ids)
    while stack:
        x = stack.pop()
        if x in out:
            continue
        out.add(x)
        stack.extend(p for p in cited_by.get(x, ()) if p not in out)
    return out


def _power_graph(events: Events, power: list[str], full: set[str]) -> dict[str, set[str]]:
    """The auth DAG over the power events and their auth ancestors inside `full`.

    Spec step 1 takes "the union of their auth chains"; as in the algorithm's original
    description (MSC1442) and every implementation, only ancestors that are themselves in
    the full conflicted set count: the rest is common to every state set.
    """
    graph: dict[str, set[str]] = {}
    stack = list(power)
    while stack:
        eid = stack.pop()
        if eid in graph:
            continue
        edges = {a for a in events.auth_refs(events.must(eid)) if a in full}
        graph[eid] = edges
        stack.extend(a for a in edges if a not in graph)
    return graph


def iterative_auth_checks(
    events: Events,
    authz: Authorizer,
    order: list[str],
    state: dict[StateKey, str],
    order_events: Sequence[Event] | None = None,
) -> int:
    """Spec "Iterative auth checks": apply each event of `order` to `state` (in place) if the
    auth rules allow it against that state. Returns how many checks ran.

    Auth events come from `state` for every key the rules need; a key missing there falls
    back to the event's own auth event, unless that auth event was rejected. Events that
    were previously rejected for failing auth against the state before them are checked
    like any other (spec "Rejected events"); the caller never passes events rejected
    against their own auth chain, as those cannot be in any state set or auth chain.

    With the spec's own rules, self-joins and self-leaves (most of what a big room's
    resolution checks) take the `MembershipShortcut` inline: the sender's membership and
    the join rules decide, through a table. Wherever the shortcut does not answer, the
    full rules run. `tests/core/test_stateres_shortcut.py` checks that this loop gives the
    same states as the full rules alone.
    """
    rejected = events.rejected
    get = events.get
    must = events.must
    cache = events.cache
    auth_types = authz.auth_types
    check = authz.check
    rules = events.rules
    # Only v12 events cite their create event implicitly (see `Events.auth_refs`).
    implied_create = rules.room_id_from_create_event
    auth_refs = events.auth_refs
    # Auth event IDs known not to be anybody's usable membership event: events of other
    # types, unknown events, rejected events. Most events cite only such events besides
    # their sender's membership, so the fallback below is usually one subset test.
    not_member: set[str] = set()

    def own_auth_event(ev: Event, key: StateKey) -> Event | None:
        """The event's own auth event for `key`, unless rejected: the fallback below."""
        refs = auth_refs(ev) if implied_create else ev.auth_event_ids
        etype, skey = key
        if etype == MEMBER and not_member.issuperset(refs):
            return None
        for aid in refs:
            if aid in rejected:
                not_member.add(aid)
                continue
            aev = cache.get(aid)
            if aev is None:
                aev = get(aid)
            if aev is None or aev.type != MEMBER:
                not_member.add(aid)
            if aev is not None and aev.state_key == skey and aev.type == etype:
                return aev
        return None

    # The create event in force, looked up once: only applying a create event changes it.
    create_id = state.get(CREATE)
    create = must(create_id) if create_id is not None else None
    # The shortcut is exact only for the spec's rules, and needs the create event. Its
    # fields are copied into locals: the loop below reads them for thousands of events.
    spec_rules = check is check_auth
    shortcut = shortcut_for(rules, create) if spec_rules and create else None
    fast = False
    if shortcut is not None:
        fast = shortcut.usable
        restricted, room_id = shortcut.restricted, shortcut.room_id
        create_prev, leave_allowed = shortcut.create_prev, shortcut.leave_allowed
        first_joiner, join_table = shortcut.first_joiner, shortcut.join_table
    # The full rules look up the power levels event for every membership event, so an
    # unknown one must fail the same way here, once (the shortcut never changes it).
    pl_unchecked = state.get(POWER_LEVELS)
    # user -> the membership of their m.room.member event in `state` (as the rules read
    # it), for the users met so far: their later events skip the lookups (a stale fork
    # checks each user's old event, then their new one).
    in_state: dict[str, Any] = {}
    # Whether `verdicts` and `default` are the table of the state's join rules event.
    jr_ready = False
    verdicts: Mapping[str | None, bool | None] = {}
    default: bool | None = None
    if order_events is None:
        # Every event must be known; `must` raises for the first one that is not.
        found = list(map(cache.get, order))
        if all(found):
            order_events = cast("list[Event]", found)
        else:
            order_events = [ev if ev else must(eid) for eid, ev in zip(order, found, strict=True)]
    # Counted as the events that are not state events, which are skipped.
    checked = len(order)
    for eid, ev in zip(order, order_events, strict=True):
        # The hot loop of a big resolution: dict reads instead of method calls.
        state_key = ev.state_key
        if state_key is None:
            checked -= 1
            continue
        if fast and state_key == ev.sender and ev.type == MEMBER and ev.rules is rules:
            # `MembershipShortcut.allows`, inline (see there for the rules cited): joins
            # and leaves, not naming an authorising server (v8+), in this room (v12+);
            # joins other than right after the create event.
            content = ev.content
            # (Subscripts rather than `.get`: a few tens of ns per event, and the key is
            # present in every membership event that passed format validation.)
            try:
                membership = content["membership"]
            except KeyError:
                membership = None
            if membership == "join":
                # (5.3.1 matters only for the first joiner: nobody else is let in by it.)
                usable = state_key != first_joiner or ev.prev_event_ids != create_prev
            else:
                usable = membership == "leave"
            if (
                usable
                and not (restricted and VIA in content)
                and (room_id is None or ev.room_id == room_id)
            ):
                if pl_unchecked is not None:
                    must(pl_unchecked)
                    pl_unchecked = None
                # What `auth_events` below would hold for the sender's membership: the
                # state's event, else the event's own (usually: it cites none).
                key = (MEMBER, state_key)
                current = in_state.get(state_key, _ABSENT)
                if current is _ABSENT:
                    sid = state.get(key)
                    if sid is not None:
                        member = cache.get(sid)
                        if member is None:
                            member = must(sid)
                    elif not_member.issuperset(
                        auth_refs(ev) if implied_create else ev.auth_event_ids
                    ):
                        member = None
                    else:
                        member = own_auth_event(ev, key)
                    try:
                        current = member.content["membership"] if member is not None else None
                    except KeyError:
                        current = None
                    if sid is not None:
                        in_state[state_key] = current
                if membership == "join":
                    # ... and for the join rules, likewise. The state's join rules change
                    # only through the full path below, which then clears `jr_ready`.
                    if not jr_ready:
                        sid = state.get(JOIN_RULES)
                        if sid is None:
                            verdicts, default = join_table(own_auth_event(ev, JOIN_RULES))
                        else:
                            join_rules = cache.get(sid)
                            if join_rules is None:
                                join_rules = must(sid)
                            verdicts, default = join_table(join_rules)
                            jr_ready = True
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
                        state[key] = eid
                        in_state[state_key] = membership
                    continue
        auth_events: dict[StateKey, Event] = {}
        missing = False
        for k in auth_types(ev):
            sid = state.get(k)
            if sid is not None:
                aev = cache.get(sid)
                auth_events[k] = aev if aev is not None else must(sid)
            else:
                missing = True
        # The auth rules read the create event in every version, including v12 where it
        # is no longer among the selected auth types.
        if create is not None:
            auth_events[CREATE] = create
        else:
            missing = True
        if missing:
            # Keys the state lacks fall back to the event's own auth events, unless those
            # were rejected. (The rules only read the keys of the auth types and create.)
            for aid in auth_refs(ev) if implied_create else ev.auth_event_ids:
                if aid in rejected:
                    continue
                aev = cache.get(aid)
                if aev is None:
                    aev = get(aid)
                if aev is not None and aev.state_key is not None:
                    akey = (aev.type, aev.state_key)
                    if akey not in auth_events:
                        auth_events[akey] = aev
        if check(ev, auth_events) is None:
            key = (ev.type, state_key)
            state[key] = eid
            # (A membership changed by the full rules is read again when next needed.)
            in_state.pop(state_key, None)
            if key == JOIN_RULES:
                jr_ready = False
            if key == CREATE:
                create = ev
                if spec_rules:
                    shortcut = shortcut_for(rules, create)
                    fast = shortcut.usable
                    restricted, room_id = shortcut.restricted, shortcut.room_id
                    create_prev, leave_allowed = shortcut.create_prev, shortcut.leave_allowed
                    first_joiner, join_table = shortcut.first_joiner, shortcut.join_table
                jr_ready = False
    return checked
