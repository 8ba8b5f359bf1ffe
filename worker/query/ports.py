"""What the query handlers need from storage: one narrow read-only port (STYLE R4).

Declared here, by its user; `worker.storage.query_reads.PostgresQueryReads` implements it over
PostgreSQL, and tests may implement it over memory. Everything speaks string IDs (NIDs never
leave the store, DESIGN §3). A state filter is a list of (type, state_key) pairs where the state
key `"*"` matches every state key of the type; `None` means "no filter, the whole state".

Every method is one database round trip or a few, never one per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.core.events import Event, StateKey

# The wildcard state key of a filter.
WILDCARD = "*"

StateFilter = Sequence[StateKey] | None


@dataclass(frozen=True, slots=True)
class QueryEvent:
    """A stored event as queries see it."""

    event: Event
    # The PDU JSON to send (the stored form: redacted when a redaction was applied).
    json: bytes
    # "accepted" | "soft_failed" | "rejected" | "outlier" | "invalid" (`Outcome` values).
    outcome: str
    # A state snapshot before the event is stored, so state before/after it can be answered.
    has_state: bool
    redacted: bool = False

    @property
    def rejected(self) -> bool:
        """Rejected events never enter state; state resolution must know them."""
        return self.outcome in ("rejected", "invalid")


class QueryStore(Protocol):
    async def room_version(self, room_id: str) -> str | None:
        """The room's version, or None for a room the roomserver does not know."""
        ...

    async def events(self, event_ids: Sequence[str]) -> dict[str, QueryEvent]:
        """The stored events among `event_ids`; unknown ones are absent."""
        ...

    async def extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities."""
        ...

    async def current_state(self, room_id: str, keys: StateFilter) -> dict[StateKey, str]:
        """The room's current state, filtered; empty for a room without state."""
        ...

    async def state_after(
        self, event_ids: Sequence[str], keys: StateFilter
    ) -> dict[str, dict[StateKey, str]]:
        """State after each event that has state, filtered; events without state are absent.

        The state after an event is the state before it plus the event itself when it is an
        accepted state event.
        """
        ...

    async def state_before(
        self, event_ids: Sequence[str], keys: StateFilter
    ) -> dict[str, dict[StateKey, str]]:
        """State before each event that has state, filtered; events without state are absent."""
        ...

    async def auth_chain(self, event_ids: Sequence[str]) -> set[str]:
        """Every stored event reachable from `event_ids` through auth_events (not the events
        themselves, unless one is in the chain of another)."""
        ...

    async def ever_joined(self, room_id: str, user_id: str) -> bool:
        """True when an accepted join of the user is in the room's history."""
        ...
