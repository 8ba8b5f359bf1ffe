"""`StoreBatch`: one room's writes held in memory and committed in one transaction.

A room's queued events are handled one after another exactly as before, but their writes
are not persisted one by one: `persist` keeps each write here, the reads of the next event
see it as if it had been committed (its stored form, the state after it, the room's new
extremities and current state), and `commit` persists them all in one transaction
(`PostgresStore.persist_many`). Per event that saves the transaction's fixed costs (begin
with the room lock, the fence, the room row, commit) and the reads of what the event before
had just written; the first reads of the batch's own events are made once for all of them
(`prefetch`).

What the batch cannot answer from memory exactly, it does not guess: it commits what it
holds first and then asks the store (`flush`). That is the case for writes that change an
event already stored (a promotion from outlier, redactions: the stored JSON changes), for a
federated join's state, and for gap filling (`write_through`: the gap filler reads the
store directly). Nothing is cached in the store until the transaction commits; if it fails, the
batch is dropped whole and the caller handles the events again one by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome
from worker.errors import InvariantViolation
from worker.pipeline.ports import (
    EventWrite,
    ReadAheadStore,
    RoomInfo,
    StateHandle,
    StoredEvent,
)
from worker.pipeline.ports import StoreBatch as Batch
from worker.storage.handles import PgState
from worker.storage.handles import apply as _apply
from worker.storage.handles import own as _own

_REDACTION = "m.room.redaction"


class BatchedStore(ReadAheadStore, Protocol):
    """What a batch needs of the store it commits to (`PostgresStore`)."""

    async def persist_many(self, writes: Sequence[EventWrite]) -> None: ...

    async def ensure_names(self, keys: Iterable[StateKey]) -> None: ...


class StoreBatch:
    """A `RoomStore` (and `ReadAheadStore`) over `inner`, for the events of one room."""

    def __init__(self, inner: BatchedStore, room_id: str) -> None:
        self.inner = inner
        self.room_id = room_id
        self._writes: list[EventWrite] = []
        # What the held writes made, as the store would answer after committing them.
        self._events: dict[str, StoredEvent] = {}
        self._after: dict[str, PgState] = {}
        self._room: RoomInfo | None = None
        # The store said the room does not exist (until a held create event makes it).
        self._absent = False
        self._current: PgState | None = None
        self._extremities: list[str] | None = None
        # Read once for the whole batch: stored events by ID (None: not stored) and the
        # stored redactions waiting for each target asked about.
        self._seen: dict[str, StoredEvent | None] = {}
        self._seen_redactions: dict[str, list[str]] = {}
        # Once true, writes go straight to the store (see `write_through`).
        self._writing_through = False
        self.committed = 0

    @property
    def held(self) -> int:
        """Writes held, not yet committed."""
        return len(self._writes)

    # --- committing ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Commit the held writes now; afterwards every read goes to the store again."""
        writes, self._writes = self._writes, []
        self._events.clear()
        self._after.clear()
        self._room = None
        self._absent = False
        self._current = None
        self._extremities = None
        # A committed write may have changed what was read ahead (a redaction applied).
        self._seen.clear()
        self._seen_redactions.clear()
        if writes:
            await self.inner.persist_many(writes)
            self.committed += len(writes)

    async def commit(self) -> None:
        await self.flush()

    async def write_through(self) -> None:
        """Commit what is held and write every later event at once (for the gap filler,
        which reads the store itself, and so must find every event already written)."""
        await self.flush()
        self._writing_through = True

    async def prefetch(
        self,
        event_ids: Sequence[str],
        target_ids: Sequence[str],
        keys: Sequence[StateKey] = (),
    ) -> None:
        """Read the stored events among `event_ids` and the redactions waiting for
        `target_ids` in one round trip, for the events about to be handled; and make sure
        the state `keys` their auth checks read have NIDs (`PostgresStore.ensure_names`)."""
        if keys:
            await self.inner.ensure_names(keys)
        ids = sorted({i for i in event_ids if i not in self._seen and i not in self._events})
        targets = sorted({t for t in target_ids if t not in self._seen_redactions})
        if not ids and not targets:
            return
        found, pending = await self.inner.events_and_redactions(ids, targets)
        for eid in ids:
            self._seen[eid] = found.get(eid)
        for t in targets:
            self._seen_redactions[t] = pending.get(t, [])

    # --- reads -----------------------------------------------------------------------------

    async def room(self, room_id: str) -> RoomInfo | None:
        if room_id != self.room_id:
            return await self.inner.room(room_id)
        if self._room is not None:
            return self._room
        if self._absent:
            return None
        room = await self.inner.room(room_id)
        # A new room is read again by every step until its create event commits.
        self._absent = room is None
        return room

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        found, _ = await self.events_and_redactions(event_ids, ())
        return found

    async def events_and_redactions(
        self, event_ids: Sequence[str], target_ids: Sequence[str]
    ) -> tuple[dict[str, StoredEvent], dict[str, list[str]]]:
        out: dict[str, StoredEvent] = {}
        rest: list[str] = []
        for eid in event_ids:
            held = self._events.get(eid)
            if held is not None:
                out[eid] = held
            elif eid in self._seen:
                seen = self._seen[eid]
                if seen is not None:
                    out[eid] = seen
            else:
                rest.append(eid)
        pending: dict[str, list[str]] = {}
        targets: list[str] = []
        for t in target_ids:
            if t in self._seen_redactions:
                if self._seen_redactions[t]:
                    pending[t] = list(self._seen_redactions[t])
            else:
                targets.append(t)
        if rest or targets:
            found, more = await self.inner.events_and_redactions(rest, targets)
            for eid in rest:
                self._seen[eid] = found.get(eid)
            out.update(found)
            pending.update(more)
        return out, pending

    async def pending_redactions(self, target_ids: Sequence[str]) -> dict[str, list[str]]:
        _, pending = await self.events_and_redactions((), target_ids)
        return pending

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        out: dict[str, StateHandle] = {}
        rest: list[str] = []
        for eid in event_ids:
            held = self._after.get(eid)
            if held is not None:
                out[eid] = held
            elif eid in self._events:
                # Held without a state (an outlier): `state_after` has no answer for it.
                continue
            else:
                rest.append(eid)
        if rest:
            out.update(await self.inner.state_after(rest))
        return out

    async def state_from_ids(self, room_id: str, event_ids: Sequence[str]) -> PgState:
        # The store reads the events' keys itself: the events must be committed.
        await self.flush()
        return _own(await self.inner.state_from_ids(room_id, event_ids))

    async def current_state(self, room_id: str) -> StateHandle | None:
        if room_id == self.room_id:
            if self._current is not None:
                return self._current
            if self._absent and self._room is None:
                return None
        return await self.inner.current_state(room_id)

    async def extremities(self, room_id: str) -> list[str]:
        if room_id == self.room_id:
            if self._extremities is not None:
                return list(self._extremities)
            if self._absent and self._room is None:
                return []
        return await self.inner.extremities(room_id)

    async def lookup(self, state: StateHandle, keys: Sequence[StateKey]) -> dict[StateKey, Event]:
        h = _own(state)
        out: dict[StateKey, Event] = {}
        if self._events:
            # Entries naming held events are answered here; the store would not find them.
            rest_delta: dict[StateKey, str] = {}
            for k, eid in h.delta.items():
                held = self._events.get(eid) if eid else None
                if held is None:
                    rest_delta[k] = eid
                elif k in keys:
                    out[k] = held.event
            if len(rest_delta) != len(h.delta):
                h = PgState(h.room_id, h.snapshot_nid, rest_delta)
                keys = [k for k in keys if k not in out]
        if keys:
            out.update(await self.inner.lookup(h, keys))
        return out

    async def materialize(self, state: StateHandle) -> dict[StateKey, str]:
        return await self.inner.materialize(state)

    def apply(self, state: StateHandle, entries: Mapping[StateKey, str]) -> PgState:
        return _apply(state, entries)

    async def handle_from_map(self, room_id: str, state: Mapping[StateKey, str]) -> PgState:
        return _own(await self.inner.handle_from_map(room_id, state))

    async def diff(
        self, old: StateHandle | None, new: StateHandle
    ) -> tuple[list[str], list[str]]:
        return await self.inner.diff(old, new)

    # --- writes ----------------------------------------------------------------------------

    async def persist(self, write: EventWrite) -> None:
        if write.room_id != self.room_id:
            raise InvariantViolation(f"a batch of {self.room_id} got a write of {write.room_id}")
        if self._writing_through:
            await self.inner.persist(write)
            self.committed += 1
            # What was read ahead may be stale now (this event, redactions it applied).
            self._seen.clear()
            self._seen_redactions.clear()
            return
        e = write.event
        eid = e.event_id
        # Only an event the store is known not to have can be held: a write over a stored
        # event (an outlier joining the DAG) keeps parts of the stored row, which the batch
        # does not model.
        fresh = eid in self._seen and self._seen[eid] is None and eid not in self._events
        self._writes.append(write)
        if not fresh or write.redactions or e.type == _REDACTION:
            # Redactions change stored JSON and the waiting-redaction index: commit at once.
            await self.flush()
            return
        has_state = write.state_before is not None
        self._events[eid] = StoredEvent(
            event=e,
            outcome=write.outcome,
            reason_code=write.reason_code,
            reason=write.reason,
            kind=write.kind,
            has_state=has_state,
        )
        if write.state_before is not None and write.kind != "outlier":
            key = e.state_tuple
            entries = {key: eid} if key is not None and write.outcome is Outcome.ACCEPTED else {}
            self._after[eid] = _apply(write.state_before, entries)
        if write.extremities is not None:
            self._extremities = list(write.extremities)
        if write.current_state is not None:
            self._current = _own(write.current_state)
        if self._room is None and await self.room(self.room_id) is None:
            self._room = RoomInfo(self.room_id, write.room_version)


def _conforms(batch: StoreBatch) -> Batch:
    """Static proof (checked by mypy --strict) that `StoreBatch` implements the port."""
    return batch
