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
from itertools import compress, repeat
from operator import attrgetter, contains
from typing import Any, Protocol

from worker.core.events import Event, StateKey
from worker.core.outcomes import Rejection
from worker.core.versions import RoomRules

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")
MEMBER = "m.room.member"

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

    When the lookup is a plain dict's `get` (the pipeline and the tests pass one), that
    dict *is* the cache: nothing is copied, and it is never written to. Otherwise the
    answers are kept in a dict of our own (None for unknown events).
    """

    __slots__ = (
        "_backed",
        "_cache",
        "_chain_fn",
        "_chains",
        "_lookup",
        "_primed",
        "_walked",
        "rejected",
        "rules",
    )

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
        owner = getattr(lookup, "__self__", None)
        # `type(...) is dict`: a subclass may answer `get` differently from its items.
        self._backed = type(owner) is dict and lookup == owner.get
        self._cache: dict[str, Event | None] = owner if self._backed else {}  # type: ignore[assignment]
        self._chains: dict[str, AbstractSet[str]] = {}
        # (roots, what they cite) of every closure walked here, for `cited_by`.
        self._walked: list[tuple[set[str], set[str]]] = []
        self._primed: list[tuple[set[str], list[Event]]] = []

    def get(self, event_id: str) -> Event | None:
        # A sentinel rather than try/except: every event misses once, and raising KeyError
        # per first lookup costs more than the lookup itself in a 10,000-event resolution.
        ev = self._cache.get(event_id, _UNSEEN)
        if ev is _UNSEEN:
            ev = self._lookup(event_id)
            if not self._backed:
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

        One batch: the first thing a resolution does is load its thousands of conflicted
        events, and a method call per event is a visible share of that.
        """
        wanted = event_ids if isinstance(event_ids, (set, frozenset)) else set(event_ids)
        self.load(wanted)
        cache = self._cache
        if all(map(cache.get, wanted)):
            return []
        return [eid for eid in wanted if cache.get(eid) is None]

    def load(self, event_ids: Iterable[str]) -> None:
        """Look up (once) every event of `event_ids` that is not in the cache yet.

        The lookups and the cache writes run in C (`map`, `dict.update`): walks hand over
        whole generations of an auth graph at a time. A dict-backed cache has nothing to
        load.
        """
        if self._backed:
            return
        cache = self._cache
        if isinstance(event_ids, (set, frozenset)):
            new = list(event_ids.difference(cache))
        else:
            new = [eid for eid in event_ids if eid not in cache]
        if new:
            cache.update(zip(new, map(self._lookup, new), strict=True))

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
        """The union of the auth chains of `roots` (the roots themselves only if reachable)."""
        if self._chain_fn is not None:
            # The caller's index answers; the union runs in C.
            return set().union(*map(self._chain_fn, roots))
        start = roots if isinstance(roots, set) else set(roots)
        if len(start) < _WIDE:
            # A few roots: their references are collected one by one (and not kept).
            first: set[str] = set()
            cache = self._cache
            for r in start:
                ev = cache.get(r, _UNSEEN)
                if ev is _UNSEEN:
                    ev = self.get(r)
                if ev is not None:
                    first.update(self.auth_refs(ev))
            return self.walk(first)
        primed = [evs for roots, evs in self._primed if roots is start]
        if primed:
            first = self.refs_of_events(primed[0])
        else:
            self.load(start)
            first = self.refs_of(start)
        self._walked.append((start, first))
        return self.walk(first)

    def prime(self, roots: set[str], events: list[Event]) -> None:
        """Hand over the events of `roots` (every one known), for a later `closure(roots)`
        of that very set: the caller looked them up already, and a big room's conflicted
        events are scattered in memory, so each pass over them costs."""
        self._primed.append((roots, events))

    def cited_by(self, event_ids: set[str]) -> set[str]:
        """A superset of the auth events that `event_ids` cite.

        The first generation of every closure walked so far is reused: a resolution walks
        from its conflicted events, and later asks what they cite (mainline ordering).
        Events no walk started from are read here.
        """
        left = event_ids.difference(*(roots for roots, _ in self._walked))
        return set().union(*(c for _, c in self._walked), self.refs_of(left) if left else ())

    def walk(self, frontier: set[str]) -> set[str]:
        """Every event reachable through auth references from `frontier`, itself included.

        Wide parts of the graph (thousands of members citing a few power levels events)
        are walked one generation at a time: each generation is a set, so the per-edge
        work ("seen already?") is set algebra in C and Python loops once per generation.
        Narrow parts (a long chain of power levels events, a small room) would make that
        one Python round per event anyway, so they are walked event by event. Unknown
        events are included but end the walk there: they cannot be resolved anyway, and
        their absence shows up as an auth failure of the events that cite them.
        """
        seen: set[str] = set()
        while frontier and len(frontier) >= _WIDE:
            frontier = frontier - seen
            seen |= frontier
            self.load(frontier)
            frontier = self._refs_reusing_walks(frontier)
        stack = list(frontier)
        cache = self._cache
        get = self.get
        implied = self.rules.room_id_from_create_event
        refs = self.auth_refs
        while stack:
            eid = stack.pop()
            if eid in seen:
                continue
            seen.add(eid)
            # The cache first: a method call per event is most of this loop's cost.
            ev = cache.get(eid, _UNSEEN)
            if ev is _UNSEEN:
                ev = get(eid)
            if ev is not None:
                stack.extend(refs(ev) if implied else ev.auth_event_ids)
        return seen

    def _refs_reusing_walks(self, event_ids: set[str]) -> set[str]:
        """`refs_of`, reusing what an earlier walk found its roots cite when `event_ids`
        holds all those roots (a stale fork: the new events cite the old ones, which the
        walk from the old side started from)."""
        for roots, first in self._walked:
            if len(roots) <= len(event_ids) and roots <= event_ids:
                return first | self.refs_of(event_ids - roots)
        return self.refs_of(event_ids)

    def refs_of(self, event_ids: Iterable[str]) -> set[str]:
        """The union of `auth_refs` over the known events of `event_ids` (loaded already)."""
        return self.refs_of_events(list(filter(None, map(self._cache.get, event_ids))))

    def refs_of_events(self, known: list[Event]) -> set[str]:
        """The union of `auth_refs` over `known`."""
        refs: set[str] = set().union(*map(_AUTH_IDS, known))
        # v12+: every event but the create event also cites its room's create event (see
        # `auth_refs`). Rooms are few, so the implied IDs are added once per room.
        if self.rules.room_id_from_create_event:
            if CREATE[0] in set(map(_TYPE, known)):
                known = [ev for ev in known if ev.type != CREATE[0]]
            for room_id in set(map(_ROOM_ID, known)):
                implied = create_event_id(room_id)
                if implied is not None:
                    refs.add(implied)
        return refs

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
_AUTH_IDS = attrgetter("auth_event_ids")
_TYPE = attrgetter("type")
_ROOM_ID = attrgetter("room_id")
_TS = attrgetter("origin_server_ts")
_NEG_INF = float("-inf")
# From how many events on a generation of an auth-graph walk is walked as a set (`walk`).
_WIDE = 32
# From how many events `Mainline.order_events` sorts by single keys, not the spec's tuple.
_MANY_TO_SORT = 48
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
        return self._position_from(self._pl_of(event))

    def _position_from(self, cur: str | None) -> float:
        """The position that the PL chain starting at power levels event `cur` leads to."""
        path: list[str] = []
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

    def _power_levels_among(self, event_ids: set[str]) -> set[str]:
        """Which of `event_ids` are m.room.power_levels events (state key "")."""
        events = self._events
        events.load(event_ids)
        ids = list(event_ids)
        found = list(map(self._cache.get, ids))
        typed: Iterable[str]
        if all(found):
            # Types are compared in C; only the few power levels events reach Python.
            typed = compress(ids, map(_PL_TYPE.__eq__, map(_TYPE, found)))
        else:
            typed = [e for e, ev in zip(ids, found, strict=True) if ev and ev.type == _PL_TYPE]
        return {eid for eid in typed if self._cache[eid].state_key == ""}  # type: ignore[union-attr]

    def _key(
        self, eid: str, ev: Event, is_pl: dict[str, bool], pos_of: dict[str, float]
    ) -> tuple[float, int, str]:
        """The spec's sort key of one event; `is_pl` and `pos_of` are shared memos."""
        # The first power levels event among the auth events, as `_pl_of` finds it.
        pl: str | None = None
        for aid in ev.auth_event_ids:
            known = is_pl.get(aid)
            if known is None:
                aev = self._events.get(aid)
                known = is_pl[aid] = (
                    aev is not None and aev.state_key == "" and aev.type == _PL_TYPE
                )
            if known:
                pl = aid
                break
        if pl is None:
            return (_NEG_INF, ev.origin_server_ts, eid)
        pos = pos_of.get(pl)
        if pos is None:
            pos = pos_of[pl] = self._position_from(pl)
        return (-pos, ev.origin_server_ts, eid)

    def order(self, event_ids: Iterable[str], cited: set[str] | None = None) -> list[str]:
        """`event_ids` in the spec's "mainline ordering": greater mainline position first
        (an event based on older power levels, or on none, comes earlier), then smaller
        origin_server_ts, then smaller event ID.

        The same as sorting by `(-position(e), e.origin_server_ts, e.event_id)`, but done
        for thousands of events that cite a handful of power levels events between them:

        - an event's position depends only on the first power levels event among its auth
          events, so the power levels events among all the auth events are found once (the
          caller may pass `cited`, a superset of those auth events it has at hand), and
          when there is just one (the usual case) "does the event cite it" is all there is
          to ask per event;
        - the sort is three stable sorts on one key each (event ID, then timestamp, then
          position), skipping those that cannot change the order: a single-type key sorts
          much faster than a tuple whose first items tie.
        """
        events = self._events
        ids = list(event_ids)
        evs = list(map(self._cache.get, ids))
        if not all(evs):
            evs = [ev if ev else events.must(eid) for ev, eid in zip(evs, ids, strict=True)]
        return self.order_events(ids, evs, cited)[0]  # type: ignore[arg-type]

    def order_events(
        self, ids: list[str], evs: list[Event], cited: set[str] | None = None
    ) -> tuple[list[str], list[Event]]:
        """`order` for events the caller has at hand (`evs[i]` is `ids[i]`); returns the
        ordered IDs and events."""
        if len(ids) < _MANY_TO_SORT:
            # A few events: the spec's key tuples are cheaper than the set-up below.
            keys = list(map(self._key, ids, evs, repeat({}), repeat({})))
            order = sorted(range(len(ids)), key=keys.__getitem__)
            return list(map(ids.__getitem__, order)), list(map(evs.__getitem__, order))
        auths = list(map(_AUTH_IDS, evs))
        pls = self._power_levels_among(cited if cited is not None else set().union(*auths))
        neg_pos: list[float] | None = None
        if len(pls) == 1:
            # Events citing the one PL event share its position; the others have none.
            (pl,) = pls
            cites = list(map(contains, auths, repeat(pl)))
            # (When every event cites it, positions are all equal: no position sort.)
            if not all(cites):
                there = -self._position_from(pl)
                neg_pos = [there if c else _NEG_INF for c in cites]
        elif pls:
            # Several PL events: the first one among each event's auth events decides.
            pos_of: dict[str | None, float] = {None: _NEG_INF}
            neg_pos = []
            for auth in auths:
                first = next(filter(pls.__contains__, auth), None)
                got = pos_of.get(first)
                if got is None:
                    got = pos_of[first] = -self._position_from(first)
                neg_pos.append(got)
        stamps = list(map(_TS, evs))
        index: list[int] | range = range(len(ids))
        # Event IDs decide only between equal timestamps.
        if len(set(stamps)) < len(stamps):
            index = sorted(index, key=ids.__getitem__)
        index = sorted(index, key=stamps.__getitem__)
        if neg_pos is not None:
            index.sort(key=neg_pos.__getitem__)
        return list(map(ids.__getitem__, index)), list(map(evs.__getitem__, index))
