"""Writes given-up input messages to `<prefix>.deadletter` (DESIGN §4, §6).

A dead letter is the original message (subject as published, headers, body in base64) plus a
stable reason code and a sentence, so an operator can see why and republish it unchanged.
Its `Nats-Msg-Id` is the original's stream and sequence: if the input is redelivered after
being dead-lettered (the ack was lost), the second copy is dropped as a duplicate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError

from worker.bus.subjects import MSG_ID_HEADER, ROOM_ID_HEADER, Subjects
from worker.errors import RetryableError
from worker.messages.deadletter import DeadLetter, body_b64, encode_deadletter
from worker.observability.logging import get_logger
from worker.observability.metrics import DEAD_LETTERS

REASON_CODE_HEADER = "Reason-Code"
_log = get_logger(__name__)
# Room for the envelope's other fields when deciding whether the body still fits.
_ENVELOPE_SLACK = 64 * 1024


class DeadLetterWriter:
    def __init__(
        self, js: JetStreamContext, subjects: Subjects, *, max_payload: int | None = None
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._max_payload = max_payload

    async def write(
        self,
        *,
        subject: str,
        headers: Mapping[str, str] | None,
        body: bytes,
        reason_code: str,
        reason: str,
        delivery_count: int,
        stream: str = "",
        stream_sequence: int = 0,
    ) -> DeadLetter:
        """Publish one dead letter and wait for JetStream to store it.

        Raises `RetryableError` when it could not be stored; the caller must then not settle
        the original message as done.
        """
        kept = dict(headers or {})
        encoded_size = (len(body) + 2) // 3 * 4
        truncated = (
            self._max_payload is not None
            and encoded_size + _ENVELOPE_SLACK > self._max_payload
        )
        letter = DeadLetter(
            subject=subject,
            headers=kept,
            body="" if truncated else body_b64(body),
            body_size=len(body),
            body_truncated=truncated,
            reason_code=reason_code,
            reason=reason,
            delivery_count=delivery_count,
            time=dt.datetime.now(dt.UTC),
            stream=stream,
            stream_sequence=stream_sequence,
        )
        out_headers = {REASON_CODE_HEADER: reason_code}
        if ROOM_ID_HEADER in kept:
            out_headers[ROOM_ID_HEADER] = kept[ROOM_ID_HEADER]
        if stream and stream_sequence:
            out_headers[MSG_ID_HEADER] = f"{stream}:{stream_sequence}"
        try:
            await self._js.publish(
                self._subjects.deadletter,
                encode_deadletter(letter),
                stream=self._subjects.deadletter_stream,
                headers=out_headers,
            )
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise RetryableError(
                f"could not write dead letter ({reason_code}): {exc!r}", code="deadletter_failed"
            ) from exc
        DEAD_LETTERS.labels(reason_code).inc()
        _log.warning(
            "dead_lettered",
            reason_code=reason_code,
            reason=reason,
            subject=subject,
            delivery_count=delivery_count,
            stream_sequence=stream_sequence,
        )
        return letter


__all__ = ["REASON_CODE_HEADER", "DeadLetterWriter"]
