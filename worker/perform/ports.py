"""What the performs need from the outside: three narrow ports (STYLE R4), declared here.

- `RoomReads`: the room's version, extremities and current state, read-only. Its methods
  are a subset of `worker.query.ports.QueryStore`, so the query API's PostgreSQL reads serve.
- `PerformStore`: the Perform API's own rows (aliases, directory, transaction IDs, forgotten
  rooms); `worker.storage.perform.PgPerformStore`.
- `Submitter`: puts a built event on the input stream and waits for the pipeline's reply;
  `worker.perform.submit.StreamSubmitter`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker.core.events import StateKey
from worker.messages.reply import InputReply
from worker.query.ports import QueryEvent, StateFilter


@dataclass(frozen=True, slots=True)
class TxnRecord:
    """The event a (sender, txn_id) built: enough to answer, or to submit it again."""

    room_id: str
    room_version: str
    event_id: str
    # The signed PDU (JSON).
    pdu: bytes


class RoomReads(Protocol):
    async def room_version(self, room_id: str) -> str | None:
        """The room's version, or None for a room the roomserver does not know."""
        ...

    async def events(self, event_ids: Sequence[str]) -> dict[str, QueryEvent]:
        """The stored events among `event_ids`; unknown ones are absent."""
        ...

    async def extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities."""
        ...

    async def current_state(self, room_id: str, keys: StateFilter) -> dict[StateKey, str]:
        """The room's current state, filtered (`None`: all of it)."""
        ...


class PerformStore(Protocol):
    async def alias(self, alias: str) -> tuple[str, str] | None:
        """(room ID, creator) of an alias of this server, or None."""
        ...

    async def aliases_for_room(self, room_id: str) -> list[str]: ...

    async def add_alias(self, alias: str, room_id: str, creator: str) -> bool:
        """False when the alias exists already."""
        ...

    async def remove_alias(self, alias: str) -> bool: ...

    async def move_aliases(self, old_room_id: str, new_room_id: str) -> list[str]: ...

    async def set_published(self, room_id: str, published: bool) -> None: ...

    async def is_published(self, room_id: str) -> bool: ...

    async def published_page(self, after: int, limit: int) -> tuple[list[str], int, int]:
        """(room IDs after position `after`, the position to continue from or 0, total)."""
        ...

    async def txn(self, sender: str, txn_id: str) -> TxnRecord | None: ...

    async def add_txn(self, sender: str, txn_id: str, record: TxnRecord) -> bool:
        """False when the (sender, txn_id) has an event already."""
        ...

    async def drop_txn(self, sender: str, txn_id: str, event_id: str) -> None: ...

    async def set_forgotten(self, user_id: str, room_id: str, forgotten: bool) -> None: ...


class Submitter(Protocol):
    async def submit(
        self, room_id: str, room_version: str, pdu: dict[str, Any] | bytes, event_id: str
    ) -> InputReply:
        """Publish the event as a `new` input and wait for the pipeline's reply.

        Raises `TimeoutError` when no reply comes in time (the input may still be processed:
        it is in the stream).
        """
        ...

    async def publish(
        self, room_id: str, room_version: str, pdu: dict[str, Any] | bytes, event_id: str
    ) -> Awaitable[InputReply]:
        """Publish the input; returns, once the stream holds it, an awaitable of the reply
        (raising `TimeoutError` like `submit`)."""
        ...
