"""How the pipeline writes events out: as stored, and as carried in outputs."""

from __future__ import annotations

import msgspec

from worker.core.canonical import encode_canonical
from worker.core.events import Event

_encoder = msgspec.json.Encoder()


def stored_json(event: Event) -> bytes:
    """The PDU as stored: canonical JSON of the PDU as received (no ID added)."""
    return event.canonical if event.canonical is not None else encode_canonical(event.pdu)


def event_raw(event: Event) -> msgspec.Raw:
    """The event as outputs carry it: the PDU plus its `event_id`.

    From room version 3 the ID is not part of the PDU (it is the reference hash); consumers
    should not have to hash events to know their IDs, so outputs always include it.
    The canonical JSON that validation encoded is reused (with the ID spliced in first)
    rather than the PDU encoded again.
    """
    pdu = event.pdu
    canonical = event.canonical
    if pdu.get("event_id") == event.event_id:
        return msgspec.Raw(canonical if canonical is not None else _encoder.encode(pdu))
    if canonical is None or "event_id" in pdu or len(canonical) < 3:
        return msgspec.Raw(_encoder.encode({**pdu, "event_id": event.event_id}))
    return msgspec.Raw(b'{"event_id":' + _encoder.encode(event.event_id) + b"," + canonical[1:])
