"""Step 6 of DESIGN §2 (the state before an event) and the room's new current state.

State stays an opaque `StateHandle` of the store wherever it can: a linear room never
materialises its whole state. Only a fork (several prev events, or several forward
extremities) materialises the state sets and runs state resolution.

Resolution of a big fork runs in a worker thread (`asyncio.to_thread`). CPU-bound Python in
a thread still holds the GIL, but the interpreter hands the GIL over every few milliseconds
(`sys.getswitchinterval`), so the event loop keeps running: NATS heartbeats, `in_progress`
acks and other rooms keep moving, only slower. A process pool would free the GIL entirely
but must pickle every event of the conflicted set and its auth chains on each call, which
costs about as much as the resolution itself for the rooms where it matters; we chose the
thread, and keep small resolutions (the common case) inline where a thread hop would cost
more than the work.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome, Rejection
from worker.core.stateres import UnknownEvent, resolve
from worker.core.versions import RoomRules
from worker.errors import InvariantViolation
from worker.observability.metrics import STATE_RESOLUTION_CONFLICTED, STATE_RESOLUTION_DURATION
from worker.pipeline.authstep import is_create
from worker.pipeline.model import StateHandle, StoredEvent, Work

log = structlog.get_logger(__name__)

# Resolutions that load more events than this run in a worker thread (see module docstring).
OFFLOAD_EVENTS = 2000


@dataclass(frozen=True, slots=True)
class Merge:
    """A state resolution the pipeline ran: its inputs, for the state-reset detector."""

    state_sets: list[dict[StateKey, str]]
    resolved: dict[StateKey, str]
    events: dict[str, StoredEvent]


class EventReads(Protocol):
    """What loading auth chains reads: stored events by ID."""

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The known events among `event_ids` (unknown ones are absent)."""
        ...


async def load_auth_closure(store: EventReads, ids: Iterable[str]) -> dict[str, StoredEvent]:
    """The given events and their full auth chains, one round trip per auth-chain level."""
    loaded: dict[str, StoredEvent] = {}
    asked: set[str] = set()
    frontier = set(ids)
    while frontier:
        asked |= frontier
        got = await store.events(sorted(frontier))
        loaded.update(got)
        frontier = {
            a for se in got.values() for a in se.event.auth_event_ids if a not in asked
        }
    return loaded


def _resolve_sync(
    rules: RoomRules, state_sets: Sequence[Mapping[StateKey, str]], events: dict[str, StoredEvent]
) -> dict[StateKey, str]:
    by_id: dict[str, Event] = {eid: se.event for eid, se in events.items()}
    rejected = frozenset(eid for eid, se in events.items() if se.outcome is Outcome.REJECTED)
    start = time.perf_counter()
    try:
        state, stats = resolve(rules, state_sets, by_id.get, None, rejected)
    except UnknownEvent as exc:
        # Every state event is stored before it can be in a state set, and so are its auth
        # events: a gap here is corrupt data, not something a retry could fix.
        raise InvariantViolation(f"state resolution: {exc}") from exc
    algorithm = rules.state_res.value
    STATE_RESOLUTION_DURATION.labels(algorithm).observe(time.perf_counter() - start)
    STATE_RESOLUTION_CONFLICTED.labels(algorithm).observe(stats.conflicted)
    return dict(state)


class ResolveStore(EventReads, Protocol):
    """What resolving several states into one reads: the states, compared or in full, and
    the events in them with their auth chains; and a handle for the result."""

    async def diff(
        self, old: StateHandle | None, new: StateHandle
    ) -> tuple[list[str], list[str]]:
        """(event IDs in `new` not in `old`, event IDs in `old` not in `new`), each sorted."""
        ...

    async def materialize(self, state: StateHandle) -> dict[StateKey, str]:
        """The whole state as (type, state_key) -> event ID (for state resolution)."""
        ...

    async def handle_from_map(self, room_id: str, state: Mapping[StateKey, str]) -> StateHandle:
        """A handle for a state given in full (a resolution's result)."""
        ...


async def resolve_handles(
    store: ResolveStore, work: Work, handles: Sequence[StateHandle]
) -> tuple[StateHandle, Merge | None]:
    """One state from several: resolution, unless they are all the same state."""
    if len(handles) == 1:
        return handles[0], None
    if len(handles) == 2 and await store.diff(handles[0], handles[1]) == ([], []):
        # Two handles of one state (a branch through a rejected event, whose state after it
        # is the state before it): the store compares them without materialising either.
        return handles[0], None
    maps = [await store.materialize(h) for h in handles]
    if all(m == maps[0] for m in maps[1:]):
        return handles[0], None
    ids = {eid for m in maps for eid in m.values()}
    if work.event_id in ids:
        # The state after the event being processed includes it, and it is not stored yet.
        ids.discard(work.event_id)
        ids.update(work.event.auth_event_ids)
    events = await load_auth_closure(store, ids)
    if work.event_id in {eid for m in maps for eid in m.values()}:
        events[work.event_id] = StoredEvent(work.event, Outcome.ACCEPTED, "", "", work.kind, True)
    run = functools.partial(_resolve_sync, work.rules, maps, events)
    if len(events) > OFFLOAD_EVENTS:
        log.info("state_resolution_offloaded", events=len(events), sets=len(maps))
        resolved = await asyncio.to_thread(run)
    else:
        resolved = run()
    handle = await store.handle_from_map(work.room_id, resolved)
    return handle, Merge(maps, resolved, events)


class StateBeforeStore(ResolveStore, Protocol):
    """What computing the state before an event reads: the state after its prev events
    (resolved when they differ), or the state a federated join gives."""

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        """State after each event that has state (`StoredEvent.has_state`); others absent.

        The state after an event is the state before it, plus the event itself when it is an
        accepted state event (rejected and soft-failed events never enter state).
        """
        ...

    async def state_from_ids(self, room_id: str, event_ids: Sequence[str]) -> StateHandle:
        """A state made of exactly these (stored) state events: a federated join's state."""
        ...


async def state_before(store: StateBeforeStore, work: Work) -> StateHandle | Rejection | None:
    """The state before the event; None when it cannot be known (an `old` event whose prev
    events have no state), a `Rejection` when the given state is unusable."""
    if work.inp.state_event_ids is not None:
        return await _given_state(store, work, work.inp.state_event_ids)
    if is_create(work.event):
        return await store.handle_from_map(work.room_id, {})
    prevs = work.event.prev_event_ids
    if not prevs:
        return Rejection("no_prev_events", "only the create event may have no prev events")
    if any(p not in work.known or not work.known[p].has_state for p in prevs):
        return None
    after = work.after_prevs
    if after is None or any(p not in after for p in prevs):
        after = await store.state_after(prevs)
    handle, _ = await resolve_handles(store, work, [after[p] for p in prevs])
    return handle


async def _given_state(
    store: StateBeforeStore, work: Work, ids: Sequence[str]
) -> StateHandle | Rejection:
    """A federated join's state: exactly these events, each of which must be stored."""
    stored = await store.events(ids)
    missing = [i for i in ids if i not in stored]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        return Rejection(
            "missing_state_events",
            f"{len(missing)} state_event_ids are not stored here: {shown}",
        )
    work.given_state = stored
    return await store.state_from_ids(work.room_id, ids)


def state_entry(work: Work) -> dict[StateKey, str]:
    """What the event adds to state: itself at its key (accepted state events only)."""
    key = work.event.state_tuple
    return {key: work.event_id} if key is not None else {}
