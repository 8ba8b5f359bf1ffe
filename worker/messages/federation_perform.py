"""Perform requests to the federation service and its answers (DESIGN §4, federation port).

The performs ask other servers through the federation service on `<federation prefix>.<verb>`
(default prefix `federation.request`), NATS request/reply, one server per request: each
request names its `destination`. Fields are the federation API's, in snake_case:

| verb         | federation API                                   | request              | response              |
|--------------|--------------------------------------------------|----------------------|-----------------------|
| `make_join`  | `GET /make_join/{roomId}/{userId}?ver=`          | `MakeJoinRequest`    | `MakeJoinResponse`    |
| `send_join`  | `PUT /v2/send_join/{roomId}/{eventId}`           | `SendJoinRequest`    | `SendJoinResponse`    |
| `make_leave` | `GET /make_leave/{roomId}/{userId}`              | `MakeLeaveRequest`   | `MakeLeaveResponse`   |
| `send_leave` | `PUT /v2/send_leave/{roomId}/{eventId}`          | `SendLeaveRequest`   | `SendLeaveResponse`   |
| `invite`     | `PUT /v2/invite/{roomId}/{eventId}`              | `InviteRequest`      | `InviteResponse`      |
| `backfill`   | `GET /backfill/{roomId}?v=&limit=`               | `BackfillRequest`    | `BackfillResponse`    |
| `query_directory` | `GET /query/directory?room_alias=`          | `QueryDirectoryRequest` | `QueryDirectoryResponse` |

PDUs stay `msgspec.Raw`: the roomserver checks every one (format, room, event ID, content
hash, auth against its own auth events) before anything is stored. A response may carry
`error_code` (`not_found`, `forbidden`, or anything else: the server could not be asked or
refused) with `error`, its words; the perform then tries the next server.
Changes are additive: new fields get defaults (STYLE R7).
"""

from __future__ import annotations

import msgspec


def _null() -> msgspec.Raw:
    """An absent event: JSON null (msgspec cannot decode a Raw in a union with None)."""
    return msgspec.Raw(b"null")


class MakeJoinRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A join event template for `user_id` from `destination`."""

    destination: str
    room_id: str
    user_id: str
    # The room versions we support (`ver` query parameters).
    supported_versions: tuple[str, ...] = ()


class MakeJoinResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_version: str = ""
    # The unsigned template: no hashes, signatures or (v3+) event ID yet.
    event: msgspec.Raw = msgspec.field(default_factory=_null)
    error_code: str = ""
    error: str = ""


class SendJoinRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The signed join, for `destination` to accept and answer with the room's state."""

    destination: str
    room_id: str
    event_id: str
    event: msgspec.Raw


class SendJoinResponse(msgspec.Struct, frozen=True, kw_only=True):
    # The server that answered; the state before the join and the auth chain of it all.
    origin: str = ""
    state: tuple[msgspec.Raw, ...] = ()
    auth_chain: tuple[msgspec.Raw, ...] = ()
    # The join as the resident server keeps it (restricted joins: with its signature added).
    event: msgspec.Raw = msgspec.field(default_factory=_null)
    error_code: str = ""
    error: str = ""


class MakeLeaveRequest(msgspec.Struct, frozen=True, kw_only=True):
    destination: str
    room_id: str
    user_id: str


class MakeLeaveResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_version: str = ""
    event: msgspec.Raw = msgspec.field(default_factory=_null)
    error_code: str = ""
    error: str = ""


class SendLeaveRequest(msgspec.Struct, frozen=True, kw_only=True):
    destination: str
    room_id: str
    event_id: str
    event: msgspec.Raw


class SendLeaveResponse(msgspec.Struct, frozen=True, kw_only=True):
    error_code: str = ""
    error: str = ""


class InviteRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Our signed invite, for the invitee's server to countersign."""

    destination: str
    room_id: str
    event_id: str
    room_version: str
    event: msgspec.Raw
    # Stripped state events ({type, state_key, sender, content}) for the invitee's client.
    invite_room_state: tuple[msgspec.Raw, ...] = ()


class InviteResponse(msgspec.Struct, frozen=True, kw_only=True):
    # The invite with the invitee server's signature added.
    event: msgspec.Raw = msgspec.field(default_factory=_null)
    error_code: str = ""
    error: str = ""


class BackfillRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Up to `limit` events before (and including) `event_ids`, newest first."""

    destination: str
    room_id: str
    event_ids: tuple[str, ...]
    limit: int = 20


class BackfillResponse(msgspec.Struct, frozen=True, kw_only=True):
    origin: str = ""
    pdus: tuple[msgspec.Raw, ...] = ()
    error_code: str = ""
    error: str = ""


class QueryDirectoryRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The room an alias of `destination` (the alias's own server) names."""

    destination: str
    room_alias: str


class QueryDirectoryResponse(msgspec.Struct, frozen=True, kw_only=True):
    room_id: str = ""
    # Servers in the room, to join it through.
    servers: tuple[str, ...] = ()
    # `not_found`: the server answered that the alias names no room.
    error_code: str = ""
    error: str = ""


# verb -> (request Struct, response Struct); the schema generator and the adapter read it.
FEDERATION_PERFORM_VERBS: dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]] = {
    "make_join": (MakeJoinRequest, MakeJoinResponse),
    "send_join": (SendJoinRequest, SendJoinResponse),
    "make_leave": (MakeLeaveRequest, MakeLeaveResponse),
    "send_leave": (SendLeaveRequest, SendLeaveResponse),
    "invite": (InviteRequest, InviteResponse),
    "backfill": (BackfillRequest, BackfillResponse),
    "query_directory": (QueryDirectoryRequest, QueryDirectoryResponse),
}

__all__ = [
    "FEDERATION_PERFORM_VERBS",
    "BackfillRequest",
    "BackfillResponse",
    "InviteRequest",
    "InviteResponse",
    "MakeJoinRequest",
    "MakeJoinResponse",
    "MakeLeaveRequest",
    "MakeLeaveResponse",
    "QueryDirectoryRequest",
    "QueryDirectoryResponse",
    "SendJoinRequest",
    "SendJoinResponse",
    "SendLeaveRequest",
    "SendLeaveResponse",
]
