"""What the outbox relay reads and marks: the rows of the outbox table, through a port, and
that port over PostgreSQL (`PgOutboxStore`, over `worker.storage.outbox`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import asyncpg

from worker.errors import RetryableError
from worker.storage import outbox as outbox_sql


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

    async def fetch_unsent(
        self, limit: int, room_id: str | None = None, *, min_age: float = 0.0
    ) -> Sequence[OutboxRow]:
        """Up to `limit` unsent rows, ordered by `seq`: of one room, or of every room with
        an unsent row committed at least `min_age` seconds ago."""
        ...

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        """Mark the rows with these `seq`s published (idempotent)."""
        ...


@runtime_checkable
class RoomsOutboxStore(OutboxStore, Protocol):
    """An `OutboxStore` that reads the unsent rows of several rooms in one go."""

    async def fetch_unsent_rooms(
        self, room_ids: Sequence[str], limit: int, *, per_room: int | None = None
    ) -> Sequence[OutboxRow]:
        """Up to `limit` unsent rows of these rooms, at most `per_room` of each (default:
        `limit`), ordered by `seq`."""
        ...


# What a database failure looks like from asyncpg: the connection or the server went away.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


@dataclass(frozen=True, slots=True)
class PgOutboxStore:
    """`OutboxStore` over the storage module's outbox functions and a connection pool.

    Database failures become `RetryableError`, so a flush that cannot reach PostgreSQL
    naks the input instead of failing it.
    """

    db: asyncpg.Pool
    # Storage marks rows by output id: the ids of fetched rows, by seq, until marked.
    _ids: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    async def fetch_unsent(
        self, limit: int, room_id: str | None = None, *, min_age: float = 0.0
    ) -> Sequence[OutboxRow]:
        try:
            rows = await outbox_sql.fetch_unsent(
                self.db, room_id=room_id, limit=limit, min_age=min_age
            )
        except _DB_ERRORS as exc:
            raise RetryableError(f"outbox read failed: {exc!r}", code="database_unavailable") from exc
        self._ids.update((r.seq, r.output_id) for r in rows)
        return rows

    async def fetch_unsent_rooms(
        self, room_ids: Sequence[str], limit: int, *, per_room: int | None = None
    ) -> Sequence[OutboxRow]:
        try:
            rows = await outbox_sql.fetch_unsent_rooms(
                self.db, room_ids, limit=limit, per_room=per_room
            )
        except _DB_ERRORS as exc:
            raise RetryableError(f"outbox read failed: {exc!r}", code="database_unavailable") from exc
        self._ids.update((r.seq, r.output_id) for r in rows)
        return rows

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        ids = [self._ids.pop(seq) for seq in seqs if seq in self._ids]
        try:
            await outbox_sql.mark_sent(self.db, ids)
        except _DB_ERRORS as exc:
            raise RetryableError(f"outbox update failed: {exc!r}", code="database_unavailable") from exc

    async def stats(self) -> tuple[int, float]:
        """(unsent rows, age of the oldest in seconds) for the outbox gauges."""
        try:
            return await outbox_sql.outbox_stats(self.db)
        except _DB_ERRORS as exc:
            raise RetryableError(f"outbox stats failed: {exc!r}", code="database_unavailable") from exc


__all__ = ["OutboxRow", "OutboxStore", "PgOutboxStore", "RoomsOutboxStore"]
