"""Handlers of the queries the rest of a homeserver asks (DESIGN §4 "Queries").

Sync asks which rooms a user is in and the state content of a few keys across all of them;
the client API asks about invites, restricted joins and spaces; federation asks whether a
server is banned by a room's ACL; the device list and user directory services ask who shares
a room with whom. Each handler is a plain async function from a request Struct to a response
Struct over the narrow `HomeserverStore` port, raising `QueryFailed` with a stable code.

The answers come from the membership index and the current state entries asked for, never
from a whole room state: a user in thousands of rooms and a room of tens of thousands of
members are each a range of one index.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from worker.core.acl import ACL_KEY, ServerAcl
from worker.core.auth import PowerLevels
from worker.core.auth.create import creators
from worker.core.events import MEMBER, Event, StateKey
from worker.core.versions import RoomRules, rules_for
from worker.messages import query_homeserver as m
from worker.query.handlers import QueryFailed
from worker.query.hierarchy import allowed_room_ids, room_hierarchy
from worker.query.homeserver_ports import Homeserver, RoomState, StateEntry

# Bounds that keep one request from asking for unbounded work.
MAX_ROOMS = 10_000
MAX_TUPLES = 100
MAX_USERS = 10_000
MAX_KNOWN_USERS_LIMIT = 1_000

CREATE: StateKey = ("m.room.create", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")
POWER_LEVELS: StateKey = ("m.room.power_levels", "")


def _need(value: str, name: str) -> None:
    if not value:
        raise QueryFailed("bad_request", f"{name} is required")


def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


async def _room(hs: Homeserver, room_id: str, keys: list[StateKey]) -> RoomState:
    _need(room_id, "room_id")
    rooms = await hs.store.current_state([room_id], keys)
    if room_id not in rooms:
        raise QueryFailed("not_found", f"unknown room {room_id}")
    return rooms[room_id]


def _event(entry: StateEntry | None, rules: RoomRules) -> Event | None:
    if entry is None:
        return None
    return Event(msgspec.json.decode(entry.json), entry.event_id, rules)


# --- the endpoints ----------------------------------------------------------------------------


async def bulk_state_content(
    hs: Homeserver, req: m.BulkStateContentRequest
) -> m.BulkStateContentResponse:
    if len(req.room_ids) > MAX_ROOMS:
        raise QueryFailed("bad_request", f"room_ids: at most {MAX_ROOMS} rooms")
    if len(req.state_tuples) > MAX_TUPLES:
        raise QueryFailed("bad_request", f"state_tuples: at most {MAX_TUPLES} tuples")
    for t, _ in req.state_tuples:
        if not t:
            raise QueryFailed("bad_request", "state_tuples: empty event type")
    if not req.room_ids or not req.state_tuples:
        return m.BulkStateContentResponse(rooms={})
    rooms = await hs.store.current_state(req.room_ids, list(req.state_tuples))
    return m.BulkStateContentResponse(
        rooms={
            room: [(t, s, state.entries[(t, s)].raw_content) for t, s in sorted(state.entries)]
            for room, state in sorted(rooms.items())
        }
    )


async def rooms_for_user(hs: Homeserver, req: m.RoomsForUserRequest) -> m.RoomsForUserResponse:
    _need(req.user_id, "user_id")
    return m.RoomsForUserResponse(room_ids=await hs.store.rooms_of_user(req.user_id, req.membership))


async def shared_users(hs: Homeserver, req: m.SharedUsersRequest) -> m.SharedUsersResponse:
    _need(req.user_id, "user_id")
    if len(req.other_user_ids) > MAX_USERS:
        raise QueryFailed("bad_request", f"other_user_ids: at most {MAX_USERS} users")
    counts = await hs.store.shared_users(req.user_id, sorted(set(req.other_user_ids)))
    return m.SharedUsersResponse(user_ids=dict(sorted(counts.items())))


async def known_users(hs: Homeserver, req: m.KnownUsersRequest) -> m.KnownUsersResponse:
    _need(req.user_id, "user_id")
    if not 0 <= req.limit <= MAX_KNOWN_USERS_LIMIT:
        raise QueryFailed("bad_request", f"limit must be within 0..{MAX_KNOWN_USERS_LIMIT}")
    found = await hs.store.known_users(req.user_id, req.search, req.limit)
    return m.KnownUsersResponse(user_ids=found)


async def joined_user_count(
    hs: Homeserver, req: m.JoinedUserCountRequest
) -> m.JoinedUserCountResponse:
    _need(req.room_id, "room_id")
    counts = await hs.store.joined_counts([req.room_id])
    if req.room_id not in counts:
        raise QueryFailed("not_found", f"unknown room {req.room_id}")
    return m.JoinedUserCountResponse(count=counts[req.room_id])


async def locally_joined_users(
    hs: Homeserver, req: m.LocallyJoinedUsersRequest
) -> m.LocallyJoinedUsersResponse:
    await _room(hs, req.room_id, [])
    users = await hs.store.joined_users_of_server(req.room_id, hs.server_name)
    return m.LocallyJoinedUsersResponse(user_ids=users)


async def invite_pending(hs: Homeserver, req: m.InvitePendingRequest) -> m.InvitePendingResponse:
    _need(req.user_id, "user_id")
    state = await _room(hs, req.room_id, [(MEMBER, req.user_id)])
    entry = state.entries.get((MEMBER, req.user_id))
    if entry is None or entry.content.get("membership") != "invite":
        return m.InvitePendingResponse(pending=False)
    return m.InvitePendingResponse(pending=True, inviter=entry.sender)


async def restricted_join_allowed(
    hs: Homeserver, req: m.RestrictedJoinAllowedRequest
) -> m.RestrictedJoinAllowedResponse:
    """MSC3083 (room versions 8+; `knock_restricted` from 10): may the user join through
    membership of an allowed room, and which local user can sign for it?

    Spec: https://spec.matrix.org/latest/client-server-api/#restricted-rooms. Like Synapse's
    `check_restricted_join_rules`: a user already joined or invited needs no authorisation;
    otherwise the user must be joined to one of the `allow` rooms of type
    `m.room_membership`, and a joined local user must be able to invite. Among those, the one
    with the highest power level signs (Synapse `get_user_which_could_invite`), ties going to
    the first user ID in sort order so that the answer is deterministic.
    """
    _need(req.user_id, "user_id")
    state = await _room(hs, req.room_id, [CREATE, JOIN_RULES, POWER_LEVELS])
    rules = rules_for(state.version)
    if rules is None or not rules.restricted_join_rule:
        return _no("unsupported_room_version")
    join_rules = state.entries.get(JOIN_RULES)
    content = join_rules.content if join_rules is not None else {}
    rule = content.get("join_rule")
    if rule != "restricted" and not (
        rule == "knock_restricted" and rules.knock_restricted_join_rule
    ):
        return _no("not_restricted")
    mine = (await hs.store.memberships_in(req.room_id, [req.user_id])).get(req.user_id)
    if mine in ("join", "invite"):
        reason = "already_joined" if mine == "join" else "invited"
        return m.RestrictedJoinAllowedResponse(allowed=True, reason=reason)
    if mine == "ban":
        # Auth rules, join: a banned user may not join, whatever the join rule.
        return _no("banned")
    allowed_rooms = allowed_room_ids(content)
    memberships = await hs.store.memberships_of(req.user_id, allowed_rooms)
    via = next((r for r in allowed_rooms if memberships.get(r) == "join"), "")
    if not via:
        return _no("not_in_allowed_room")
    power = PowerLevels(
        rules, _event(state.entries.get(POWER_LEVELS), rules), _event(state.entries.get(CREATE), rules)
    )
    authoriser = await _authoriser(hs, req.room_id, power, state, rules)
    if not authoriser:
        return _no("no_authorising_user", via)
    return m.RestrictedJoinAllowedResponse(
        allowed=True, authorising_user_id=authoriser, reason="allowed", via_room_id=via
    )


def _no(reason: str, via: str = "") -> m.RestrictedJoinAllowedResponse:
    return m.RestrictedJoinAllowedResponse(allowed=False, reason=reason, via_room_id=via)


async def _authoriser(
    hs: Homeserver, room_id: str, power: PowerLevels, state: RoomState, rules: RoomRules
) -> str:
    """The joined local user with the highest power level, if that level may invite.

    Only users named in the power levels (or, v12+, the creators) can stand above
    `users_default`, so they are checked first, by one lookup; the room's other local members
    are read only when `users_default` itself is high enough to invite.
    """
    invite = power.named("invite")
    named: set[str] = set()
    pl = state.entries.get(POWER_LEVELS)
    if pl is not None and isinstance(pl.content.get("users"), dict):
        named.update(u for u in pl.content["users"] if isinstance(u, str))
    create = _event(state.entries.get(CREATE), rules)
    if create is not None and (rules.privileged_creators or pl is None):
        named.update(creators(create))
    local = sorted(u for u in named if _server_of(u) == hs.server_name)
    joined = await hs.store.memberships_in(room_id, local)
    ranked = sorted(
        (u for u in local if joined.get(u) == "join"), key=lambda u: (-power.user_level(u), u)
    )
    best = ranked[0] if ranked else ""
    default = power.named("users_default") if pl is not None else 0
    if default >= invite and (not best or power.user_level(best) < default):
        # A member not named has `users_default`, which beats every named one here.
        others = [
            u for u in await hs.store.joined_users_of_server(room_id, hs.server_name)
            if u not in named
        ]
        if others:
            best = others[0]
    if best and power.user_level(best) >= invite:
        return best
    return ""


async def server_banned_from_room(
    hs: Homeserver, req: m.ServerBannedFromRoomRequest
) -> m.ServerBannedFromRoomResponse:
    _need(req.server_name, "server_name")
    state = await _room(hs, req.room_id, [ACL_KEY])
    entry = state.entries.get(ACL_KEY)
    if entry is None:
        return m.ServerBannedFromRoomResponse(banned=False)
    banned = not ServerAcl.from_content(entry.content).allows(req.server_name)
    return m.ServerBannedFromRoomResponse(banned=banned)


HomeserverHandler = Callable[[Homeserver, Any], Awaitable[msgspec.Struct]]

# Endpoint name -> handler; the names are those of `HOMESERVER_QUERIES`.
HOMESERVER_HANDLERS: dict[str, HomeserverHandler] = {
    "bulk_state_content": bulk_state_content,
    "rooms_for_user": rooms_for_user,
    "shared_users": shared_users,
    "known_users": known_users,
    "joined_user_count": joined_user_count,
    "locally_joined_users": locally_joined_users,
    "invite_pending": invite_pending,
    "restricted_join_allowed": restricted_join_allowed,
    "server_banned_from_room": server_banned_from_room,
    "room_hierarchy": room_hierarchy,
}

assert set(HOMESERVER_HANDLERS) == set(m.HOMESERVER_QUERIES)


async def answer_homeserver(hs: Homeserver, name: str, data: bytes) -> msgspec.Struct:
    """Decode a request body, run its handler, return the response; raises `QueryFailed`."""
    request_type, _ = m.HOMESERVER_QUERIES[name]
    try:
        request = msgspec.json.decode(data or b"{}", type=request_type)
    except msgspec.ValidationError as exc:
        raise QueryFailed("bad_request", f"invalid {name} request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise QueryFailed("bad_request", f"request is not JSON: {exc}") from None
    return await HOMESERVER_HANDLERS[name](hs, request)
