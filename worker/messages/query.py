"""Requests and responses of the query API (DESIGN §4 "Queries"), one pair per endpoint.

Every endpoint listens on `<prefix>.query.<name>` of the NATS micro service `roomserver`. A
request body is the JSON of the request Struct; a successful reply is the JSON of the response
Struct. A failed query replies with the micro service's error headers
(`Nats-Service-Error-Code`: `400` or `404` or `500`, `Nats-Service-Error`: the message) and a
JSON body `QueryError` whose `code` is one of the service's codes (`worker.messages.errors`).

Events travel as the PDU JSON the roomserver stores (`msgspec.Raw`, never re-encoded), redacted
where a redaction was applied. State is addressed by `(type, state_key)` pairs (JSON arrays of
two strings); a state key of `"*"` in a request means "every state key of that type".

Conventions, the same for every endpoint:
- an unknown room is a `404 not_found` error, never an empty success;
- an unknown event that is the subject of the query (`server_allowed_to_see_event`) is a
  `404 not_found` error; where a list of events is asked for, the unknown ones are listed in
  `missing_event_ids` and the rest is answered;
- a request that does not decode, or is contradictory, is a `400 bad_request` error whose message
  says what is wrong.

Changes are additive (STYLE R7): new fields get defaults, existing ones never change.
"""

from __future__ import annotations

import msgspec

from worker.messages.errors import ERROR_STATUS, ErrorCode
from worker.messages.query_homeserver import HOMESERVER_QUERIES

# (event type, state key), as a JSON array of two strings.
StateTuple = tuple[str, str]

# The one vocabulary of the micro service, shared with the performs.
QueryErrorCode = ErrorCode
ERROR_CODES = ERROR_STATUS


class QueryError(msgspec.Struct, frozen=True, kw_only=True):
    """The body of an error reply (the headers carry the numeric code and the message too)."""

    code: QueryErrorCode
    message: str


# --- latest_events_and_state ------------------------------------------------------------------


class LatestEventsAndStateRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # None: the whole current state; []: none of it; else only these tuples ("*" wildcards).
    state_tuples: list[StateTuple] | None = None


class LatestEventsAndStateResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    room_version: str
    # The forward extremities: the prev_events of the next event, sorted.
    latest_event_ids: list[str]
    # Depth for the next event: the greatest depth among the extremities, plus one.
    depth: int
    state_events: list[msgspec.Raw]


# --- state_after_events -----------------------------------------------------------------------


class StateAfterEventsRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    prev_event_ids: list[str]
    state_tuples: list[StateTuple] | None = None


class StateAfterEventsResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    room_version: str
    # False when some of `prev_event_ids` are unknown or have no known state (outliers): the
    # state is then empty and `missing_event_ids` lists them.
    prev_events_exist: bool
    missing_event_ids: list[str] = []
    # The state after the events; resolved with the room's algorithm when there are several.
    state_events: list[msgspec.Raw] = []


# --- events_by_id -----------------------------------------------------------------------------


class EventsByIdRequest(msgspec.Struct, frozen=True, kw_only=True):
    event_ids: list[str]
    # When set, events of other rooms count as missing.
    room_id: str = ""


class EventsByIdResponse(msgspec.Struct, frozen=True, kw_only=True):
    # In the order asked, each once; redacted events in their redacted form.
    events: list[msgspec.Raw]
    missing_event_ids: list[str] = []


# --- current_state ----------------------------------------------------------------------------


class CurrentStateRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    state_tuples: list[StateTuple]


class CurrentStateResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    room_version: str
    # Sorted by (type, state_key).
    state_events: list[msgspec.Raw]


# --- membership_for_user ----------------------------------------------------------------------


class MembershipForUserRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    user_id: str


class MembershipForUserResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # The membership in the current state ("leave" when the user has no member event).
    membership: str
    # The current m.room.member event of the user; empty when there is none.
    event_id: str = ""
    is_in_room: bool = False
    # True when the user was joined at any point of the room's accepted history.
    has_been_in_room: bool = False


# --- memberships_for_room ---------------------------------------------------------------------


class MembershipsForRoomRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    joined_only: bool = True


class MembershipsForRoomResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # The current m.room.member events, sorted by state key.
    events: list[msgspec.Raw]


# --- membership_at_event ----------------------------------------------------------------------


class MembershipAtEventRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    user_id: str
    event_ids: list[str]


class MembershipAt(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    # The user's membership in the state before `event_id` ("leave" when none).
    membership: str
    # The m.room.member event that holds it; empty when the user had none then.
    membership_event_id: str = ""


class MembershipAtEventResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    memberships: list[MembershipAt]
    # Unknown events, and events whose state is not known (outliers).
    missing_event_ids: list[str] = []


# --- room_version -----------------------------------------------------------------------------


class RoomVersionRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str


class RoomVersionResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    room_version: str


# --- state_and_auth_chain ---------------------------------------------------------------------


class StateAndAuthChainRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # The state after these events (resolved when several) is returned.
    prev_event_ids: list[str]
    # Their auth chains are included too (what /send_join adds for the joining event).
    auth_event_ids: list[str] = []
    # Only the auth chain of `prev_event_ids` + `auth_event_ids`, no state (/event_auth).
    only_auth_chain: bool = False
    # The state *before* the one event in `prev_event_ids` instead of after it: federation
    # `/state` and `/state_ids` ("the state at the event", which excludes the event itself).
    state_before: bool = False


class StateAndAuthChainResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    room_version: str
    # False when a prev event is unknown or has no known state (then no state is returned).
    state_known: bool
    missing_event_ids: list[str] = []
    state_events: list[msgspec.Raw] = []
    # The auth chain of the state events and of `auth_event_ids`, sorted by depth then ID.
    auth_chain_events: list[msgspec.Raw] = []


# --- auth_chain -------------------------------------------------------------------------------


class AuthChainRequest(msgspec.Struct, frozen=True, kw_only=True):
    event_ids: list[str]


class AuthChainResponse(msgspec.Struct, frozen=True, kw_only=True):
    # Every event reachable through auth_events, the given events excluded unless one is in the
    # chain of another; sorted by depth then event ID.
    auth_chain_events: list[msgspec.Raw]
    missing_event_ids: list[str] = []


# --- missing_events ---------------------------------------------------------------------------


class MissingEventsRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    # The asking server: events it may not see come back redacted.
    server_name: str
    earliest_events: list[str]
    latest_events: list[str]
    limit: int = 10
    min_depth: int = 0


class MissingEventsResponse(msgspec.Struct, frozen=True, kw_only=True):
    # Oldest first (by depth, then event ID); `latest_events` themselves are not included.
    events: list[msgspec.Raw]


# --- server_allowed_to_see_event --------------------------------------------------------------


class ServerAllowedToSeeEventRequest(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    server_name: str
    # When set, an event of another room is unknown.
    room_id: str = ""


class ServerAllowedToSeeEventResponse(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool


# --- server_joined_to_room --------------------------------------------------------------------


class ServerJoinedToRoomRequest(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    server_name: str


class ServerJoinedToRoomResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str
    is_joined: bool


# Endpoint name -> (request type, response type): the service and the CLI are driven from here.
QUERIES: dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]] = {
    "latest_events_and_state": (LatestEventsAndStateRequest, LatestEventsAndStateResponse),
    "state_after_events": (StateAfterEventsRequest, StateAfterEventsResponse),
    "events_by_id": (EventsByIdRequest, EventsByIdResponse),
    "current_state": (CurrentStateRequest, CurrentStateResponse),
    "membership_for_user": (MembershipForUserRequest, MembershipForUserResponse),
    "memberships_for_room": (MembershipsForRoomRequest, MembershipsForRoomResponse),
    "membership_at_event": (MembershipAtEventRequest, MembershipAtEventResponse),
    "room_version": (RoomVersionRequest, RoomVersionResponse),
    "state_and_auth_chain": (StateAndAuthChainRequest, StateAndAuthChainResponse),
    "auth_chain": (AuthChainRequest, AuthChainResponse),
    "missing_events": (MissingEventsRequest, MissingEventsResponse),
    "server_allowed_to_see_event": (
        ServerAllowedToSeeEventRequest,
        ServerAllowedToSeeEventResponse,
    ),
    "server_joined_to_room": (ServerJoinedToRoomRequest, ServerJoinedToRoomResponse),
    # What the rest of a homeserver asks (worker.messages.query_homeserver).
    **HOMESERVER_QUERIES,
}
