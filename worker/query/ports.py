"""What the query handlers need from storage: one narrow read-only port (STYLE R4).

Declared here, by its user; `worker.storage.query_reads.PostgresQueryReads` implements it over
PostgreSQL, and tests may implement it over memory. Everything speaks string IDs (NIDs never
leave the store, DESIGN §3). A state filter is a list of (type, state_key) pairs where the state
key `"*"` matches every state key of the type; `None` means "no filter, the whole state".

Every method is one database round trip or a few, never one per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from worker.core.events import Event, StateKey
from worker.core.versions import RoomRules

# The wildcard state key of a filter.
WILDCARD = "*"

StateFilter = Sequence[StateKey] | None


class QueryEvent:
    """A stored event as queries see it: its JSON, plus the few facts queries sort and filter
    on. The `Event` view is parsed from the JSON only when a handler asks for it, so answers
    that just relay thousands of events (a big room's members) never decode them."""

    __slots__ = (
        "_event",
        "depth",
        "event_id",
        "has_state",
        "json",
        "membership",
        "outcome",
        "redacted",
        "room_id",
        "rules",
    )

    def __init__(
        self,
        *,
        event_id: str,
        json: bytes,
        rules: RoomRules,
        room_id: str,
        depth: int,
        outcome: str,
        has_state: bool,
        redacted: bool = False,
        membership: str | None = None,
        event: Event | None = None,
    ) -> None:
        self.event_id = event_id
        # The PDU JSON to send (the stored form: redacted once a redaction applied), carrying
        # its `event_id` as outputs do.
        self.json = json
        self.rules = rules
        self.room_id = room_id
        self.depth = depth
        # "accepted" | "soft_failed" | "rejected" | "outlier" | "invalid" (`Outcome` values).
        self.outcome = outcome
        # A state snapshot before the event is stored, so state before/after it is known.
        self.has_state = has_state
        self.redacted = redacted
        # For m.room.member events: the membership; None for other types.
        self.membership = membership
        self._event = event

    @property
    def event(self) -> Event:
        if self._event is None:
            self._event = Event(msgspec.json.decode(self.json), self.event_id, self.rules)
        return self._event

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

    async def server_joined(self, room_id: str, server_name: str) -> bool:
        """True when a user of `server_name` is joined in the room's current state."""
        ...

    async def ever_joined(self, room_id: str, user_id: str) -> bool:
        """True when an accepted join of the user is in the room's history."""
        ...


@runtime_checkable
class OutlierMemberships(Protocol):
    """A store that knows memberships in rooms held only through an invite (input kind
    `invite`): `worker.storage.invites`."""

    async def outlier_membership(self, room_id: str, user_id: str) -> OutlierMembership | None:
        ...


class OutlierMembership(Protocol):
    @property
    def event_id(self) -> str: ...
    @property
    def membership(self) -> str: ...
