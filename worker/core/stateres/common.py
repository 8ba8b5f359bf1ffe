"""Machinery shared by state resolution v1, v2 and v2.1.

Nothing here decides a conflict: this module splits state sets into unconflicted and
conflicted parts, walks auth chains (memoised), answers power-level and mainline questions,
and does the lexicographical Kahn sort. `v1.py` and `v2.py` compose these into the spec's
algorithms.

Determinism (STYLE R9): every function that returns an ordering sorts by the spec's keys, and
every set this module returns is only ever used for membership tests or sorted before use, so
`PYTHONHASHSEED` never reaches a result.

Spec: https://spec.matrix.org/latest/rooms/v2/#state-resolution (definitions),
https://spec.matrix.org/latest/rooms/v12/ (v2.1, MSC4297).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Protocol

from worker.core.events import Event, StateKey
from worker.core.outcomes import Rejection
from worker.core.versions import RoomRules

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")

# The power of a v12 creator: above every integer a power_levels event can hold
# (MSC4289). A float keeps comparisons with ints exact and needs no sentinel type.
CREATOR_POWER = float("inf")

EventLookup = Callable[[str], "Event | None"]
AuthChainFn = Callable[[str], AbstractSet[str]]


class Authorizer(Protocol):
    """The two auth-rule questions state resolution asks (a narrow port, STYLE R4).

    The production implementation is `worker.core.auth`; tests may plug in another
    implementation to isolate the resolution algorithm from the auth rules.
    """

    def auth_types(self, event: Event) -> Iterable[StateKey]:
        """The state keys the auth rules read for `event` (spec "auth events selection")."""
        ...

    def check(self, event: Event, auth_events: Mapping[StateKey, Event]) -> Rejection | None:
        """None when `event` is allowed given `auth_events`, else why not."""
        ...


@dataclass(frozen=True, slots=True)
class ResolutionStats:
    """What one resolution cost, for the shell to log and measure (the core does not log).

    `conflicted` counts distinct event IDs in the conflicted state set; `auth_difference`
    the events the auth difference (and, in v2.1, the conflicted subgraph) added on top of
    them; `auth_checked` the auth-rule evaluations performed.
    """

    conflicted: int = 0
    auth_difference: int = 0
    auth_checked: int = 0


class UnknownEvent(LookupError):
    """An event needed by resolution could not be looked up.

    This is an invariant violation of the caller (every state event and every auth event of
    the events involved must be available), not an auth outcome: the shell should fetch the
    missing event or give up on the input, never store a partial answer.
    """

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id!r} is needed by state resolution but unknown")
        self.event_id = event_id


class Events:
    """Event lookups and auth-graph walks for one resolution, memoised.

    `event` is the caller's lookup (a dict's `get`, a store cache); `auth_chain`, when
    given, answers full auth chains directly (a store's chain index), otherwise chains are
    walked through `auth_event_ids`.
    """

    __slots__ = ("_cache", "_chain_fn", "_chains", "_lookup", "rejected", "rules")

    def __init__(
        self,
        rules: RoomRules,
        lookup: EventLookup,
        auth_chain: AuthChainFn | None,
        rejected: Container[str],
    ) -> None:
        self.rules = rules
        self.rejected = rejected
        self._lookup = lookup
        self._chain_fn = auth_chain
        self._cache: dict[str, Event | None] = {}
        self._chains: dict[str, AbstractSet[str]] = {}

    def get(self, event_id: str) -> Event | None:
        # A sentinel rather than try/except: every event misses once, and raising KeyError
        # per first lookup costs more than the lookup itself in a 10,000-event resolution.
        ev = self._cache.get(event_id, _UNSEEN)
        if ev is _UNSEEN:
            ev = self._lookup(event_id)
            self._cache[event_id] = ev
        return ev  # type: ignore[no-any-return]

    def must(self, event_id: str) -> Event:
        ev = self._cache.get(event_id, _UNSEEN)
        if ev is _UNSEEN:
            ev = self.get(event_id)
        if ev is None:
            raise UnknownEvent(event_id)
        return ev  # type: ignore[no-any-return]

    def unknown_among(self, event_ids: Iterable[str]) -> list[str]:
        """Look up every event of `event_ids` (filling the cache); the ones that are unknown.

        One loop for a batch: the first thing a resolution does is load its thousands of
        conflicted events, and a method call per event is a visible share of that.
        """
        cache = self._cache
        lookup = self._lookup
        unknown: list[str] = []
        for eid in event_ids:
            ev = cache.get(eid, _UNSEEN)
            if ev is _UNSEEN:
                ev = cache[eid] = lookup(eid)
            if ev is None:
                unknown.append(eid)
        return unknown

    @property
    def cache(self) -> Mapping[str, Event | None]:
        """The lookups made so far (event ID -> event, None for unknown), for hot loops that
        read it directly instead of paying a method call per event."""
        return self._cache

    def auth_refs(self, event: Event) -> tuple[str, ...]:
        """The event's auth events as the auth DAG sees them.

        v12+: the create event is not listed in `auth_events` but is implied by the room ID
        (room ID = "!" + the create event's reference hash, event ID = "$" + the same hash),
        so it is added here; every other version lists it explicitly.
        """
        refs = event.auth_event_ids
        if self.rules.room_id_from_create_event and event.type != "m.room.create":
            implied = create_event_id(event.room_id)
            if implied is not None and implied not in refs:
                return (*refs, implied)
        return refs

    def closure(self, roots: Iterable[str]) -> set[str]:
        """The union of the auth chains of `roots` (the roots themselves only if reachable).

        One walk with one visited set: a union of many overlapping chains costs the size of
        the union, not the sum of the chain sizes.
        """
        if self._chain_fn is not None:
            out: set[str] = set()
            for r in roots:
                out.update(self.chain(r))
            return out
        seen: set[str] = set()
        stack: list[str] = []
        cache = self._cache
        get = self.get
        # v1-v11 events list all their auth events; only v12 needs `auth_refs` to add the
        # implied create event (a method call per event, so avoided when not needed).
        implied = self.rules.room_id_from_create_event
        refs = self.auth_refs
        for r in roots:
            ev = cache.get(r, _UNSEEN)
            if ev is _UNSEEN:
                ev = get(r)
            if ev is not None:
                stack.extend(refs(ev) if implied else ev.auth_event_ids)
        while stack:
            eid = stack.pop()
            if eid in seen:
                continue
            seen.add(eid)
            ev = cache.get(eid, _UNSEEN)
            if ev is _UNSEEN:
                ev = get(eid)
            # A missing auth event ends the walk there: it cannot be resolved anyway, and
            # its absence shows up as an auth failure of the events that cite it.
            if ev is not None:
                stack.extend(refs(ev) if implied else ev.auth_event_ids)
        return seen

    def chain(self, event_id: str) -> AbstractSet[str]:
        """The full auth chain of one event (excluding itself), memoised."""
        got = self._chains.get(event_id)
        if got is None:
            if self._chain_fn is not None:
                got = self._chain_fn(event_id)
            else:
                got = self.closure((event_id,))
            self._chains[event_id] = got
        return got


def create_event_id(room_id: str) -> str | None:
    """v12+: the create event's ID implied by a room ID ("!hash" -> "$hash")."""
    if room_id.startswith("!") and ":" not in room_id:
        return "$" + room_id[1:]
    return None


def separate_v2(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], dict[StateKey, list[str]]]:
    """Split state sets into the unconflicted state map and the conflicted state set (v2+).

    A key absent from some set is conflicted (spec, v2 "Unconflicted state map"). Conflicted
    values come back as sorted lists of distinct event IDs.
    """
    if not state_sets:
        return {}, {}
    first = state_sets[0]
    rest = state_sets[1:]
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, list[str]] = {}
    for key, eid in first.items():
        for s in rest:
            if s.get(key) != eid:
                conflicted[key] = _values(state_sets, key)
                break
        else:
            unconflicted[key] = eid
    for s in rest:
        for key in s:
            if key not in first and key not in conflicted:
                conflicted[key] = _values(state_sets, key)
    return unconflicted, conflicted


def _values(state_sets: Sequence[Mapping[StateKey, str]], key: StateKey) -> list[str]:
    if len(state_sets) == 2:
        # The usual two-way fork: at most two values, ordered without building a set.
        a = state_sets[0].get(key)
        b = state_sets[1].get(key)
        if a is None or b is None or a == b:
            got = a if a is not None else b
            return [got] if got is not None else []
        return [a, b] if a < b else [b, a]
    return sorted({v for s in state_sets if (v := s.get(key)) is not None})


def is_power_event(event: Event) -> bool:
    """Spec v2 "Power events": PL, join rules, and kicks/bans (leave/ban by someone else).

    The create event counts too: it can only be conflicted in a broken room, and treating it
    as a power event keeps it ahead of everything that depends on it (as Synapse does).
    """
    state_key = event.state_key
    # Only state events can be power events.
    if state_key is None:
        return False
    etype = event.type
    # v2+: a leave or ban of someone else, i.e. a kick or a ban. Leaving oneself is not.
    # (Tested first: in big rooms almost every conflicted event is a membership.)
    if etype == "m.room.member":
        return state_key != event.sender and event.content.get("membership") in ("leave", "ban")
    # v2+: m.room.power_levels and m.room.join_rules (and, as above, m.room.create).
    return state_key == "" and etype in _POWER_TYPES


_PL_TYPE = POWER_LEVELS[0]
# Marks a cache miss where None means "looked up, unknown".
_UNSEEN: Any = object()
_POWER_TYPES = frozenset({POWER_LEVELS[0], JOIN_RULES[0], CREATE[0]})


def _as_int(value: Any) -> int | None:
    """A power level as the v1-v9 rules read it: ints, or strings of base-10 digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def creators(create: Event) -> frozenset[str]:
    """v12+: the room's creators, the create event's sender plus `additional_creators`."""
    extra = create.content.get("additional_creators")
    out = {create.sender}
    if isinstance(extra, list):
        out.update(u for u in extra if isinstance(u, str))
    return frozenset(out)


def sender_power(events: Events, event: Event) -> float:
    """The sender's power level "when looking at their respective auth_events" (spec v2).

    v12+: a creator outranks every power level (MSC4289). Without a power levels event
    among the auth events, the room creator has 100 and everybody else 0 (auth rules
    "default power levels"): v1-v10 read `creator` from the create content, v11+ use the
    create event's sender.
    """
    pl: Event | None = None
    create: Event | None = None
    for aid in events.auth_refs(event):
        aev = events.get(aid)
        if aev is None:
            continue
        key = aev.state_tuple
        if key == POWER_LEVELS:
            pl = aev
        elif key == CREATE:
            create = aev
    if event.state_tuple == CREATE:
        create = event
    rules = events.rules
    # v12+: creators have infinite power, whatever any power levels event says.
    if rules.privileged_creators and create is not None and event.sender in creators(create):
        return CREATOR_POWER
    # All versions: no power levels yet, so the creator has 100, everyone else 0.
    if pl is None:
        if create is None:
            return 0
        # v1-v10: `creator` in the create content; v11+: the create event's sender.
        creator = create.sender if rules.implicit_room_creator else create.content.get("creator")
        return 100 if creator == event.sender else 0
    # All versions: `users[sender]`, else `users_default`, else 0.
    users = pl.content.get("users")
    level = users.get(event.sender) if isinstance(users, dict) else None
    if level is None:
        level = pl.content.get("users_default", 0)
    # v1-v9 accept numeric strings; v10+ reject them at format validation, so reading
    # them the old way here changes nothing for v10+ events.
    got = _as_int(level)
    return got if got is not None else 0


def lexicographic_topo_sort(
    graph: Mapping[str, AbstractSet[str]], key: Callable[[str], Any]
) -> list[str]:
    """Kahn's algorithm over `graph` (node -> the nodes it points to, i.e. its auth events),
    emitting pointed-to nodes first and, among the ready ones, the smallest `key` first.

    A heap of `(key(node), node)` makes the choice independent of iteration order; keys end
    in the event ID so no two nodes tie.
    """
    # Kahn's algorithm on out-degrees (edges point at auth events, which come first).
    outdegree = {n: len(edges) for n, edges in graph.items()}
    parents: dict[str, list[str]] = {n: [] for n in graph}
    for n, edges in graph.items():
        for e in edges:
            parents[e].append(n)
    # The order of `parents` lists may follow set iteration, but the heap's keys are unique,
    # so what comes out is fixed by the keys alone.
    ready = [(key(n), n) for n, d in outdegree.items() if d == 0]
    heapq.heapify(ready)
    out: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        out.append(n)
        for p in parents[n]:
            outdegree[p] -= 1
            if outdegree[p] == 0:
                heapq.heappush(ready, (key(p), p))
    return out


class Mainline:
    """Mainline positions relative to one power levels event P (spec v2 "Mainline ordering").

    Positions are memoised along every walked path, so sorting n events costs O(n + length
    of the PL chains walked), not n times the chain length.
    """

    __slots__ = ("_cache", "_events", "_pos", "_pos_from_walk")

    def __init__(self, events: Events, power_levels_id: str | None) -> None:
        self._events = events
        self._cache = events.cache
        # mainline event -> its index i (P0 = 0, older power levels events higher).
        self._pos: dict[str, float] = {}
        i = 0
        pl = power_levels_id
        while pl is not None and pl not in self._pos:
            self._pos[pl] = i
            i += 1
            ev = events.get(pl)
            pl = self._pl_of(ev) if ev is not None else None
        self._pos_from_walk: dict[str, float] = {}

    def _pl_of(self, event: Event) -> str | None:
        """The m.room.power_levels event among `event`'s auth events, if any."""
        # Read the resolution's cache directly (thousands of events are sorted, each with a
        # few auth events), asking the lookup only for events not looked up yet.
        cache = self._cache
        for aid in event.auth_event_ids:
            aev = cache.get(aid, _UNSEEN)
            if aev is _UNSEEN:
                aev = self._events.get(aid)
            # Compared field by field: building the state tuple per auth event is a
            # measurable share of sorting thousands of events.
            if aev is not None and aev.state_key == "" and aev.type == _PL_TYPE:
                return aid
        return None

    def position(self, event: Event) -> float:
        """The mainline position of `event`: i of the first mainline PL in its PL chain
        [e1, e2, ...] (excluding the event itself), or infinity if there is none."""
        path: list[str] = []
        cur = self._pl_of(event)
        found = float("inf")
        while cur is not None:
            hit = self._pos.get(cur)
            if hit is None:
                hit = self._pos_from_walk.get(cur)
            if hit is not None:
                found = hit
                break
            path.append(cur)
            ev = self._events.get(cur)
            cur = self._pl_of(ev) if ev is not None else None
            if cur in path:
                # A PL cycle is impossible for honestly hashed events; stop rather than spin.
                break
        # Every non-mainline PL on the path resolves to the same position, so remember it.
        for p in path:
            self._pos_from_walk[p] = found
        return found

    def order(self, event_ids: Iterable[str]) -> list[str]:
        """`event_ids` in the spec's "mainline ordering": greater mainline position first
        (an event based on older power levels, or on none, comes earlier), then smaller
        origin_server_ts, then smaller event ID.

        The same as sorting by `(-position(e), e.origin_server_ts, e.event_id)`, with the
        first step of each event's PL chain found inline: thousands of events are sorted
        here and they cite a handful of power levels events, so which auth events are (or
        are not) power levels events is remembered instead of looked up again.
        """
        events = self._events
        cache = self._cache
        # auth event ID -> whether it is an m.room.power_levels event (None: unknown event).
        is_pl: dict[str, bool] = {}
        # power levels event ID -> the mainline position it leads to.
        pos_of: dict[str, float] = {}
        keyed: list[tuple[float, int, str]] = []
        for eid in event_ids:
            ev = cache.get(eid)
            if ev is None:
                ev = events.must(eid)
            pl: str | None = None
            # The first power levels event among the auth events, as `_pl_of` finds it.
            for aid in ev.auth_event_ids:
                known = is_pl.get(aid)
                if known is None:
                    aev = cache.get(aid, _UNSEEN)
                    if aev is _UNSEEN:
                        aev = events.get(aid)
                    known = aev is not None and aev.state_key == "" and aev.type == _PL_TYPE
                    is_pl[aid] = known
                if known:
                    pl = aid
                    break
            if pl is None:
                pos = float("inf")
            else:
                got = pos_of.get(pl)
                if got is None:
                    # `position` walks on from the event's PL; its answer depends on that
                    # PL alone, so it holds for every event citing the same one.
                    got = pos_of[pl] = self.position(ev)
                pos = got
            keyed.append((-pos, ev.origin_server_ts, eid))
        # The keys end in the event ID, so no two tie and the order is fixed by the keys.
        keyed.sort()
        return [k[2] for k in keyed]
