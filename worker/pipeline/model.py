"""The values that flow between the pipeline's steps.

`Result` is what the bus settles and replies with. `Work` is the event being processed plus
what the earlier steps learned about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.core.events import Event
from worker.core.outcomes import Outcome, Rejection
from worker.core.versions import RoomRules
from worker.messages import HandleResult, InputRoomEvent
from worker.pipeline.ports import StateHandle, StoredEvent

KINDS = ("new", "outlier", "old", "invite")


# The pipeline answers with the bus's own result type: it carries exactly the reply's fields.
Result = HandleResult


def refused(event_id: str, outcome: Outcome, rejection: Rejection) -> Result:
    """The result of an input refused with `rejection`."""
    return Result(event_id, outcome, rejection.code, rejection.reason)


@dataclass(slots=True)
class Work:
    """One event on its way through the steps; later steps fill the optional fields."""

    room_id: str
    inp: InputRoomEvent
    event: Event
    pdu: Mapping[str, Any]
    rules: RoomRules
    # False while the room has no row yet (its create event is being processed).
    room_known: bool
    # Stored prev and auth events, filled by the missing-events step.
    known: dict[str, StoredEvent] = field(default_factory=dict)
    state_before: StateHandle | None = None
    # Entries of the state before the event read so far (auth types, history visibility).
    before_entries: dict[tuple[str, str], Event] = field(default_factory=dict)
    # The stored events named by `state_event_ids`, once loaded (a federated join).
    given_state: dict[str, StoredEvent] | None = None
    # The room's forward extremities before this event (`kind=new` only), once read.
    extremities: list[str] | None = None
    # Read ahead, together with the event's dependencies (see `Pipeline._read_ahead`):
    # the state after each prev event, and the stored redactions waiting for this event.
    after_prevs: dict[str, StateHandle] | None = None
    pending_redactions: dict[str, list[str]] | None = None
    # Said in the reply (and stored) when nothing refuses the event: how it was processed
    # differently from what was sent (in its redacted form, for a content hash mismatch).
    note: Rejection | None = None

    @property
    def kind(self) -> str:
        return self.inp.kind

    @property
    def event_id(self) -> str:
        return self.event.event_id
