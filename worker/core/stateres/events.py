"""Event lookups and auth-graph walks for one resolution (shared by v1, v2 and v2.1).

`Events` memoises the caller's lookups and walks auth chains a generation at a time; it also
carries what the caller knows besides the events: the room's rules and which events were
rejected. Nothing here decides a conflict.

Determinism (STYLE R9): every set this module returns is only ever used for membership tests
or sorted before use, so `PYTHONHASHSEED` never reaches a result.

Spec: https://spec.matrix.org/latest/rooms/v2/#state-resolution (definitions: auth chain),
https://spec.matrix.org/latest/rooms/v12/ (the create event implied by the room ID).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from collections.abc import Set as AbstractSet
from operator import attrgetter
from typing import Any

from worker.core.events import Event, StateKey
from worker.core.versions import RoomRules

CREATE: StateKey = ("m.room.create", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")

EventLookup = Callable[[str], "Event | None"]
AuthChainFn = Callable[[str], AbstractSet[str]]

_AUTH_IDS = attrgetter("auth_event_ids")
_TYPE = attrgetter("type")
_ROOM_ID = attrgetter("room_id")
# From how many events on a generation of an auth-graph walk is walked as a set (`walk`).
_WIDE = 32
# Marks a cache miss where None means "looked up, unknown".
_UNSEEN: Any = object()


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
        rejected: Collection[str],
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
        start = roots if isinstance(roots, set) else set(roots)
        if self._chain_fn is not None:
            return self._closure_by_index(start, self._chain_fn)
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

    def _closure_by_index(self, start: set[str], chain_fn: AuthChainFn) -> set[str]:
        """`closure` answered by the caller's index, the unions running in C.

        Many roots (a big room's conflicted members) mostly cite the same few events, so
        the chains of what they cite are fewer and smaller to merge than the roots' own
        chains: an event's chain is what it cites plus their chains. That holds only where
        every root and every event they cite is known; otherwise the roots' chains are
        merged as they are.
        """
        if len(start) >= _WIDE:
            first = self._cited_known(start)
            if first is not None:
                return first.union(*map(chain_fn, first))
        return set().union(*map(chain_fn, start))

    def _cited_known(self, start: set[str]) -> set[str] | None:
        """What the events of `start` cite, when they and what they cite are all known;
        else None."""
        first = self._cited(start)
        if first is None:
            return None
        self.load(first)
        if not all(map(self._cache.get, first)):
            return None
        return first

    def _cited(self, start: set[str]) -> set[str] | None:
        """What the events of `start` cite, when they are all known (then recorded for
        `cited_by`, and kept for this very set); else None."""
        for roots, first in self._walked:
            if roots is start:
                return first
        primed = [evs for roots, evs in self._primed if roots is start]
        if primed:
            # (Primed events are all known: nothing to look up again.)
            first = self.refs_of_events(primed[0])
        else:
            self.load(start)
            if not all(map(self._cache.get, start)):
                return None
            first = self.refs_of(start)
        self._walked.append((start, first))
        return first

    def closure_citing(
        self, roots: set[str], covered: set[str]
    ) -> tuple[set[str], set[str]] | None:
        """What `roots` cite, and the closure of what they cite outside `covered` (those
        events and their chains), when an auth chain index answers chains, the roots and
        what they cite (but `covered`) are known and the roots cite every event of `covered`
        directly; otherwise None. The closure of `roots` is the union of the two, and of
        the chains of `covered`'s events.

        For a caller that holds the closure of `covered`: whatever those chains hold is in
        it, so the merge of thousands of chains (a stale fork's new member events, each
        citing the old one) is left out, and so are the lookups of `covered`'s events
        (only the chains of the other cited events are asked of the index).
        """
        chain_fn = self._chain_fn
        if chain_fn is None or len(roots) < _WIDE:
            return None
        first = self._cited(roots)
        if first is None or not covered <= first:
            return None
        rest = first - covered
        self.load(rest)
        if not all(map(self._cache.get, rest)):
            return None
        return first, rest.union(*map(chain_fn, rest))

    def prime(self, roots: set[str], events: list[Event]) -> None:
        """Hand over the events of `roots` (every one known), for a later `closure(roots)`
        or `closure_citing(roots, ...)` of that very set: the caller looked them up
        already, and a big room's conflicted events are scattered in memory, so each pass
        over them costs."""
        self._primed.append((roots, events))

    def walked(self, part: set[str]) -> bool:
        """Whether a walk recorded here (for `cited_by`) started from `part` itself."""
        return any(roots is part for roots, _ in self._walked)

    def cited_by(self, parts: Iterable[set[str]]) -> set[str]:
        """A superset of the auth events that the events of `parts` cite.

        A resolution walks from its conflicted events, and later asks what they cite
        (mainline ordering): a part that a closure walked here started from (that very
        set) reuses the first generation of that walk; the events of the other parts are
        read here.
        """
        found: list[set[str]] = []
        unread: list[set[str]] = []
        # (`_walked` keeps its sets alive, so a part with the id of one of them is it.)
        walked = {id(roots): first for roots, first in self._walked}
        for part in parts:
            first = walked.get(id(part))
            if first is not None:
                found.append(first)
            else:
                unread.append(part)
        if unread:
            # (Many state sets merging at once hand over many small parts: one read.)
            found.append(self.refs_of(set().union(*unread)))
        return set().union(*found)

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
        auths: Iterable[tuple[str, ...]] = map(_AUTH_IDS, known)
        n = len(known)
        if n >= _WIDE and known[n // 2].auth_event_ids == known[-1].auth_event_ids:
            # Two events far apart cite the same events: likely most do (a room's state,
            # thousands of members citing the create, power levels and join rules
            # events), so each distinct list is merged once.
            auths = set(auths)
        refs: set[str] = set().union(*auths)
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
