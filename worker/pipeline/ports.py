"""The ports of the input pipeline: what it needs from the store and the bus (STYLE R4).

These Protocols are owned by the pipeline; `worker.storage` and `worker.bus` implement them.
They speak string IDs and core `Event`s. State is passed around as an opaque `StateHandle`
made by the store (a snapshot reference plus a small delta), so that a linear room never
materialises its full state per event: the pipeline asks only for the entries it needs
(`lookup`), applies an event cheaply (`apply`), and materialises a whole state map only for
state resolution at forks (`materialize`).

The values exchanged with the store (`StoredEvent`, `EventWrite`, ...) live in
`worker.pipeline.model`, and each step's narrow port in the step's module (so that this
module can compose them without an import cycle); both are re-exported here for the
implementations' side.

Changes to the ports are additive: new methods or fields with defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from worker.core.events import StateKey
from worker.pipeline.dependencies import DependencyReads
from worker.pipeline.fetch_missing import FederationClient, GapFillStore, SoftFailReads
from worker.pipeline.invites import InviteReads
from worker.pipeline.latest import AdvanceStore
from worker.pipeline.model import EventWrite, OutputRecord, RoomInfo, StateHandle, StoredEvent
from worker.pipeline.redactions import RedactionReads
from worker.pipeline.state import StateBeforeStore
from worker.pipeline.validate import RoomVersions


class RoomStore(
    AdvanceStore,
    RedactionReads,
    StateBeforeStore,
    SoftFailReads,
    GapFillStore,
    DependencyReads,
    InviteReads,
    RoomVersions,
    Protocol,
):
    """The store as the pipeline sees it: every step's port, plus the writes of the
    pipeline itself. Every method is one round trip or none.

    Each step declares the narrow port it reads through (its module owns it, STYLE R4):
    `validate.RoomVersions`, `authstep.AuthStateReads` (also `aclstep`), `state.EventReads`,
    `state.ResolveStore` and `state.StateBeforeStore`, `latest.AdvanceStore`,
    `redactions.RedactionReads`, `dependencies.DependencyReads`, `invites.InviteReads`,
    `fetch_missing.GapFillStore` and `fetch_missing.SoftFailReads`. This is their union.

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

    def apply(self, state: StateHandle, entries: Mapping[StateKey, str]) -> StateHandle:
        """`state` with the given entries added or replaced; pure, no I/O."""
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
        """Writes this batch has committed so far (`flush`, `write_through`, `commit`)."""
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

    async def write_through(self) -> None:
        """Commit the held writes, and from now on write each one at once: for a reader
        outside the batch (the gap filler) that must find every event written so far."""
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


__all__ = [
    "BackgroundOutboxRelay",
    "BatchingStore",
    "EventWrite",
    "FederationClient",
    "OutboxRelay",
    "OutputRecord",
    "ReadAheadStore",
    "RoomInfo",
    "RoomStore",
    "StateHandle",
    "StoreBatch",
    "StoredEvent",
]
