"""The two orderings of state resolution v2: reverse topological power ordering and
mainline ordering, with what they read (power events, a sender's power level).

Determinism (STYLE R9): every function that returns an ordering sorts by the spec's keys,
ending in the event ID, so neither set order nor `PYTHONHASHSEED` reaches a result.

Spec: https://spec.matrix.org/latest/rooms/v2/#state-resolution (definitions),
https://spec.matrix.org/latest/rooms/v12/ (creators' power, MSC4289).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from itertools import compress, islice, repeat
from operator import attrgetter, contains, lt
from typing import Any

from worker.core.events import Event
from worker.core.stateres.events import CREATE, JOIN_RULES, POWER_LEVELS, Events

# The power of a v12 creator: above every integer a power_levels event can hold
# (MSC4289). A float keeps comparisons with ints exact and needs no sentinel type.
CREATOR_POWER = float("inf")

_PL_TYPE = POWER_LEVELS[0]
_CREATE_TYPE = CREATE[0]
_AUTH_IDS = attrgetter("auth_event_ids")
_TYPE = attrgetter("type")
_TS = attrgetter("origin_server_ts")
_NEG_INF = float("-inf")
# From how many events `Mainline.order_events` sorts by single keys, not the spec's tuple.
_MANY_TO_SORT = 48
# Marks a cache miss where None means "looked up, unknown".
_UNSEEN: Any = object()
_POWER_TYPES = frozenset({POWER_LEVELS[0], JOIN_RULES[0], CREATE[0]})


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


def _as_int(value: Any) -> int | None:
    """A power level as Synapse's resolution reads it (Python's `int`): ints, booleans
    (`true` is 1), strings of base-10 digits, finite floats truncated; else None."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return math.trunc(value)
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
    # The resolution's cache read directly (the lookup asked only on a miss): this runs
    # for every power event ordered.
    cache = events.cache
    rules = events.rules
    refs = events.auth_refs(event) if rules.room_id_from_create_event else event.auth_event_ids
    for aid in refs:
        aev = cache.get(aid, _UNSEEN)
        if aev is _UNSEEN:
            aev = events.get(aid)
        # (Field by field: no state key tuple built per auth event.)
        if aev is None or aev.state_key != "":
            continue
        if aev.type == _PL_TYPE:
            pl = aev
        elif aev.type == _CREATE_TYPE:
            create = aev
    if event.state_key == "" and event.type == _CREATE_TYPE:
        create = event
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

    def _positions(self, evs: list[Event]) -> list[float]:
        """The negated mainline position of each event (as `position` finds it)."""
        cache = self._cache
        get = self._events.get
        # PL event -> its negated position; the auth events that are not PL events.
        pos_of: dict[str, float] = {}
        other: set[str] = set()
        out: list[float] = []
        add = out.append
        for ev in evs:
            for aid in ev.auth_event_ids:
                if aid in other:
                    continue
                if aid in pos_of:
                    add(pos_of[aid])
                    break
                aev = cache.get(aid, _UNSEEN)
                if aev is _UNSEEN:
                    aev = get(aid)
                if aev is not None and aev.state_key == "" and aev.type == _PL_TYPE:
                    pos_of[aid] = -self._position_from(aid)
                    add(pos_of[aid])
                    break
                other.add(aid)
            else:
                add(_NEG_INF)
        return out

    def order(self, event_ids: Iterable[str], cited: set[str] | None = None) -> list[str]:
        """`event_ids` in the spec's "mainline ordering": greater mainline position first
        (an event based on older power levels, or on none, comes earlier), then smaller
        origin_server_ts, then smaller event ID.

        The same as sorting by `(-position(e), e.origin_server_ts, e.event_id)`, but done
        for thousands of events that cite a handful of power levels events between them:

        - an event's position depends only on the first power levels event among its auth
          events, so the power levels events among all the auth events are found once (the
          caller may pass `cited`, a superset of the power levels events among those auth
          events that it has at hand), and
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
        ordered IDs and events (`ids` and `evs` themselves when they are in order)."""
        if len(ids) < _MANY_TO_SORT:
            # A few events: the spec's key tuples are cheaper than the set-up below.
            keys = list(map(self._key, ids, evs, repeat({}), repeat({})))
            order = sorted(range(len(ids)), key=keys.__getitem__)
            return list(map(ids.__getitem__, order)), list(map(evs.__getitem__, order))
        neg_pos: list[float] | None = None
        pls: set[str] = set()
        if cited is None:
            # Nothing at hand about what the events cite: each event's auth events are read
            # once, each auth event looked up once.
            neg_pos = self._positions(evs)
        else:
            pls = self._power_levels_among(cited)
        auths: Iterable[tuple[str, ...]] = map(_AUTH_IDS, evs)
        if len(pls) == 1:
            # Events citing the one PL event share its position; the others have none.
            (pl,) = pls
            # (When every event cites it, positions are all equal: no position sort. That
            # is asked first, with no list built.)
            if not all(map(contains, auths, repeat(pl))):
                cites = map(contains, map(_AUTH_IDS, evs), repeat(pl))
                there = -self._position_from(pl)
                neg_pos = [there if c else _NEG_INF for c in cites]
        elif pls:
            # Several PL events: the first one among each event's auth events decides.
            pos_of = {pl: -self._position_from(pl) for pl in pls}
            neg_pos = []
            add = neg_pos.append
            for refs in auths:
                for aid in refs:
                    if aid in pls:
                        add(pos_of[aid])
                        break
                else:
                    add(_NEG_INF)
        stamps = list(map(_TS, evs))
        index: list[int] | range = range(len(ids))
        # Event IDs decide only between equal timestamps. Events often come in timestamp
        # order already (state sets list them roughly as they were sent): then there is
        # nothing to sort (asked in one pass: strictly increasing). Otherwise they are
        # sorted, by event ID first only when some timestamp repeats.
        if not all(map(lt, stamps, islice(stamps, 1, None))):
            if len(set(stamps)) != len(stamps):
                index = sorted(index, key=ids.__getitem__)
            index = sorted(index, key=stamps.__getitem__)
        if neg_pos is not None:
            index = sorted(index, key=neg_pos.__getitem__)
        if isinstance(index, range):
            return ids, evs
        return list(map(ids.__getitem__, index)), list(map(evs.__getitem__, index))
