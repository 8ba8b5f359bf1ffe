"""The performs of one event: `send_event`, `invite`, `join` (local path), `leave`, `forget`.

Kicks, bans and unbans are `send_event`s of `m.room.member` with the target as state key.

Spec: https://spec.matrix.org/latest/client-server-api/#room-membership and, for restricted
joins, https://spec.matrix.org/latest/client-server-api/#restricted-rooms (the joining server
names an authorising user: a member with the power to invite; the auth rules check it).
"""

from __future__ import annotations

from typing import Any

from worker.core.auth import PowerLevels
from worker.core.builder import Draft
from worker.core.events import MEMBER, Event, StateKey
from worker.core.ids import domain_of, is_valid_user_id
from worker.core.versions import RoomRules
from worker.messages.perform import (
    Empty,
    ForgetRequest,
    InviteRequest,
    InviteResponse,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    LeaveResponse,
    SendEventRequest,
    SendEventResponse,
)
from worker.perform import remote_members
from worker.perform.writer import PerformFailed, RoomWriter

JOIN_RULES = "m.room.join_rules"
MAX_TXN_ID_BYTES = 255


async def send_event(writer: RoomWriter, req: SendEventRequest) -> SendEventResponse:
    writer.local_user(req.sender, "sender")
    if not req.type:
        raise PerformFailed("bad_request", "type is required")
    if req.txn_id is not None and not 0 < len(req.txn_id.encode()) <= MAX_TXN_ID_BYTES:
        raise PerformFailed("bad_request", f"txn_id must be 1 to {MAX_TXN_ID_BYTES} bytes")
    draft = Draft(req.type, req.sender, req.content, req.state_key, req.redacts)
    await writer.rules_of(req.room_id)
    if req.txn_id is None:
        built = await writer.write(req.room_id, draft)
        return SendEventResponse(event_id=built.event_id)
    return SendEventResponse(event_id=await writer.write_once(req.room_id, draft, req.txn_id))


async def invite(writer: RoomWriter, req: InviteRequest) -> InviteResponse:
    writer.local_user(req.sender, "sender")
    if not is_valid_user_id(req.user_id):
        raise PerformFailed("bad_request", f"user_id {req.user_id!r} is not a user ID")
    content: dict[str, Any] = {"membership": "invite"}
    if req.reason:
        content["reason"] = req.reason
    if req.is_direct:
        content["is_direct"] = True
    if domain_of(req.user_id) != writer.server_name:
        return InviteResponse(event_id=await remote_members.invite(writer, req, content))
    built = await writer.write(req.room_id, Draft(MEMBER, req.sender, content, req.user_id))
    return InviteResponse(event_id=built.event_id)


async def _room_of(writer: RoomWriter, room_id_or_alias: str) -> str:
    if room_id_or_alias.startswith("#"):
        found = await writer.store.alias(room_id_or_alias)
        if found is None:
            raise PerformFailed("not_found", f"unknown alias {room_id_or_alias}")
        return found[0]
    if not room_id_or_alias.startswith("!"):
        raise PerformFailed("bad_request", f"{room_id_or_alias!r} is neither a room ID nor alias")
    return room_id_or_alias


async def _authoriser(writer: RoomWriter, room_id: str, user_id: str) -> str | None:
    """For a restricted room the user may join: a local member who may invite, to name as
    `join_authorised_via_users_server`. None when the user meets no allow condition or no
    local member has the power (the join is then refused by the auth rules)."""
    state = await writer.state_events(room_id, [("m.room.create", ""), ("m.room.power_levels",
                                                                         ""), (JOIN_RULES, "")])
    rules_event = state.get((JOIN_RULES, ""))
    allow = rules_event.content.get("allow") if rules_event is not None else None
    allowed = False
    for entry in allow if isinstance(allow, list) else []:
        other = entry.get("room_id") if isinstance(entry, dict) else None
        if entry.get("type") != "m.room_membership" or not isinstance(other, str):
            continue
        if await writer.reads.room_version(other) is None:
            continue
        member = (await writer.state_events(other, [(MEMBER, user_id)])).get((MEMBER, user_id))
        if member is not None and member.membership == "join":
            allowed = True
            break
    if not allowed:
        return None
    members = await writer.state_events(room_id, [(MEMBER, "*")])
    power = PowerLevels.from_auth_events(_rules(state), state)
    invite_level = power.named("invite")
    candidates = sorted(
        (e.state_key for e in members.values()
         if e.membership == "join" and e.state_key and domain_of(e.state_key) == writer.server_name
         and power.user_level(e.state_key) >= invite_level),
        key=lambda u: (-power.user_level(u), u),
    )
    return candidates[0] if candidates else None


def _rules(state: dict[StateKey, Event]) -> RoomRules:
    create = state.get(("m.room.create", ""))
    if create is None:
        raise PerformFailed("internal", "the room has no create event in its current state")
    return create.rules


async def join(writer: RoomWriter, req: JoinRequest) -> JoinResponse:
    writer.local_user(req.user_id, "user_id")
    req = await remote_members.resolve_alias(writer, req)
    room_id = await _room_of(writer, req.room_id_or_alias)
    if await writer.reads.room_version(room_id) is None or not await _server_in_room(
        writer, room_id
    ):
        event_id = await remote_members.join(writer, room_id, req)
        await writer.store.set_forgotten(req.user_id, room_id, False)
        return JoinResponse(room_id=room_id, event_id=event_id)
    content: dict[str, Any] = {**req.content, "membership": "join"}
    current = await writer.state_events(room_id, [(MEMBER, req.user_id), (JOIN_RULES, "")])
    membership = current.get((MEMBER, req.user_id))
    rule = current.get((JOIN_RULES, ""))
    join_rule = rule.content.get("join_rule") if rule is not None else None
    already = membership.membership if membership is not None else None
    if join_rule in ("restricted", "knock_restricted") and already not in ("join", "invite"):
        authoriser = await _authoriser(writer, room_id, req.user_id)
        if authoriser is not None:
            # Our own signature doubles as the authorising server's: the user is local.
            content["join_authorised_via_users_server"] = authoriser
    built = await writer.write(room_id, Draft(MEMBER, req.user_id, content, req.user_id))
    await writer.store.set_forgotten(req.user_id, room_id, False)
    return JoinResponse(room_id=room_id, event_id=built.event_id)


async def _server_in_room(writer: RoomWriter, room_id: str) -> bool:
    members = await writer.state_events(room_id, [(MEMBER, "*")])
    return any(
        e.membership == "join" and domain_of(k[1]) == writer.server_name
        for k, e in members.items()
    )


async def leave(writer: RoomWriter, req: LeaveRequest) -> LeaveResponse:
    writer.local_user(req.user_id, "user_id")
    rejected = await remote_members.reject_invite(writer, req)
    if rejected is not None:
        return LeaveResponse(event_id=rejected)
    if await writer.reads.room_version(req.room_id) is None:
        raise PerformFailed(
            "unavailable",
            f"{req.room_id} is not known here: rejecting a remote invite needs make_leave / "
            "send_leave over federation, which this roomserver does not do yet",
        )
    content: dict[str, Any] = {"membership": "leave"}
    if req.reason:
        content["reason"] = req.reason
    built = await writer.write(req.room_id, Draft(MEMBER, req.user_id, content, req.user_id))
    return LeaveResponse(event_id=built.event_id)


async def forget(writer: RoomWriter, req: ForgetRequest) -> Empty:
    writer.local_user(req.user_id, "user_id")
    await writer.rules_of(req.room_id)
    member = (await writer.state_events(req.room_id, [(MEMBER, req.user_id)])).get(
        (MEMBER, req.user_id)
    )
    if member is not None and member.membership in ("join", "invite", "knock"):
        raise PerformFailed(
            "bad_request", f"{req.user_id} is still {member.membership} in {req.room_id}: "
            "leave it first"
        )
    await writer.store.set_forgotten(req.user_id, req.room_id, True)
    return Empty()


__all__ = ["forget", "invite", "join", "leave", "send_event"]
