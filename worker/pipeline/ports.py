"""The ports of the input pipeline: what it needs from the store and the bus (STYLE R4).

These Protocols are owned by the pipeline; `worker.storage` and `worker.bus` implement them.
They speak string IDs and core `Event`s. State is passed around as an opaque `StateHandle`
made by the store (a snapshot reference plus a small delta), so that a linear room never
materialises its full state per event: the pipeline asks only for the entries it needs
(`lookup`), applies an event cheaply (`apply`), and materialises a whole state map only for
state resolution at forks (`materialize`).

Changes to this file are additive: new methods or fields with defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome


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


class RoomStore(Protocol):
    """The store as the pipeline sees it. Every method is one round trip or none.

    Access pattern, for caching (note from the pipeline): per `new` event in a linear room
    the pipeline calls `events([event, *prev_events, *auth_events])`, then
    `state_after(prev_events)` for the same prevs, then `lookup(state_before, auth keys)`,
    `extremities`, `pending_redactions([event])` and `persist`. The prev event is nearly
    always the event persisted just before in the same room, and the auth events are the
    room's hot state; a store that keeps recently persisted/read `StoredEvent`s (and their
    before-snapshot) in memory answers all but `persist` without a round trip; these reads
    are most of an event's time besides `persist` (`bench/pipeline.py` prints the time per
    stage).
    """

    async def room(self, room_id: str) -> RoomInfo | None: ...

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The known events among `event_ids` (unknown ones are absent)."""
        ...

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        """State after each event that has state (`StoredEvent.has_state`); others absent.

        The state after an event is the state before it, plus the event itself when it is an
        accepted state event (rejected and soft-failed events never enter state).
        """
        ...

    async def state_from_ids(self, room_id: str, event_ids: Sequence[str]) -> StateHandle:
        """A state made of exactly these (stored) state events: a federated join's state."""
        ...

    async def current_state(self, room_id: str) -> StateHandle | None: ...

    async def extremities(self, room_id: str) -> list[str]: ...

    async def lookup(self, state: StateHandle, keys: Sequence[StateKey]) -> dict[StateKey, Event]:
        """The events at the given keys of `state` (absent keys are absent)."""
        ...

    async def materialize(self, state: StateHandle) -> dict[StateKey, str]:
        """The whole state as (type, state_key) -> event ID (for state resolution)."""
        ...

    def apply(self, state: StateHandle, entries: Mapping[StateKey, str]) -> StateHandle:
        """`state` with the given entries added or replaced; pure, no I/O."""
        ...

    async def handle_from_map(self, room_id: str, state: Mapping[StateKey, str]) -> StateHandle:
        """A handle for a state given in full (a resolution's result)."""
        ...

    async def diff(
        self, old: StateHandle | None, new: StateHandle
    ) -> tuple[list[str], list[str]]:
        """(event IDs in `new` not in `old`, event IDs in `old` not in `new`), each sorted."""
        ...

    async def pending_redactions(self, target_ids: Sequence[str]) -> dict[str, list[str]]:
        """For each target, the IDs of stored accepted redactions of it not yet applied."""
        ...

    async def persist(self, write: EventWrite) -> None:
        """One transaction, under the room's advisory lock (DESIGN §2 step 8)."""
        ...


@runtime_checkable
class ReadAheadStore(RoomStore, Protocol):
    """A store that answers the pipeline's first two reads of an event in one round trip."""

    async def events_and_redactions(
        self, event_ids: Sequence[str], target_ids: Sequence[str]
    ) -> tuple[dict[str, StoredEvent], dict[str, list[str]]]:
        """(`events(event_ids)`, `pending_redactions(target_ids)`)."""
        ...


@runtime_checkable
class StoreBatch(ReadAheadStore, Protocol):
    """One room's writes held in memory and committed together (DESIGN §2 step 8: a
    transaction may carry several events of one room, in order).

    Reads answer as if every held write were committed. Where it cannot answer exactly
    from memory, the batch commits what it holds first. If anything fails before `commit`
    returns, nothing held is stored: the caller handles the events again one by one.
    """

    @property
    def held(self) -> int:
        """Writes held, not yet committed."""
        ...

    @property
    def committed(self) -> int:
        """Writes this batch has committed so far (`flush`, `immediate`, `commit`)."""
        ...

    async def prefetch(
        self,
        event_ids: Sequence[str],
        target_ids: Sequence[str],
        keys: Sequence[StateKey] = (),
    ) -> None:
        """Read ahead, in one round trip, the stored events and waiting redactions the
        batch's events will ask for, and prepare for looking up the state `keys`."""
        ...

    async def flush(self) -> None:
        """Commit the held writes now."""
        ...

    async def immediate(self) -> None:
        """Commit the held writes, and write every later one at once."""
        ...

    async def commit(self) -> None:
        """Commit the held writes: the end of the batch."""
        ...


@runtime_checkable
class BatchingStore(RoomStore, Protocol):
    """A store that can hold a room's writes and commit them in one transaction."""

    def batch(self, room_id: str) -> StoreBatch: ...


class OutboxRelay(Protocol):
    """Publishes committed outbox rows to the output stream (DESIGN §2 step 9)."""

    async def flush(self, room_id: str) -> None:
        """Return once every outbox row of the room committed so far is published."""
        ...


@runtime_checkable
class BackgroundOutboxRelay(OutboxRelay, Protocol):
    """A relay that publishes rooms' rows in the background, many rooms at once."""

    def kick(self, room_id: str) -> None:
        """Publish the room's rows committed so far, soon, in order."""
        ...

    @property
    def pending(self) -> int:
        """Rooms kicked and not yet published."""
        ...

    async def settle(self) -> None:
        """Until every room kicked so far is published, or failed (then its rows are left
        for a later kick or the relay's sweep)."""
        ...


class FederationClient(Protocol):
    """Gap filling (DESIGN §2 step 4): asks the federation service for events we lack.

    Implemented over NATS request/reply (`worker.federation`); the pipeline calls it only when
    one is configured, and otherwise refuses inputs with missing prev or auth events. Each
    method returns PDUs as JSON objects (as received, not yet checked); an empty list means
    "could not be had". Transient trouble is raised as `worker.errors.RetryableError`.
    """

    async def event_auth(self, room_id: str, event_id: str) -> list[Mapping[str, object]]:
        """The auth chain of `event_id` (federation `/event_auth`), in any order."""
        ...

    async def missing_events(
        self, room_id: str, earliest: Sequence[str], latest: Sequence[str], limit: int
    ) -> list[Mapping[str, object]]:
        """Events between `earliest` and `latest` (federation `/get_missing_events`)."""
        ...

    # The state before an event, and single events (`worker.pipeline.fetch_missing`).

    async def state_ids(self, room_id: str, event_id: str) -> tuple[list[str], list[str]]:
        """(state event IDs, auth chain IDs) before `event_id` (federation `/state_ids`);
        both empty when it could not be had."""
        ...

    async def state(
        self, room_id: str, event_id: str
    ) -> tuple[list[Mapping[str, object]], list[Mapping[str, object]]]:
        """(state PDUs, auth chain PDUs) before `event_id` (federation `/state`)."""
        ...

    async def event(self, room_id: str, event_id: str) -> Mapping[str, object] | None:
        """One event by ID (federation `/event`); None when it could not be had."""
        ...
