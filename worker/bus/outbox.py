"""The outbox relay: publishes committed outbox rows to the output stream (DESIGN §2 step 9).

The pipeline writes one outbox row per output in the event's own transaction, then calls
`flush(room_id)`; the relay publishes that room's unsent rows in outbox order to
`<prefix>.output.<room token>` with `Nats-Msg-Id` = the row's stable output id, waits for each
`PubAck`, and marks the rows sent. After a crash between commit and publish, `sweep()` (run at
start and then periodically by `run()`) publishes whatever is still unsent, and updates the
outbox gauges when given a `stats` callable (`PgOutboxStore.stats`). Publishing a row
twice is harmless within the stream's duplicate window: JetStream drops the repeat.

Order: rows of one room are published one at a time in outbox order, and a row is only
attempted once every earlier row of its room was stored by JetStream (by this relay or, as a
duplicate, by another), so the output stream keeps each room's order even when a flush and a
sweep, or two workers, race on the same rows. Within one process a per-room lock keeps them
from doing the work twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import asyncpg
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from worker.bus.subjects import MSG_ID_HEADER, OUTPUT_TYPE_HEADER, ROOM_ID_HEADER, Subjects
from worker.errors import RetryableError
from worker.observability.logging import get_logger
from worker.observability.metrics import OUTBOX_LAG, OUTBOX_UNSENT, OUTPUTS_PUBLISHED
from worker.storage import outbox as outbox_sql

_log = get_logger(__name__)


class OutboxRow(Protocol):
    """One committed output (storage returns its own frozen record with these attributes)."""

    @property
    def seq(self) -> int:
        """Position in the outbox; increasing in commit order within a room."""
        ...

    @property
    def room_id(self) -> str: ...

    @property
    def output_id(self) -> str:
        """Stable id of the output, used as `Nats-Msg-Id`."""
        ...

    @property
    def output_type(self) -> str: ...

    @property
    def payload(self) -> bytes:
        """The encoded output envelope (`worker.messages.output`)."""
        ...


class OutboxStore(Protocol):
    """What the relay needs from storage (`PgOutboxStore` over `worker.storage.outbox`)."""

    async def fetch_unsent(self, limit: int, room_id: str | None = None) -> Sequence[OutboxRow]:
        """Up to `limit` unsent rows, ordered by `seq`; of one room, or of all rooms."""
        ...

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        """Mark the rows with these `seq`s published (idempotent)."""
        ...


@runtime_checkable
class RoomsOutboxStore(OutboxStore, Protocol):
    """An `OutboxStore` that reads the unsent rows of several rooms in one go."""

    async def fetch_unsent_rooms(self, room_ids: Sequence[str], limit: int) -> Sequence[OutboxRow]:
        """Up to `limit` unsent rows of these rooms, ordered by `seq`."""
        ...


# What a database failure looks like from asyncpg: the connection or the server went away.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


@dataclass(frozen=True, slots=True)
class PgOutboxStore:
    """`OutboxStore` over the storage module's outbox functions and a connection pool.

    Database failures become `RetryableError`, so a flush that cannot reach PostgreSQL
    naks the input instead of failing it.
    """

    db: asyncpg.Pool
    # Storage marks rows by output id: the ids of fetched rows, by seq, until marked.
    _ids: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    async def fetch_unsent(self, limit: int, room_id: str | None = None) -> Sequence[OutboxRow]:
        try:
            rows = await outbox_sql.fetch_unsent(self.db, room_id=room_id, limit=limit)
        except _DB_ERRORS as exc:
            raise RetryableError(f"outbox read failed: {exc!r}", code="db_unavailable") from exc
        self._ids.update((r.seq, r.output_id) for r in rows)
        return rows

    async def fetch_unsent_rooms(self, room_ids: Sequence[str], limit: int) -> Sequence[OutboxRow]:
        try:
            rows = await outbox_sql.fetch_unsent_rooms(self.db, room_ids, limit=limit)
        except _DB_ERRORS as exc:
            raise RetryableError(f"outbox read failed: {exc!r}", code="db_unavailable") from exc
        self._ids.update((r.seq, r.output_id) for r in rows)
        return rows

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        ids = [self._ids.pop(seq) for seq in seqs if seq in self._ids]
        try:
            await outbox_sql.mark_sent(self.db, ids)
        except _DB_ERRORS as exc:
            raise RetryableError(f"outbox update failed: {exc!r}", code="db_unavailable") from exc

    async def stats(self) -> tuple[int, float]:
        """(unsent rows, age of the oldest in seconds) for the outbox gauges."""
        try:
            return await outbox_sql.outbox_stats(self.db)
        except _DB_ERRORS as exc:
            raise RetryableError(f"outbox stats failed: {exc!r}", code="db_unavailable") from exc


class NatsOutboxRelay:
    """Implements `worker.pipeline.ports.OutboxRelay` over JetStream."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        store: OutboxStore,
        *,
        batch: int = 256,
        sweep_interval: float = 5.0,
        publish_timeout: float = 5.0,
        stats: Callable[[], Awaitable[tuple[int, float]]] | None = None,
    ) -> None:
        self._js = nc.jetstream()
        self._subjects = subjects
        self._store = store
        self._batch = batch
        self._sweep_interval = sweep_interval
        self._publish_timeout = publish_timeout
        self._stats = stats
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def _room_lock(self, room_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(room_id, (asyncio.Lock(), 0))
        self._locks[room_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[room_id]
            if users == 1:
                del self._locks[room_id]
            else:
                self._locks[room_id] = (lock, users - 1)

    async def flush(self, room_id: str) -> None:
        """Return once every outbox row of the room committed so far is published.

        Raises `RetryableError` if NATS or the store failed; rows published before the
        failure are marked sent, the rest stay for the next flush or sweep.
        """
        async with self._room_lock(room_id):
            while True:
                rows = await self._store.fetch_unsent(self._batch, room_id=room_id)
                if rows:
                    await self._publish_in_order(rows)
                if len(rows) < self._batch:
                    return

    async def flush_rooms(self, room_ids: Sequence[str]) -> None:
        """`flush` of several rooms: one read and one update for all of them, and the rooms
        published side by side (each room's rows still one at a time, in order), so that
        under load of many rooms the outbox costs two statements per pass, not per room.

        Raises the first failure once every room had its try; rows published before it are
        marked sent, the rest stay for the next flush or sweep.
        """
        rooms = sorted(set(room_ids))
        store = self._store
        if len(rooms) == 1 or not isinstance(store, RoomsOutboxStore):
            done = await asyncio.gather(*(self.flush(r) for r in rooms), return_exceptions=True)
            _raise_first(done)
            return
        while rooms:
            rows = await store.fetch_unsent_rooms(rooms, self._batch)
            by_room: dict[str, list[OutboxRow]] = {}
            for row in rows:
                by_room.setdefault(row.room_id, []).append(row)
            sent: list[int] = []
            done = await asyncio.gather(
                *(self._publish_room(r, room_rows, sent) for r, room_rows in by_room.items()),
                return_exceptions=True,
            )
            if sent:
                await store.mark_sent(sent)
            _raise_first(done)
            if len(rows) < self._batch:
                return
            # Only the rooms that had rows in this pass can have more.
            rooms = sorted(by_room)

    async def _publish_room(self, room_id: str, rows: Sequence[OutboxRow], sent: list[int]) -> None:
        async with self._room_lock(room_id):
            for row in rows:
                await self._publish(row)
                sent.append(row.seq)

    async def sweep(self) -> int:
        """Publish every unsent row of every room; returns how many rows were handled."""
        total = 0
        while True:
            rows = await self._store.fetch_unsent(self._batch)
            by_room: dict[str, list[OutboxRow]] = {}
            for row in rows:
                by_room.setdefault(row.room_id, []).append(row)
            for room_id, room_rows in by_room.items():
                async with self._room_lock(room_id):
                    await self._publish_in_order(room_rows)
            total += len(rows)
            if len(rows) < self._batch:
                return total

    async def run(self) -> None:
        """Sweep now and then every `sweep_interval` until cancelled; failures are logged."""
        while True:
            try:
                swept = await self.sweep()
                if swept:
                    _log.info("outbox_swept", rows=swept)
                if self._stats is not None:
                    unsent, lag = await self._stats()
                    OUTBOX_UNSENT.set(unsent)
                    OUTBOX_LAG.set(lag)
            except RetryableError as exc:
                _log.warning("outbox_sweep_failed", error=str(exc), code=exc.code)
            await asyncio.sleep(self._sweep_interval)

    async def _publish_in_order(self, rows: Sequence[OutboxRow]) -> None:
        sent: list[int] = []
        try:
            for row in rows:
                await self._publish(row)
                sent.append(row.seq)
        finally:
            if sent:
                await self._store.mark_sent(sent)

    async def _publish(self, row: OutboxRow) -> None:
        headers = {
            ROOM_ID_HEADER: row.room_id,
            OUTPUT_TYPE_HEADER: row.output_type,
            MSG_ID_HEADER: row.output_id,
        }
        try:
            ack = await self._js.publish(
                self._subjects.output(row.room_id),
                row.payload,
                timeout=self._publish_timeout,
                stream=self._subjects.output_stream,
                headers=headers,
            )
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise RetryableError(
                f"could not publish output {row.output_id} of {row.room_id}: {exc!r}",
                code="output_publish_failed",
            ) from exc
        if not ack.duplicate:
            OUTPUTS_PUBLISHED.labels(row.output_type).inc()


def _raise_first(results: Sequence[object]) -> None:
    for r in results:
        if isinstance(r, BaseException):
            raise r


__all__ = ["NatsOutboxRelay", "OutboxRow", "OutboxStore", "PgOutboxStore", "RoomsOutboxStore"]
