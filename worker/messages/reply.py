"""The reply to a producer that asked for one (`Reply-Inbox` header), and the handler's result.

`HandleResult` is what the pipeline returns to the bus for every input; the bus turns it into
the message's fate (`worker.bus.settle`) and, when asked, into an `InputReply` on the wire.
Rejections are values here, never exceptions (STYLE R5): an infrastructure failure is raised as
`worker.errors.RetryableError` / `PermanentError` instead of being returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from worker.core.outcomes import Outcome

# The five outcomes of DESIGN §4, plus `failed`: the bus gave up on the input after transient
# failures (retry limit reached) or a permanent infrastructure error; the input was
# dead-lettered and nothing about the event was stored.
ReplyOutcome = Literal["accepted", "soft_failed", "rejected", "outlier", "invalid", "failed"]


class InputReply(msgspec.Struct, frozen=True, kw_only=True):
    """Published on the producer's `Reply-Inbox` once the input's fate is final."""

    # Empty when the message could not be decoded far enough to know the event.
    event_id: str
    outcome: ReplyOutcome
    # Stable and machine-readable (snake_case). Empty for `accepted` and `outlier`, except
    # `content_hash_mismatch`: the event was processed in its redacted form.
    reason_code: str = ""
    reason: str = ""
    # True when the event had already been processed: the outcome is the original one.
    duplicate: bool = False


_REPLY_OUTCOME: dict[Outcome, ReplyOutcome] = {
    Outcome.ACCEPTED: "accepted",
    Outcome.SOFT_FAILED: "soft_failed",
    Outcome.REJECTED: "rejected",
    Outcome.OUTLIER: "outlier",
    Outcome.INVALID: "invalid",
}


@dataclass(frozen=True, slots=True)
class HandleResult:
    """What the pipeline decided about one input (the fields of `InputReply`)."""

    event_id: str
    outcome: Outcome
    reason_code: str = ""
    reason: str = ""
    duplicate: bool = False

    def reply(self) -> InputReply:
        return InputReply(
            event_id=self.event_id,
            outcome=_REPLY_OUTCOME[self.outcome],
            reason_code=self.reason_code,
            reason=self.reason,
            duplicate=self.duplicate,
        )


REPLY_DECODER: msgspec.json.Decoder[InputReply] = msgspec.json.Decoder(InputReply)
_ENCODER = msgspec.json.Encoder()


def encode_reply(reply: InputReply) -> bytes:
    return _ENCODER.encode(reply)


def decode_reply(data: bytes) -> InputReply:
    return REPLY_DECODER.decode(data)


__all__ = [
    "REPLY_DECODER",
    "HandleResult",
    "InputReply",
    "ReplyOutcome",
    "decode_reply",
    "encode_reply",
]
