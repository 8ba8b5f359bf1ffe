"""Requests and responses of the admin performs that purge (DESIGN §3 "Lifecycle", §4 Perform
API): `roomserver.perform.purge_room` and `roomserver.perform.purge_history` on the micro
service `roomserver`.

Errors are replied like a query's (`worker.messages.query.QueryError`): `unknown_room`,
`unknown_event` (the `before_event_id` is not in the room), `bad_request` (a body that does
not decode, or not exactly one of `before_ts` / `before_event_id`).

Changes are additive (STYLE R7): new fields get defaults, existing ones never change.
"""

from __future__ import annotations

import msgspec


class PurgeRoomRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str


class PurgeRoomResponse(msgspec.Struct, frozen=True, kw_only=True):
    """What was deleted, per table: rows, and their bytes (space VACUUM can reuse)."""

    room_id: str
    removed: dict[str, int] = msgspec.field(default_factory=dict)
    removed_bytes: dict[str, int] = msgspec.field(default_factory=dict)


class PurgeHistoryRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Delete the room's events from before a point: the event `before_event_id` (by depth),
    or `before_ts` (milliseconds since the epoch, the events' `origin_server_ts`); exactly one.
    Events still in the current state, named by the state at kept events or in the auth chain
    of a kept event stay. `limit`: delete at most this many events in this call (the
    response's `remaining` says how many more the point covers; call again for them)."""

    room_id: str
    before_ts: int | None = None
    before_event_id: str | None = None
    limit: int | None = None


class PurgeHistoryResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    removed: dict[str, int] = msgspec.field(default_factory=dict)
    removed_bytes: dict[str, int] = msgspec.field(default_factory=dict)
    # Old events left for a later call (non-zero only with a `limit`).
    remaining: int = 0
    # Old events kept because state or an auth chain still needs them.
    kept_for_state: int = 0


# Perform name -> (request, response): the endpoints `<prefix>.perform.<name>`.
ADMIN_PERFORMS: dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]] = {
    "purge_room": (PurgeRoomRequest, PurgeRoomResponse),
    "purge_history": (PurgeHistoryRequest, PurgeHistoryResponse),
}

__all__ = [
    "ADMIN_PERFORMS",
    "PurgeHistoryRequest",
    "PurgeHistoryResponse",
    "PurgeRoomRequest",
    "PurgeRoomResponse",
]
