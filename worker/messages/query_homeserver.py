"""Requests and responses of the queries the rest of a homeserver asks (DESIGN §4 "Queries").

Sync, the client API, federation and the user directory ask these on `<prefix>.query.<name>`
like the queries of `worker.messages.query`, with the same conventions: an unknown room is a
`404 not_found` error, a request that does not decode or is contradictory a
`400 bad_request`, and failures carry a `QueryError` body. Every answer comes from indexes the
store keeps in the same transaction as the events, never from loading whole room states.

Lists in answers are sorted (room IDs, user IDs) so that answers are deterministic.
Changes are additive (STYLE R7): new fields get defaults, existing ones never change.
"""

from __future__ import annotations

from typing import Literal

import msgspec

# (event type, state key), as a JSON array of two strings.
StateTuple = tuple[str, str]

Membership = Literal["join", "invite", "leave", "ban", "knock"]


# --- bulk_state_content -----------------------------------------------------------------------


class BulkStateContentRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_ids: list[str]
    # A state key of "*" means every state key of the type.
    state_tuples: list[StateTuple]


class BulkStateContentResponse(msgspec.Struct, frozen=True, kw_only=True):
    # Room ID -> [[type, state_key, content], ...] of its current state, sorted by (type,
    # state_key); unknown rooms are absent. `content` is the stored (redacted) event's.
    rooms: dict[str, list[tuple[str, str, msgspec.Raw]]]


# --- rooms_for_user ---------------------------------------------------------------------------


class RoomsForUserRequest(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    membership: Membership = "join"


class RoomsForUserResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_ids: list[str]


# --- shared_users -----------------------------------------------------------------------------


class SharedUsersRequest(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    # Empty: every user joined to a room `user_id` is joined to (the user included).
    other_user_ids: list[str] = []


class SharedUsersResponse(msgspec.Struct, frozen=True, kw_only=True):
    # User -> how many rooms both are joined to; users sharing none are absent.
    user_ids: dict[str, int]


# --- known_users ------------------------------------------------------------------------------


class KnownUsersRequest(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    # Case-insensitive substring of the user ID; empty matches everyone.
    search: str = ""
    limit: int = 10


class KnownUsersResponse(msgspec.Struct, frozen=True, kw_only=True):
    # Users joined to some room `user_id` is joined to (not `user_id` itself), sorted,
    # at most `limit`.
    user_ids: list[str]


# --- joined_user_count ------------------------------------------------------------------------


class JoinedUserCountRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str


class JoinedUserCountResponse(msgspec.Struct, frozen=True, kw_only=True):
    count: int


# --- locally_joined_users ---------------------------------------------------------------------


class LocallyJoinedUsersRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str


class LocallyJoinedUsersResponse(msgspec.Struct, frozen=True, kw_only=True):
    # Joined users of this server (`SERVER_NAME`), sorted.
    user_ids: list[str]


# --- invite_pending ---------------------------------------------------------------------------


class InvitePendingRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    user_id: str


class InvitePendingResponse(msgspec.Struct, frozen=True, kw_only=True):
    # True when the user's membership in the room's current state is `invite`.
    pending: bool
    # The sender of that invite; empty when none is pending.
    inviter: str = ""


# --- restricted_join_allowed ------------------------------------------------------------------


class RestrictedJoinAllowedRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    user_id: str


class RestrictedJoinAllowedResponse(msgspec.Struct, frozen=True, kw_only=True):
    # May the user join through the room's `restricted` / `knock_restricted` join rule?
    allowed: bool
    # A local user joined to the room who may invite: the join is signed as their server
    # (`join_authorised_via_users_server`). Empty when not allowed, or when no
    # authorisation is needed (the user is already joined or invited).
    authorising_user_id: str = ""
    # A stable code: `allowed` (via `via_room_id`), `already_joined`, `invited`,
    # `not_restricted` (the join rule is another), `unsupported_room_version`, `banned`,
    # `not_in_allowed_room`, `no_authorising_user`.
    reason: str
    # The allowed room whose membership grants the join.
    via_room_id: str = ""


# --- server_banned_from_room ------------------------------------------------------------------


class ServerBannedFromRoomRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # A server name; a `:port` suffix is ignored.
    server_name: str


class ServerBannedFromRoomResponse(msgspec.Struct, frozen=True, kw_only=True):
    # True when the room's current `m.room.server_acl` denies the server.
    banned: bool


# --- room_hierarchy ---------------------------------------------------------------------------


class RoomHierarchyRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # How deep to walk below the root (0: the root alone); None: no limit.
    max_depth: int | None = None
    # Rooms per page.
    limit: int = 50
    # `next_batch` of the previous page; empty for the first page.
    from_: str = msgspec.field(default="", name="from")
    # Follow only children whose `m.space.child` says `suggested: true`.
    suggested_only: bool = False
    # The asker, a user of this server: rooms it is joined or invited to are visible, and
    # restricted rooms it may join. Empty: only public, knockable and world-readable rooms.
    user_id: str = ""


class HierarchyRoom(msgspec.Struct, frozen=True, kw_only=True):
    """A room's summary as the client-server API's `/hierarchy` lists it."""

    room_id: str
    # The create event's `type` (`m.space` for a space), empty for none.
    room_type: str = ""
    name: str = ""
    topic: str = ""
    avatar_url: str = ""
    canonical_alias: str = ""
    join_rule: str = ""
    world_readable: bool = False
    guest_can_join: bool = False
    num_joined_members: int = 0
    # For restricted rooms: the rooms whose members may join.
    allowed_room_ids: list[str] = []
    # The `m.space.child` events with a valid `via`, stripped: type, state_key, content,
    # sender, origin_server_ts; in the spec's order.
    children_state: list[msgspec.Raw] = []


class RoomHierarchyResponse(msgspec.Struct, frozen=True, kw_only=True):
    rooms: list[HierarchyRoom]
    # Pass as `from` for the next page; empty on the last page.
    next_batch: str = ""


# Endpoint name -> (request type, response type), merged into `worker.messages.query.QUERIES`.
HOMESERVER_QUERIES: dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]] = {
    "bulk_state_content": (BulkStateContentRequest, BulkStateContentResponse),
    "rooms_for_user": (RoomsForUserRequest, RoomsForUserResponse),
    "shared_users": (SharedUsersRequest, SharedUsersResponse),
    "known_users": (KnownUsersRequest, KnownUsersResponse),
    "joined_user_count": (JoinedUserCountRequest, JoinedUserCountResponse),
    "locally_joined_users": (LocallyJoinedUsersRequest, LocallyJoinedUsersResponse),
    "invite_pending": (InvitePendingRequest, InvitePendingResponse),
    "restricted_join_allowed": (RestrictedJoinAllowedRequest, RestrictedJoinAllowedResponse),
    "server_banned_from_room": (ServerBannedFromRoomRequest, ServerBannedFromRoomResponse),
    "room_hierarchy": (RoomHierarchyRequest, RoomHierarchyResponse),
}
