"""Requests and responses of the Perform API (DESIGN §4 "Perform API"), one pair per perform,
and of the queries that read what performs write (aliases, the room directory, server keys).

Performs listen on `<prefix>.perform.<name>` of the micro service `roomserver`, the queries
here on `<prefix>.query.<name>`. A request body is the JSON of the request Struct; a success
is the JSON of the response Struct. A failure replies with the micro service's error headers
(`Nats-Service-Error-Code`: 400, 403, 404, 409, 500 or 503) and a `PerformError` body whose
`code` is stable; a refused event (`forbidden`) also carries the auth rule's `reason_code` and
`reason`, as the input reply would.

Changes are additive (STYLE R7): new fields get defaults, existing ones never change.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from worker.messages.errors import ERROR_STATUS, ErrorCode
from worker.messages.perform_backfill import BackfillRequest, BackfillResponse

# The one vocabulary of the micro service, shared with the queries.
PerformErrorCode = ErrorCode
PERFORM_ERROR_CODES = ERROR_STATUS

Preset = Literal["private_chat", "trusted_private_chat", "public_chat"]
Visibility = Literal["public", "private"]


class PerformError(msgspec.Struct, frozen=True, kw_only=True):
    """The body of an error reply."""

    code: PerformErrorCode
    message: str
    # For `forbidden`: the auth rule's stable code and sentence (empty otherwise).
    reason_code: str = ""
    reason: str = ""


class StateEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A state event to send: `initial_state` of create_room."""

    type: str
    state_key: str = ""
    content: dict[str, Any]


# --- send_event -------------------------------------------------------------------------------


class SendEventRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    sender: str
    type: str
    # Absent: a message (non-state) event.
    state_key: str | None = None
    content: dict[str, Any]
    # For m.room.redaction: the event redacted.
    redacts: str | None = None
    # The same (sender, txn_id) again answers the first event ID and builds nothing.
    txn_id: str | None = None


class SendEventResponse(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str


# --- create_room ------------------------------------------------------------------------------


class CreateRoomRequest(msgspec.Struct, frozen=True, kw_only=True):
    creator: str
    # Empty: the setting DEFAULT_ROOM_VERSION.
    room_version: str = ""
    # None: `public_chat` when visibility is public, else `private_chat`.
    preset: Preset | None = None
    name: str | None = None
    topic: str | None = None
    initial_state: list[StateEvent] = msgspec.field(default_factory=list)
    invite: list[str] = msgspec.field(default_factory=list)
    is_direct: bool = False
    power_level_content_override: dict[str, Any] | None = None
    creation_content: dict[str, Any] | None = None
    # The localpart of an alias on this server: `#<name>:<server name>`.
    room_alias_name: str | None = None
    # `public` publishes the room in the directory.
    visibility: Visibility = "private"


class CreateRoomResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    room_alias: str | None = None


# --- invite, join, leave ----------------------------------------------------------------------


class InviteRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    sender: str
    user_id: str
    reason: str | None = None
    is_direct: bool = False


class InviteResponse(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str


class JoinRequest(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    room_id_or_alias: str
    # Servers to join through (the remote path).
    server_names: list[str] = msgspec.field(default_factory=list)
    # Extra content of the join event (displayname, avatar_url, ...).
    content: dict[str, Any] = msgspec.field(default_factory=dict)


class JoinResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    event_id: str


class LeaveRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    user_id: str
    reason: str | None = None


class LeaveResponse(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str


# --- upgrade, forget --------------------------------------------------------------------------


class UpgradeRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    user_id: str
    new_version: str


class UpgradeResponse(msgspec.Struct, frozen=True, kw_only=True):
    replacement_room_id: str


class ForgetRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    user_id: str


class Empty(msgspec.Struct, frozen=True, kw_only=True):
    """The response of performs that answer nothing but success."""


# --- aliases and the directory ----------------------------------------------------------------


class SetAliasRequest(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    room_id: str
    user_id: str


class RemoveAliasRequest(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    user_id: str


class PublishRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    visibility: Visibility


# --- queries ----------------------------------------------------------------------------------


class RoomForAliasRequest(msgspec.Struct, frozen=True, kw_only=True):
    alias: str


class RoomForAliasResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # Servers that can be asked to join it: ours first.
    servers: list[str]


class AliasesForRoomRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str


class AliasesForRoomResponse(msgspec.Struct, frozen=True, kw_only=True):
    aliases: list[str]


class PublishedRoomsRequest(msgspec.Struct, frozen=True, kw_only=True):
    limit: int = 100
    # The `next_batch` of the previous page.
    since: str = ""


class PublishedRoomsResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_ids: list[str]
    # Empty on the last page.
    next_batch: str
    total: int


class ServerKeysRequest(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ServerKeysResponse(msgspec.Struct, frozen=True, kw_only=True):
    server_name: str
    # key ID ("ed25519:<version>") -> public key, unpadded base64.
    verify_keys: dict[str, str]


# Perform name -> (request Struct, response Struct).
PERFORMS: dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]] = {
    "send_event": (SendEventRequest, SendEventResponse),
    "create_room": (CreateRoomRequest, CreateRoomResponse),
    "invite": (InviteRequest, InviteResponse),
    "join": (JoinRequest, JoinResponse),
    "leave": (LeaveRequest, LeaveResponse),
    "upgrade": (UpgradeRequest, UpgradeResponse),
    "forget": (ForgetRequest, Empty),
    "set_alias": (SetAliasRequest, Empty),
    "remove_alias": (RemoveAliasRequest, Empty),
    "publish": (PublishRequest, Empty),
    "backfill": (BackfillRequest, BackfillResponse),
}

# The queries the perform side answers: name -> (request Struct, response Struct).
PERFORM_QUERIES: dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]] = {
    "room_for_alias": (RoomForAliasRequest, RoomForAliasResponse),
    "aliases_for_room": (AliasesForRoomRequest, AliasesForRoomResponse),
    "published_rooms": (PublishedRoomsRequest, PublishedRoomsResponse),
    "server_keys": (ServerKeysRequest, ServerKeysResponse),
}
