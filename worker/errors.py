"""Infrastructure errors: exceptions whose attributes tell the shell what to do (STYLE R5).

Rejections of events are not here: they are values (`worker.core.outcomes.Rejection`).

    RoomserverError
    ├── RetryableError        transient: database or NATS unavailable, federation timeout;
    │   │                     nak with `delay`, dead-letter after the retry limit
    │   └── MissingEventsError   prev/auth events could not be had yet
    └── PermanentError        retrying cannot help: term / dead-letter at once
        └── InvariantViolation   a bug or corrupt data; loud, never acked as done

    RequestRefused            a query or perform answered with an error code of the wire
                              contract (`worker.messages.errors`: `bad_request`,
                              `not_found`, ...); never retried

The `code` of a `RoomserverError` names the failure in logs, metrics and dead letters; it
never reaches an asker of the micro service, whose replies speak only `ErrorCode`s.
"""

from __future__ import annotations

from worker.messages.errors import ErrorCode


class RoomserverError(Exception):
    """Base of the worker's own infrastructure errors."""

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RetryableError(RoomserverError):
    """Try again later; `delay` is the suggested wait in seconds (None: the shell's back-off)."""

    code = "transient_failure"

    def __init__(self, message: str, *, delay: float | None = None, code: str | None = None):
        super().__init__(message, code=code)
        self.delay = delay


class MissingEventsError(RetryableError):
    code = "missing_events"

    def __init__(self, message: str, event_ids: list[str], *, delay: float | None = None):
        super().__init__(message, delay=delay)
        self.event_ids = event_ids


class PermanentError(RoomserverError):
    """Retrying cannot help."""

    code = "permanent_failure"


class InvariantViolation(PermanentError):
    """Something that must never happen did: a bug or corrupt stored data."""

    code = "invariant_violation"


class RequestRefused(Exception):
    """A request on the micro service that is answered with an error: `code` is one of
    `worker.messages.errors.ERROR_CODES`, `message` says why for the asker."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
