"""The one place that decides an input message's fate (STYLE R6, DESIGN §6).

| Situation                                   | Action            | Dead letter | Reply            |
|---------------------------------------------|-------------------|-------------|------------------|
| accepted / rejected / soft_failed / outlier | ack               | no          | the result       |
| invalid (the event breaks the format rules) | ack               | a copy      | the result       |
| retryable error, retries left               | retry here(delay) | no          | none (not final) |
| retryable error, retry limit reached        | term              | yes         | failed           |
| delivered more often than the limit         | term              | yes         | failed           |
| permanent error / invariant violation       | term              | yes         | failed           |
| undecodable (body, headers or subject)      | term              | yes         | invalid          |
| the dead letter could not be written        | nak(delay)        | no          | none             |
| worker shutting down, work not finished     | nak(0)            | no          | none             |
| long work, while queued or handled          | in_progress, periodically                          |

Names follow FastStream's `AckPolicy` vocabulary: ack, nak, term (reject), in_progress.
"Retry here" is no message action at all: the consumer keeps the message (its heartbeat
sends `in_progress`), waits `delay` with the room held and handles the message again as its
next delivery. A nak would let JetStream redeliver it after the room's later messages, which
would then be handled before an event they may depend on; other rooms go on meanwhile. Each
attempt counts as a delivery, so the retry limit and the dead letter still apply.

Nothing here does I/O: the consumer asks for a `Fate` and carries it out, in the order
dead letter → action → reply, so a reply always describes a settled message, and a message
is dead-lettered before it can disappear.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from worker.core.outcomes import Outcome
from worker.errors import InvariantViolation, PermanentError, RetryableError
from worker.messages.reply import HandleResult, InputReply


class AckAction(enum.Enum):
    ACK = "ack"
    NAK = "nak"
    TERM = "term"
    # Not settled yet: handled again in place after `Fate.delay` (see the module docstring).
    RETRY_HERE = "retry_here"


class Situation(enum.Enum):
    HANDLED = "handled"
    HANDLED_INVALID = "handled_invalid"
    RETRY = "retry"
    RETRIES_EXHAUSTED = "retries_exhausted"
    DELIVERY_LIMIT = "delivery_limit"
    PERMANENT_ERROR = "permanent_error"
    UNDECODABLE = "undecodable"
    DEADLETTER_FAILED = "deadletter_failed"
    SHUTDOWN = "shutdown"


# Situation -> (action, dead-letter it?, reply now?)
FATE_TABLE: dict[Situation, tuple[AckAction, bool, bool]] = {
    Situation.HANDLED: (AckAction.ACK, False, True),
    Situation.HANDLED_INVALID: (AckAction.ACK, True, True),
    Situation.RETRY: (AckAction.RETRY_HERE, False, False),
    Situation.RETRIES_EXHAUSTED: (AckAction.TERM, True, True),
    Situation.DELIVERY_LIMIT: (AckAction.TERM, True, True),
    Situation.PERMANENT_ERROR: (AckAction.TERM, True, True),
    Situation.UNDECODABLE: (AckAction.TERM, True, True),
    Situation.DEADLETTER_FAILED: (AckAction.NAK, False, False),
    Situation.SHUTDOWN: (AckAction.NAK, False, False),
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried.

    `max_deliveries` counts every delivery, the first included: with 6, a message is handled
    at most 6 times and dead-lettered on the 6th failure. The JetStream consumer's own
    `max_deliver` is set one higher, so a message whose handling never finishes (the worker
    crashes on it) is still seen once more and dead-lettered instead of silently stranded.
    """

    max_deliveries: int = 6
    base_delay: float = 2.0
    max_delay: float = 300.0

    def __post_init__(self) -> None:
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")

    def delay(self, delivery: int, suggested: float | None = None) -> float:
        """Seconds to wait before the next delivery after failed delivery number `delivery`."""
        if suggested is not None:
            return max(0.0, min(suggested, self.max_delay))
        return float(min(self.base_delay * 2 ** max(0, delivery - 1), self.max_delay))


@dataclass(frozen=True, slots=True)
class Fate:
    """What to do with one message; carried out by the consumer."""

    situation: Situation
    action: AckAction
    # Seconds before the next delivery, for NAK and RETRY_HERE.
    delay: float = 0.0
    dead_letter: bool = False
    reason_code: str = ""
    reason: str = ""
    reply: InputReply | None = None


def _fate(
    situation: Situation,
    *,
    delay: float = 0.0,
    reason_code: str = "",
    reason: str = "",
    reply: InputReply | None = None,
) -> Fate:
    action, dead_letter, replies = FATE_TABLE[situation]
    return Fate(
        situation=situation,
        action=action,
        delay=delay,
        dead_letter=dead_letter,
        reason_code=reason_code,
        reason=reason,
        reply=reply if replies else None,
    )


def _failed(event_id: str, code: str, reason: str) -> InputReply:
    return InputReply(event_id=event_id, outcome="failed", reason_code=code, reason=reason)


def of_result(result: HandleResult) -> Fate:
    """The handler finished: every outcome is final and acked; invalid ones are also kept."""
    situation = Situation.HANDLED_INVALID if result.outcome is Outcome.INVALID else Situation.HANDLED
    return _fate(
        situation,
        reason_code=result.reason_code,
        reason=result.reason,
        reply=result.reply(),
    )


def of_error(exc: Exception, *, event_id: str, delivery: int, policy: RetryPolicy) -> Fate:
    """The handler raised. Retryable errors are retried until the limit, the rest give up."""
    code = getattr(exc, "code", "") or "internal_error"
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, RetryableError):
        if delivery < policy.max_deliveries:
            return _fate(
                Situation.RETRY,
                delay=policy.delay(delivery, exc.delay),
                reason_code=code,
                reason=reason,
            )
        reason = f"gave up after {delivery} deliveries: {reason}"
        return _fate(
            Situation.RETRIES_EXHAUSTED,
            reason_code=code,
            reason=reason,
            reply=_failed(event_id, code, reason),
        )
    if not isinstance(exc, PermanentError):
        # An exception the pipeline did not classify is a bug: retrying the same input into
        # the same code cannot help, and acking it as done would hide it.
        exc = InvariantViolation(f"unexpected {type(exc).__name__}: {reason}")
        code, reason = exc.code, str(exc)
    return _fate(
        Situation.PERMANENT_ERROR,
        reason_code=code,
        reason=reason,
        reply=_failed(event_id, code, reason),
    )


def of_delivery_limit(*, event_id: str, delivery: int, policy: RetryPolicy) -> Fate:
    """Delivered more often than allowed without being settled (a crash or timeout loop)."""
    reason = (
        f"delivered {delivery} times without being settled (limit {policy.max_deliveries}); "
        "the worker may crash or stall on it"
    )
    return _fate(
        Situation.DELIVERY_LIMIT,
        reason_code="delivery_limit",
        reason=reason,
        reply=_failed(event_id, "delivery_limit", reason),
    )


def of_undecodable(*, event_id: str, reason_code: str, reason: str) -> Fate:
    """The message is not an `InputRoomEvent` we can route: keep it for a human, never retry."""
    reply = InputReply(event_id=event_id, outcome="invalid", reason_code=reason_code, reason=reason)
    return _fate(Situation.UNDECODABLE, reason_code=reason_code, reason=reason, reply=reply)


def of_deadletter_failure(*, delivery: int, policy: RetryPolicy) -> Fate:
    """The message was to be dead-lettered and the dead-letter stream did not take it: it is
    stored nowhere else yet, so JetStream keeps it and delivers it again after a back-off
    (where the same decision is made again). A nak rather than a retry here: the room's
    order no longer matters for a message that will not be handled."""
    return _fate(
        Situation.DEADLETTER_FAILED,
        delay=policy.delay(delivery),
        reason_code="deadletter_failed",
        reason="the dead-letter stream did not take the message",
    )


def of_shutdown() -> Fate:
    """Work not finished when the grace period ran out: hand it back at once, unacked."""
    return _fate(Situation.SHUTDOWN, reason_code="shutdown", reason="worker shutting down")


__all__ = [
    "FATE_TABLE",
    "AckAction",
    "Fate",
    "RetryPolicy",
    "Situation",
    "of_deadletter_failure",
    "of_delivery_limit",
    "of_error",
    "of_result",
    "of_shutdown",
    "of_undecodable",
]
