"""What the homeserver queries need from storage: one narrow read-only port (STYLE R4).

Declared here, by its user (`worker.query.homeserver`); implemented over PostgreSQL by
`worker.storage.homeserver_reads.PostgresHomeserverReads`, and over memory by the tests.
Everything speaks string IDs. Each method is a few round trips at most, whatever the size of
the room or the number of the user's rooms: they read the membership index the pipeline keeps
in the event's transaction, and only the state entries asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from worker.core.events import StateKey

# The wildcard state key of a filter: every state key of the type.
WILDCARD = "*"


class _Stripped(msgspec.Struct):
    """The fields of a stored PDU the homeserver queries read; the rest is skipped."""

    content: msgspec.Raw = msgspec.Raw(b"{}")
    sender: Any = ""
    origin_server_ts: Any = 0


_STRIPPED = msgspec.json.Decoder(_Stripped)
_CONTENT = msgspec.json.Decoder(dict[str, Any])


class StateEntry:
    """One entry of a room's current state: the event's ID and its stored (maybe redacted)
    PDU JSON; the few fields the queries read are decoded once, on first use (a store may
    hand out the same entry to many answers)."""

    __slots__ = ("_stripped", "event_id", "json")

    def __init__(self, event_id: str, json: bytes) -> None:
        self.event_id = event_id
        self.json = json
        self._stripped: _Stripped | None = None

    def _fields(self) -> _Stripped:
        if self._stripped is None:
            try:
                self._stripped = _STRIPPED.decode(self.json)
            except msgspec.DecodeError:
                self._stripped = _Stripped()
        return self._stripped

    @property
    def raw_content(self) -> msgspec.Raw:
        """The `content` as the stored JSON has it, never re-encoded."""
        return self._fields().content

    @property
    def content(self) -> dict[str, Any]:
        try:
            return _CONTENT.decode(self.raw_content)
        except msgspec.DecodeError:
            return {}

    @property
    def sender(self) -> str:
        sender = self._fields().sender
        return sender if isinstance(sender, str) else ""

    @property
    def origin_server_ts(self) -> int:
        ts = self._fields().origin_server_ts
        return ts if isinstance(ts, int) and not isinstance(ts, bool) else 0


@dataclass(frozen=True, slots=True)
class RoomState:
    """A known room: its version, and the current state entries asked for."""

    version: str
    entries: dict[StateKey, StateEntry]


class HomeserverStore(Protocol):
    async def current_state(
        self, room_ids: Sequence[str], keys: Sequence[StateKey]
    ) -> dict[str, RoomState]:
        """The known rooms among `room_ids` with their current state at `keys` (a `"*"`
        state key: every key of the type); unknown rooms are absent."""
        ...

    async def rooms_of_user(self, user_id: str, membership: str) -> list[str]:
        """Rooms where the user's membership in the current state is `membership`."""
        ...

    async def shared_users(self, user_id: str, others: Sequence[str]) -> dict[str, int]:
        """For each user of `others` (empty: every user) joined to a room the user is joined
        to: in how many such rooms."""
        ...

    async def known_users(self, user_id: str, search: str, limit: int) -> list[str]:
        """Up to `limit` users joined to a room the user is joined to, other than the user,
        whose ID contains `search` (any case), sorted."""
        ...

    async def joined_counts(self, room_ids: Sequence[str]) -> dict[str, int]:
        """Joined members of each known room."""
        ...

    async def joined_users_of_server(self, room_id: str, server_name: str) -> list[str]:
        """Joined members of the room whose user ID is on `server_name`, sorted."""
        ...

    async def memberships_in(self, room_id: str, user_ids: Sequence[str]) -> dict[str, str]:
        """The current membership of each of `user_ids` in the room (absent: none)."""
        ...

    async def memberships_of(self, user_id: str, room_ids: Sequence[str]) -> dict[str, str]:
        """The user's current membership in each of `room_ids` (absent: none)."""
        ...


@dataclass(frozen=True, slots=True)
class Homeserver:
    """What the homeserver handlers work with: the store, and this server's name
    (`SERVER_NAME`: whose users are "local")."""

    store: HomeserverStore
    server_name: str
