"""Output envelope published to `<prefix>.output.<room token>` (DESIGN §4).

The envelope is `{"type": T, T: payload}`: exactly one payload key, named like the type, as
Dendrite's consumers expect (reference §2.2). msgspec's tagged unions put the tag beside the
fields instead, so the envelope is a Struct with one optional field per type and a check that
the one named by `type` is the one present. All keys are snake_case, including those that
Dendrite leaves as Go field names. Events inside are the stored PDU, undecoded (`msgspec.Raw`).

Header `Output-Type` repeats `type` so consumers can filter before decoding.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from worker.messages.input import TransactionId

OutputType = Literal[
    "new_room_event",
    "old_room_event",
    "new_invite_event",
    "retire_invite_event",
    "redacted_event",
    "purge_room",
]
OUTPUT_TYPES: tuple[OutputType, ...] = (
    "new_room_event",
    "old_room_event",
    "new_invite_event",
    "retire_invite_event",
    "redacted_event",
    "purge_room",
)


class NewRoomEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An accepted `new` event and how it changed the room's current state."""

    event: msgspec.Raw
    # Forward extremities after this event.
    latest_event_ids: tuple[str, ...] = ()
    # Event IDs that entered / left current state (a replaced entry appears in both).
    adds_state_event_ids: tuple[str, ...] = ()
    removes_state_event_ids: tuple[str, ...] = ()
    # State before the event relative to current state after it, to apply after the above:
    # lets consumers know who was in the room *at* the event (federation sender).
    state_before_adds_event_ids: tuple[str, ...] = ()
    state_before_removes_event_ids: tuple[str, ...] = ()
    # The input carried full state: consumers drop theirs; `adds_state_event_ids` is it all.
    rewrites_state: bool = False
    # Federate the event as this server; empty means do not federate.
    send_as_server: str = ""
    transaction_id: TransactionId | None = None
    # History visibility in force before the event.
    history_visibility: str = "shared"


class OldRoomEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An accepted `old` (backfilled) event; never changes current state downstream."""

    event: msgspec.Raw
    history_visibility: str = "shared"


class NewInviteEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An invite member event (possibly for a room this server is not in)."""

    room_version: str
    event: msgspec.Raw


class RetireInviteEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An invite stopped being pending: the target joined, left, was banned or declined."""

    event_id: str
    room_id: str
    target_user_id: str
    # Empty when no event retired it (a locally declined remote invite).
    retired_by_event_id: str = ""
    membership: str = ""


class RedactedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A redaction was validated against its target: consumers redact their copy."""

    redacted_event_id: str
    redacted_because: msgspec.Raw


class PurgeRoom(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str


class OutputEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The envelope: `type` names the one payload field that is set."""

    type: OutputType
    new_room_event: NewRoomEvent | None = None
    old_room_event: OldRoomEvent | None = None
    new_invite_event: NewInviteEvent | None = None
    retire_invite_event: RetireInviteEvent | None = None
    redacted_event: RedactedEvent | None = None
    purge_room: PurgeRoom | None = None

    def __post_init__(self) -> None:
        present = [t for t in OUTPUT_TYPES if getattr(self, t) is not None]
        if present != [self.type]:
            raise ValueError(f"output of type {self.type!r} must carry exactly that payload, has {present}")

    @property
    def payload(
        self,
    ) -> NewRoomEvent | OldRoomEvent | NewInviteEvent | RetireInviteEvent | RedactedEvent | PurgeRoom:
        value = getattr(self, self.type)
        assert value is not None  # guaranteed by __post_init__
        return value  # type: ignore[no-any-return]


Payload = NewRoomEvent | OldRoomEvent | NewInviteEvent | RetireInviteEvent | RedactedEvent | PurgeRoom
_TYPE_OF: dict[type[msgspec.Struct], OutputType] = {
    NewRoomEvent: "new_room_event",
    OldRoomEvent: "old_room_event",
    NewInviteEvent: "new_invite_event",
    RetireInviteEvent: "retire_invite_event",
    RedactedEvent: "redacted_event",
    PurgeRoom: "purge_room",
}


def wrap(payload: Payload) -> OutputEvent:
    """The envelope for a payload: `wrap(NewRoomEvent(...))`."""
    t = _TYPE_OF[type(payload)]
    return OutputEvent(type=t, **{t: payload})  # type: ignore[arg-type]


OUTPUT_DECODER: msgspec.json.Decoder[OutputEvent] = msgspec.json.Decoder(OutputEvent)
_ENCODER = msgspec.json.Encoder()


def encode_output(output: OutputEvent | Payload) -> bytes:
    """Encode an envelope (a bare payload is wrapped first)."""
    if not isinstance(output, OutputEvent):
        output = wrap(output)
    return _ENCODER.encode(output)


def decode_output(data: bytes) -> OutputEvent:
    return OUTPUT_DECODER.decode(data)


__all__ = [
    "OUTPUT_DECODER",
    "OUTPUT_TYPES",
    "NewInviteEvent",
    "NewRoomEvent",
    "OldRoomEvent",
    "OutputEvent",
    "OutputType",
    "Payload",
    "PurgeRoom",
    "RedactedEvent",
    "RetireInviteEvent",
    "decode_output",
    "encode_output",
    "wrap",
]
