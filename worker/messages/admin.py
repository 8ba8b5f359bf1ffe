"""Requests and responses of the admin performs (DESIGN §3 "Lifecycle", §4 Perform API) on
the micro service `roomserver`: `roomserver.perform.purge_room`, `purge_history`,
`evacuate_room` and `evacuate_user`.

Errors use the micro service's one vocabulary (`worker.messages.errors`). The purges' are
replied like a query's (`worker.messages.query.QueryError`): `not_found` (an unknown room, or
a `before_event_id` that is not in the room), `bad_request` (a body that does not decode, or
not exactly one of `before_ts` / `before_event_id`). The evacuations build events, so theirs
are the Perform API's (`worker.messages.perform.PerformError`): `not_found` (an unknown
room), `bad_request` (a user of another server).

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


class EvacuateRoomRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Every member of the room who is a user of this server (`SERVER_NAME`) and is joined,
    invited or knocking leaves it; members of other servers stay. `reason`: the leaves'."""

    room_id: str
    reason: str = ""


class EvacuateUserRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The user (of this server) leaves every room they are joined to, invited to or knocking
    on."""

    user_id: str
    reason: str = ""


class EvacuationFailure(msgspec.Struct, frozen=True, kw_only=True):
    """One leave that could not be done; `code` and `message` are the leave perform's error
    (`worker.messages.perform.PerformError`)."""

    room_id: str
    user_id: str
    code: str
    message: str


class EvacuateRoomResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # The leave events built, in the order of `user_ids`.
    event_ids: list[str] = msgspec.field(default_factory=list)
    # The users who left (one per event ID).
    user_ids: list[str] = msgspec.field(default_factory=list)
    # The leaves that failed; the others were done regardless.
    failed: list[EvacuationFailure] = msgspec.field(default_factory=list)


class EvacuateUserResponse(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    # The leave events built, in the order of `room_ids`.
    event_ids: list[str] = msgspec.field(default_factory=list)
    # The rooms left (one per event ID).
    room_ids: list[str] = msgspec.field(default_factory=list)
    # The rooms that could not be left; the others were left regardless.
    failed: list[EvacuationFailure] = msgspec.field(default_factory=list)


Endpoints = dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]]

# Perform name -> (request, response): the endpoints `<prefix>.perform.<name>`. The purges are
# answered beside the queries (`worker.perform.admin`), the evacuations beside the Perform
# API (`worker.perform.evacuate`).
PURGE_PERFORMS: Endpoints = {
    "purge_room": (PurgeRoomRequest, PurgeRoomResponse),
    "purge_history": (PurgeHistoryRequest, PurgeHistoryResponse),
}
EVACUATE_PERFORMS: Endpoints = {
    "evacuate_room": (EvacuateRoomRequest, EvacuateRoomResponse),
    "evacuate_user": (EvacuateUserRequest, EvacuateUserResponse),
}
ADMIN_PERFORMS: Endpoints = PURGE_PERFORMS | EVACUATE_PERFORMS

__all__ = [
    "ADMIN_PERFORMS",
    "EVACUATE_PERFORMS",
    "PURGE_PERFORMS",
    "EvacuateRoomRequest",
    "EvacuateRoomResponse",
    "EvacuateUserRequest",
    "EvacuateUserResponse",
    "EvacuationFailure",
    "PurgeHistoryRequest",
    "PurgeHistoryResponse",
    "PurgeRoomRequest",
    "PurgeRoomResponse",
]
