"""What the performs need from the outside: three narrow ports (STYLE R4), declared here.

- `RoomReads`: the room's version, extremities and current state, read-only. Its methods
  are a subset of `worker.query.ports.QueryStore`, so the query API's PostgreSQL reads serve.
- `PerformStore`: the Perform API's own rows (aliases, directory, transaction IDs, forgotten
  rooms); `worker.storage.perform.PgPerformStore`.
- `Submitter`: puts a built event on the input stream and waits for the pipeline's reply;
  `worker.bus.submit.StreamSubmitter`.
- `HeldExtremities`: optional, a room's extremities as this process's own input pipeline
  holds them, when it is the room's writer (wired in `worker.app`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker.core.events import Event, StateKey
from worker.messages.input import InputRoomEvent
from worker.messages.perform import PerformErrorCode
from worker.messages.reply import InputReply

# Which state to read: keys, with `*` as a wildcard state key; None for all of it.
StateFilter = Sequence[StateKey] | None


class StoredEvent(Protocol):
    """A stored event as the performs read it (the query reads' events serve)."""

    @property
    def event(self) -> Event: ...


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

    async def events(self, event_ids: Sequence[str]) -> Mapping[str, StoredEvent]:
        """The stored events among `event_ids`; unknown ones are absent."""
        ...

    async def extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities."""
        ...

    async def current_state(self, room_id: str, keys: StateFilter) -> dict[StateKey, str]:
        """The room's current state, filtered (`None`: all of it)."""
        ...


# The room's forward extremities as this process's input pipeline holds them after its last
# commit, or None when it cannot say (it does not consume the room's shard, or holds nothing
# of the room): then they are read from the database.
HeldExtremities = Callable[[str], Sequence[str] | None]


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
        self,
        room_id: str,
        room_version: str,
        pdu: dict[str, Any] | bytes,
        event_id: str,
        *,
        event: Event | None = None,
    ) -> Awaitable[InputReply]:
        """Publish the input; returns, once the stream holds it, an awaitable of the reply
        (raising `TimeoutError` like `submit`). `event`: the builder's view of `pdu`, which
        the pipeline of this process may take instead of validating the input again."""
        ...

    async def close(self) -> None:
        """Stop waiting for replies (the performs are stopping)."""
        ...


class PerformFailed(Exception):
    """A perform that cannot be done; `code` is a `PerformErrorCode`. For `forbidden`,
    `reason_code` and `reason` are the auth rule's."""

    def __init__(
        self, code: PerformErrorCode, message: str, *, reason_code: str = "", reason: str = ""
    ) -> None:
        super().__init__(message)
        self.code: PerformErrorCode = code
        self.message = message
        self.reason_code = reason_code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Unanswered:
    """A server that gave no usable answer: `reason` says why, for the perform's error."""

    destination: str
    reason: str


class InputPort(Protocol):
    """Puts inputs of one room on the input stream in order and returns the replies."""

    async def submit_inputs(
        self,
        room_id: str,
        inputs: Sequence[tuple[InputRoomEvent, str]],
        *,
        every_reply: bool = True,
    ) -> list[InputReply]:
        """The replies in order; `every_reply=False`: only the last input's."""
        ...

    async def close(self) -> None:
        """Stop waiting for replies (the performs are stopping)."""
        ...
