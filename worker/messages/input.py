"""`InputRoomEvent`: what producers publish to `<prefix>.input.<room token>` (DESIGN §4).

Wire types are frozen, keyword-only msgspec Structs (STYLE R7). The PDU stays `msgspec.Raw`:
the consumer decodes the envelope once and the pipeline reads the event through its own view,
so the bytes it hashes are exactly the bytes that were sent. Changes are additive: a new field
always has a default, an existing field never changes type.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# `new` extends the DAG forwards, `outlier` is auth material only, `old` fills history.
# `invite`: a membership event of one of our users in a room this server is not in (an
# invite from another server, or the leave that rejected one): stored as an outlier without
# the room's auth events, which we do not have, and announced as `new_invite_event` /
# `retire_invite_event`.
InputKind = Literal["new", "outlier", "old", "invite"]


class TransactionId(msgspec.Struct, frozen=True, kw_only=True):
    """A local client's transaction, echoed on the output so sync can match its /send."""

    session_id: int
    id: str


class InputRoomEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event for the roomserver to check, store and announce."""

    kind: InputKind
    # The PDU as received, undecoded.
    event: msgspec.Raw
    # Required only when the room is not known yet (its create event names the version).
    room_version: str | None = None
    # The server that gave us the event; asked first when gaps must be filled.
    origin: str = ""
    # The authoritative state before the event (a federated join); every ID already stored.
    state_event_ids: tuple[str, ...] | None = None
    # The server name to federate the event as; empty means do not federate.
    send_as_server: str = ""
    transaction_id: TransactionId | None = None


# Built once (STYLE R7, msgspec perf tips): decoders cache their type's validation plan.
INPUT_DECODER: msgspec.json.Decoder[InputRoomEvent] = msgspec.json.Decoder(InputRoomEvent)
_ENCODER = msgspec.json.Encoder()


def decode_input(data: bytes) -> InputRoomEvent:
    """Decode a message body; raises `msgspec.DecodeError` (incl. ValidationError) if it is not one."""
    return INPUT_DECODER.decode(data)


def encode_input(message: InputRoomEvent) -> bytes:
    return _ENCODER.encode(message)


__all__ = [
    "INPUT_DECODER",
    "InputKind",
    "InputRoomEvent",
    "TransactionId",
    "decode_input",
    "encode_input",
]
