"""Gap-filling requests to the federation service and its answers (DESIGN §4).

The roomserver asks on `<federation prefix>.<verb>` (default prefix `federation.request`)
with NATS request/reply; the federation service (outside this project) asks the room's other
servers and answers with what it got, unchecked. Each verb mirrors a federation API:

| verb                 | federation API                          | request                 | response               |
|----------------------|-----------------------------------------|-------------------------|------------------------|
| `get_missing_events` | `POST /get_missing_events/{roomId}`     | `GetMissingEventsRequest` | `MissingEventsResponse` |
| `state_ids`          | `GET /state_ids/{roomId}?event_id=`     | `StateIdsRequest`       | `StateIdsResponse`     |
| `state`              | `GET /state/{roomId}?event_id=`         | `StateRequest`          | `StateResponse`        |
| `event`              | `GET /event/{eventId}`                  | `EventRequest`          | `EventResponse`        |
| `event_auth`         | `GET /event_auth/{roomId}/{eventId}`    | `EventAuthRequest`      | `EventAuthResponse`    |

PDUs stay `msgspec.Raw`: the gap filler checks each one (format, room, event ID, content hash)
before anything is stored. A response may carry `error_code`: `not_found` (no server had it:
an answer, the gap cannot be filled) or anything else (the service could not ask: retried).
Changes are additive: new fields get defaults (STYLE R7).
"""

from __future__ import annotations

import msgspec

# The error code meaning "asked, nobody had it": a final answer, not a transient failure.
NOT_FOUND = "not_found"


class GetMissingEventsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Events between the room's extremities (`earliest_events`) and `latest_events`."""

    room_id: str
    earliest_events: tuple[str, ...]
    latest_events: tuple[str, ...]
    limit: int = 20
    min_depth: int = 0
    # The server that sent the event with the gap: the one to ask first (empty: any).
    origin: str = ""


class StateIdsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The state before `event_id`, as event IDs, with the IDs of its auth chain."""

    room_id: str
    event_id: str
    origin: str = ""


class StateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The state before `event_id` as full PDUs, with its auth chain."""

    room_id: str
    event_id: str
    origin: str = ""


class EventRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One event by ID."""

    room_id: str
    event_id: str
    origin: str = ""


class EventAuthRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The full auth chain of `event_id`."""

    room_id: str
    event_id: str
    origin: str = ""


class MissingEventsResponse(msgspec.Struct, frozen=True, kw_only=True):
    events: tuple[msgspec.Raw, ...] = ()
    error_code: str = ""
    error: str = ""


class StateIdsResponse(msgspec.Struct, frozen=True, kw_only=True):
    pdu_ids: tuple[str, ...] = ()
    auth_chain_ids: tuple[str, ...] = ()
    error_code: str = ""
    error: str = ""


class StateResponse(msgspec.Struct, frozen=True, kw_only=True):
    pdus: tuple[msgspec.Raw, ...] = ()
    auth_chain: tuple[msgspec.Raw, ...] = ()
    error_code: str = ""
    error: str = ""


class EventResponse(msgspec.Struct, frozen=True, kw_only=True):
    # Zero or one PDU, as the federation `/event` transaction carries it.
    pdus: tuple[msgspec.Raw, ...] = ()
    error_code: str = ""
    error: str = ""


class EventAuthResponse(msgspec.Struct, frozen=True, kw_only=True):
    auth_chain: tuple[msgspec.Raw, ...] = ()
    error_code: str = ""
    error: str = ""


# verb -> (request Struct, response Struct); the schema generator and the adapter read it.
FEDERATION_VERBS: dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct]]] = {
    "get_missing_events": (GetMissingEventsRequest, MissingEventsResponse),
    "state_ids": (StateIdsRequest, StateIdsResponse),
    "state": (StateRequest, StateResponse),
    "event": (EventRequest, EventResponse),
    "event_auth": (EventAuthRequest, EventAuthResponse),
}

__all__ = [
    "FEDERATION_VERBS",
    "NOT_FOUND",
    "EventAuthRequest",
    "EventAuthResponse",
    "EventRequest",
    "EventResponse",
    "GetMissingEventsRequest",
    "MissingEventsResponse",
    "StateIdsRequest",
    "StateIdsResponse",
    "StateRequest",
    "StateResponse",
]
