"""The ports through which the outbox relay reads and marks the rows of the outbox table.

Storage implements them (`worker.storage.outbox.PgOutboxStore`); the app hands that in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


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
        """Stable id of the output (with `seq`, its `Nats-Msg-Id`: see `outbox.msg_id`)."""
        ...

    @property
    def output_type(self) -> str: ...

    @property
    def payload(self) -> bytes:
        """The encoded output envelope (`worker.messages.output`)."""
        ...


class OutboxStore(Protocol):
    """What the relay needs from storage."""

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


__all__ = ["OutboxRow", "OutboxStore", "RoomsOutboxStore"]
