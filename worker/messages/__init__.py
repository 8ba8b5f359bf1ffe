"""Wire types of the roomserver's NATS contract (DESIGN §4): the source of `schemas/messages/`.

Every Struct is frozen and keyword-only; changes are additive (new fields get defaults).
Any layer above the core may import it (pipeline, query, the adapters, the app); it imports
only the pure core (an import-linter contract).
"""

from worker.messages.deadletter import (
    DEADLETTER_DECODER,
    DeadLetter,
    body_b64,
    decode_deadletter,
    encode_deadletter,
)
from worker.messages.input import (
    INPUT_DECODER,
    InputKind,
    InputRoomEvent,
    TransactionId,
    decode_input,
    encode_input,
)
from worker.messages.output import (
    OUTPUT_DECODER,
    OUTPUT_TYPES,
    NewInviteEvent,
    NewRoomEvent,
    OldRoomEvent,
    OutputEvent,
    OutputType,
    Payload,
    PurgeRoom,
    RedactedEvent,
    RetireInviteEvent,
    decode_output,
    encode_output,
    wrap,
)
from worker.messages.reply import (
    REPLY_DECODER,
    HandleResult,
    InputReply,
    ReplyOutcome,
    decode_reply,
    encode_reply,
)

__all__ = [
    "DEADLETTER_DECODER",
    "INPUT_DECODER",
    "OUTPUT_DECODER",
    "OUTPUT_TYPES",
    "REPLY_DECODER",
    "DeadLetter",
    "HandleResult",
    "InputKind",
    "InputReply",
    "InputRoomEvent",
    "NewInviteEvent",
    "NewRoomEvent",
    "OldRoomEvent",
    "OutputEvent",
    "OutputType",
    "Payload",
    "PurgeRoom",
    "RedactedEvent",
    "ReplyOutcome",
    "RetireInviteEvent",
    "TransactionId",
    "body_b64",
    "decode_deadletter",
    "decode_input",
    "decode_output",
    "decode_reply",
    "encode_deadletter",
    "encode_input",
    "encode_output",
    "encode_reply",
    "wrap",
]
