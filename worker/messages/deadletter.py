"""`DeadLetter`: what lands on `<prefix>.deadletter` (DESIGN §4, §6).

The original message is kept whole (subject, headers, body as base64, since it may not even be
UTF-8) with a stable reason code and a sentence, so an operator can read why and republish it.
"""

from __future__ import annotations

import base64
import datetime as dt

import msgspec


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    # Where the message was published, e.g. `roomserver.input.<room token>`.
    subject: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # The original body, standard base64 with padding.
    body: str = ""
    # Size of the original body in bytes; `body_truncated` when it was too large to keep
    # within the server's maximum payload (`body` is then empty).
    body_size: int = 0
    body_truncated: bool = False
    # Stable, snake_case (e.g. `undecodable`, `invalid_event`, `retries_exhausted`).
    reason_code: str
    reason: str = ""
    # How many times JetStream had delivered the message when it was given up.
    delivery_count: int = 0
    time: dt.datetime
    # Where the original sat: the stream and its sequence there (0 when unknown).
    stream: str = ""
    stream_sequence: int = 0

    def original_body(self) -> bytes:
        return base64.b64decode(self.body)


def body_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


DEADLETTER_DECODER: msgspec.json.Decoder[DeadLetter] = msgspec.json.Decoder(DeadLetter)
_ENCODER = msgspec.json.Encoder()


def encode_deadletter(letter: DeadLetter) -> bytes:
    return _ENCODER.encode(letter)


def decode_deadletter(data: bytes) -> DeadLetter:
    return DEADLETTER_DECODER.decode(data)


__all__ = [
    "DEADLETTER_DECODER",
    "DeadLetter",
    "body_b64",
    "decode_deadletter",
    "encode_deadletter",
]
