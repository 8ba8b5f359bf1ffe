"""The values that flow between the pipeline's steps, and between them and the store.

`Result` is what the bus settles and replies with. `Work` is the event being processed plus
what the earlier steps learned about it. `StoredEvent`, `StateHandle` and `EventWrite` are
what the steps read from and write to the store through their ports (`worker.pipeline.ports`
re-exports them, for the store's side).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.core.events import Event
from worker.core.outcomes import Outcome, Rejection
from worker.core.versions import RoomRules
from worker.messages import HandleResult, InputRoomEvent

KINDS = ("new", "outlier", "old", "invite")


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room_id: str
    version: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event the store already holds, with what was decided about it."""

    event: Event
    outcome: Outcome
    reason_code: str
    reason: str
    kind: str  # "new" | "outlier" | "old"
    # A snapshot of the state before this event is stored (false for outliers and for events
    # whose prev state was unknown); only then can `state_after` answer for it.
    has_state: bool
    redacted: bool = False


class StateHandle(Protocol):
    """Opaque to the pipeline: made and read only by the store."""


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One output to publish, written to the outbox in the event's transaction.

    `output_id` is stable (derived from the event and the output type), so that re-running the
    same input produces the same id and JetStream's duplicate window drops the repeat.
    """

    output_id: str
    output_type: str
    payload: bytes  # the encoded output envelope (worker.messages)


@dataclass(frozen=True, slots=True)
class EventWrite:
    """Everything one input event changes, persisted in one transaction."""

    room_id: str
    room_version: str
    event: Event
    event_json: bytes  # the PDU as stored (canonical JSON)
    kind: str  # "new" | "outlier" | "old"
    outcome: Outcome
    reason_code: str = ""
    reason: str = ""
    # The state before the event; None for outliers and for events refused before state.
    state_before: StateHandle | None = None
    # New forward extremities of the room; None leaves them unchanged.
    extremities: Sequence[str] | None = None
    # New current state of the room; None leaves it unchanged.
    current_state: StateHandle | None = None
    # The forward extremities that `extremities` and `current_state` (or a soft-fail, which
    # read the current state) were computed from: a fenced store (several workers) refuses
    # the write when the room no longer has them.
    extremities_seen: Sequence[str] | None = None
    # (redaction event ID, target event ID) pairs to apply now: the target's stored JSON is
    # rewritten to its redacted form, permanently.
    redactions: Sequence[tuple[str, str]] = ()
    outputs: Sequence[OutputRecord] = ()
    # Room-level facts for the inspector and the state-reset detector.
    notes: Mapping[str, str] = field(default_factory=dict)


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
