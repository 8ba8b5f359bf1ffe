"""The outbox rows of one event, with stable output IDs.

An output ID is `<event ID>:<output type>` (plus the invite it retires, for
`retire_invite_event`; the redaction's ID names a `redacted_event`), so processing the same
input again produces the same IDs and JetStream's duplicate window drops the repeats.
Order within an event follows Dendrite: invite outputs, then the event, then redactions.
"""

from __future__ import annotations

from worker.core.events import Event
from worker.messages import (
    NewInviteEvent,
    NewRoomEvent,
    OldRoomEvent,
    Payload,
    RedactedEvent,
    RetireInviteEvent,
    encode_output,
    wrap,
)
from worker.pipeline.events import event_raw
from worker.pipeline.latest import Advance
from worker.pipeline.model import OutputRecord, Work

HISTORY_KEY = ("m.room.history_visibility", "")


def record(owner_id: str, payload: Payload, suffix: str = "") -> OutputRecord:
    envelope = wrap(payload)
    output_id = f"{owner_id}:{envelope.type}" + (f":{suffix}" if suffix else "")
    return OutputRecord(output_id, envelope.type, encode_output(envelope))


def history_visibility(work: Work) -> str:
    """The history visibility in force before the event (spec default `shared`)."""
    event = work.before_entries.get(HISTORY_KEY)
    value = event.content.get("history_visibility") if event is not None else None
    return value if isinstance(value, str) else "shared"


def new_room_event(work: Work, adv: Advance) -> NewRoomEvent:
    tid = work.inp.transaction_id
    return NewRoomEvent(
        event=event_raw(work.event),
        latest_event_ids=tuple(adv.extremities),
        adds_state_event_ids=tuple(adv.adds),
        removes_state_event_ids=tuple(adv.removes),
        state_before_adds_event_ids=tuple(adv.before_adds),
        state_before_removes_event_ids=tuple(adv.before_removes),
        rewrites_state=work.inp.state_event_ids is not None,
        send_as_server=work.inp.send_as_server,
        transaction_id=tid,
        history_visibility=history_visibility(work),
    )


def old_room_event(work: Work) -> OldRoomEvent:
    return OldRoomEvent(event=event_raw(work.event), history_visibility=history_visibility(work))


def records(
    event: Event,
    invites: list[NewInviteEvent | RetireInviteEvent],
    main: NewRoomEvent | OldRoomEvent | None,
    redacted: list[tuple[str, RedactedEvent]],
) -> list[OutputRecord]:
    """`redacted` pairs each `redacted_event` with its redaction's ID: the output is named by
    the redaction whichever of the pair arrived last, so both paths give the same ID."""
    out: list[OutputRecord] = []
    for inv in invites:
        suffix = inv.event_id if isinstance(inv, RetireInviteEvent) else ""
        out.append(record(event.event_id, inv, suffix))
    if main is not None:
        out.append(record(event.event_id, main))
    for redaction_id, red in redacted:
        out.append(record(redaction_id, red, red.redacted_event_id))
    return out
