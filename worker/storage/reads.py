"""The coalesced reads of rooms and events: concurrent small reads share one query.

Many rooms are handled at once, and each step of each asks the store a small question (the
room's row, a few events and the redactions waiting for them). Asked meanwhile, the same
questions of other rooms go together in one query (`worker.storage.coalesce`); each asker
gets its part of the answer. A room's row is cached once read: this process is its one writer.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from worker.core.outcomes import Outcome
from worker.pipeline.ports import RoomInfo, StateHandle, StoredEvent
from worker.storage import events as ev_sql
from worker.storage import rooms as room_sql
from worker.storage.caches import StoreCaches
from worker.storage.coalesce import Coalescer
from worker.storage.event_rows import stored_events, stored_row
from worker.storage.handles import PgState
from worker.storage.transactions import Database

# `events_and_redactions`: (event IDs, redaction target IDs) and its answer.
_EventsRead = tuple[Sequence[str], Sequence[str]]
_EventsAnswer = tuple[dict[str, StoredEvent], dict[str, list[str]]]


class CoalescedReads:
    """The `RoomStore` reads of rooms and events, shared between rooms when concurrent."""

    def __init__(self, db: Database, caches: StoreCaches, *, concurrency: int) -> None:
        self.db = db
        self.caches = caches
        self.room_reads: Coalescer[str, room_sql.RoomRow | None] = Coalescer(
            self._rooms_read_group, concurrency=concurrency, max_batch=256
        )
        self.shared_reads: Coalescer[_EventsRead, _EventsAnswer] = Coalescer(
            self._events_read_group, concurrency=concurrency, max_batch=64
        )

    async def room_row(self, room_id: str) -> room_sql.RoomRow | None:
        """The room's row: cached, else read together with the other rooms asked for
        meanwhile (rooms being created are asked for by every step until they exist)."""
        row = self.caches.rooms.get(room_id)
        if row is None:
            row = await self.room_reads.submit(room_id)
        return row

    async def _rooms_read_group(self, room_ids: list[str]) -> list[room_sql.RoomRow | None]:
        wanted = sorted(set(room_ids))
        rows = await self.db.read(lambda c: c.fetch(room_sql.SELECT_ROOMS, wanted))
        for r in rows:
            row = room_sql.room_row(r)
            # A room's reads and writes come from its one task in turn: nothing newer can
            # have been cached meanwhile, but if it were, it would win.
            self.caches.rooms.setdefault(row.room_id, row)
        return [self.caches.rooms.get(room_id) for room_id in room_ids]

    async def room(self, room_id: str) -> RoomInfo | None:
        row = await self.room_row(room_id)
        return RoomInfo(row.room_id, row.version) if row else None

    async def current_state(self, room_id: str) -> PgState | None:
        row = await self.room_row(room_id)
        if row is None or row.current_snapshot_nid is None:
            return None
        return PgState(room_id, row.current_snapshot_nid)

    async def extremities(self, room_id: str) -> list[str]:
        row = await self.room_row(room_id)
        return list(row.extremities) if row else []

    async def events_and_redactions(
        self, event_ids: Sequence[str], target_ids: Sequence[str]
    ) -> tuple[dict[str, StoredEvent], dict[str, list[str]]]:
        """`events(event_ids)` and `pending_redactions(target_ids)` in one round trip,
        shared with the same reads of other rooms made meanwhile."""
        return await self.shared_reads.submit((event_ids, target_ids))

    async def _events_read_group(self, reads: list[_EventsRead]) -> list[_EventsAnswer]:
        # One query for every read: the answer to each is its part of the whole.
        all_ids = sorted({i for ids, _ in reads for i in ids})
        all_targets = sorted({t for _, targets in reads for t in targets})
        # The events this process holds are not sent again (their JSON is most of a row);
        # held here, so that the cache evicting one meanwhile does not matter.
        held = {i: ev for i in all_ids if (ev := self.caches.events.get(i)) is not None}

        async def go(conn: asyncpg.Connection) -> list[_EventsAnswer]:
            rows = await conn.fetch(
                ev_sql.SELECT_EVENTS_AND_PENDING_REDACTIONS,
                all_ids,
                all_targets,
                [i in held for i in all_ids],
            )
            events: dict[str, StoredEvent] = {}
            pending: dict[str, list[str]] = {}
            for r in rows:
                if r["redaction_event_id"] is not None:
                    pending.setdefault(r["event_id"], []).append(r["redaction_event_id"])
                else:
                    events[r["event_id"]] = stored_row(self.caches, r, held)
            for redactions in pending.values():
                redactions.sort()
            if len(reads) == 1:
                return [(events, pending)]
            return [
                (
                    {i: events[i] for i in ids if i in events},
                    {t: list(pending[t]) for t in targets if t in pending},
                )
                for ids, targets in reads
            ]

        return await self.db.read(go)

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        found = await self.db.read(lambda c: stored_events(c, self.caches, event_ids))
        return {k: v[0] for k, v in found.items()}

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        out: dict[str, StateHandle] = {}
        missing: list[str] = []
        for eid in event_ids:
            known = self.caches.after.get(eid)
            if known is None:
                missing.append(eid)
            else:
                out[eid] = known
        if not missing:
            return out
        found = await self.db.read(lambda c: stored_events(c, self.caches, missing))
        for eid, (stored, before) in found.items():
            if before is None:
                continue
            e = stored.event
            key = e.state_tuple
            delta = {key: eid} if key and stored.outcome is Outcome.ACCEPTED else {}
            out[eid] = PgState(e.room_id, before, delta)
        return out

    async def pending_redactions(self, target_ids: Sequence[str]) -> dict[str, list[str]]:
        if not target_ids:
            return {}
        rows = await self.db.read(
            lambda c: c.fetch(ev_sql.SELECT_PENDING_REDACTIONS, sorted(set(target_ids)))
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r["target_event_id"], []).append(r["redaction_event_id"])
        return out

