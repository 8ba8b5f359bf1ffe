"""Write a `MemoryStore` room into PostgreSQL through `PostgresStore.persist`, event by event.

Each event is persisted as the pipeline would persist it: its state before (given in full by
the memory room), the extremities after it, the current state after it, and the redaction it
applies. The query answers over PostgreSQL can then be compared with the same assertions as
over memory (`test_handlers.py` runs on both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.core.canonical import encode_canonical
from worker.core.events import StateKey
from worker.core.outcomes import Outcome
from worker.pipeline.ports import EventWrite, RoomStore
from worker.query.ports import QueryEvent, QueryStore, StateFilter

from .rooms import MemoryStore


async def persist_room(store: RoomStore, room: MemoryStore) -> None:
    for event_id in room.order:
        pdu = room.originals[event_id]
        ev = room.stored[event_id].event
        ev = type(ev)(pdu, event_id, room.rules)
        outcome = Outcome(room.stored[event_id].outcome)
        before = await store.handle_from_map(room.room_id, room.before[event_id])
        after = await store.handle_from_map(room.room_id, room.after(event_id))
        redactions: list[tuple[str, str]] = []
        if ev.type == "m.room.redaction" and ev.redacts and outcome is Outcome.ACCEPTED:
            redactions.append((event_id, ev.redacts))
        await store.persist(
            EventWrite(
                room_id=room.room_id,
                room_version=room.version,
                event=ev,
                event_json=encode_canonical(pdu),
                kind="new",
                outcome=outcome,
                state_before=before,
                extremities=room.latest_at[event_id],
                current_state=after,
                redactions=redactions,
            )
        )


class Backed:
    """A `QueryStore` under test, with the memory room it was written from as the reference
    (the assertions read `stored`, `current`, `after()` from the reference)."""

    def __init__(self, reads: QueryStore, ref: MemoryStore) -> None:
        self.reads = reads
        self.ref = ref

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ref, name)

    async def room_version(self, room_id: str) -> str | None:
        return await self.reads.room_version(room_id)

    async def events(self, event_ids: Sequence[str]) -> dict[str, QueryEvent]:
        return await self.reads.events(event_ids)

    async def extremities(self, room_id: str) -> list[str]:
        return await self.reads.extremities(room_id)

    async def current_state(self, room_id: str, keys: StateFilter) -> dict[StateKey, str]:
        return await self.reads.current_state(room_id, keys)

    async def state_after(
        self, event_ids: Sequence[str], keys: StateFilter
    ) -> dict[str, dict[StateKey, str]]:
        return await self.reads.state_after(event_ids, keys)

    async def state_before(
        self, event_ids: Sequence[str], keys: StateFilter
    ) -> dict[str, dict[StateKey, str]]:
        return await self.reads.state_before(event_ids, keys)

    async def auth_chain(self, event_ids: Sequence[str]) -> set[str]:
        return await self.reads.auth_chain(event_ids)

    async def server_joined(self, room_id: str, server_name: str) -> bool:
        return await self.reads.server_joined(room_id, server_name)

    async def ever_joined(self, room_id: str, user_id: str) -> bool:
        return await self.reads.ever_joined(room_id, user_id)
