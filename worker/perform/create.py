"""`create_room`: the events of the client-server API's `/createRoom`, in its order.

Spec: https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3createroom
("Room creation" steps):

1. `m.room.create` (`creation_content` plus `room_version`; v1-v10 name the creator);
2. the creator's `m.room.member` join;
3. `m.room.power_levels`: the defaults, raised for trusted_private_chat invitees, then
   `power_level_content_override` on top;
4. `m.room.canonical_alias` when `room_alias_name` is given;
5. the preset's `m.room.join_rules`, `m.room.history_visibility`, `m.room.guest_access`
   (each left out when `initial_state` sets it);
6. `initial_state`;
7. `m.room.name` and `m.room.topic`;
8. an `m.room.member` invite per invitee (`is_direct` in its content).

The default power levels are Synapse's, so rooms made here look the same to clients. In v12
creators have infinite power and must not appear in `users`; trusted_private_chat invitees
become `additional_creators` instead (as Synapse does, MSC4289).
"""

from __future__ import annotations

from typing import Any

from worker.core.builder import Draft, RoomHead
from worker.core.events import MEMBER
from worker.core.ids import is_valid_user_id
from worker.core.versions import RoomRules, rules_for
from worker.messages.perform import CreateRoomRequest, CreateRoomResponse
from worker.perform.writer import PerformFailed, RoomWriter

CREATE = "m.room.create"
POWER_LEVELS = "m.room.power_levels"

# Preset -> (join rule, history visibility, guest access, invite level).
PRESETS: dict[str, tuple[str, str, str | None, int]] = {
    "private_chat": ("invite", "shared", "can_join", 0),
    "trusted_private_chat": ("invite", "shared", "can_join", 0),
    "public_chat": ("public", "shared", "forbidden", 50),
}

# Synapse's default levels of the event types a room's administrators control.
DEFAULT_EVENT_LEVELS = {
    "m.room.name": 50,
    "m.room.power_levels": 100,
    "m.room.history_visibility": 100,
    "m.room.canonical_alias": 50,
    "m.room.avatar": 50,
    "m.room.tombstone": 100,
    "m.room.server_acl": 100,
    "m.room.encryption": 100,
}


def default_power_levels(
    rules: RoomRules, creator: str, trusted: list[str], invite_level: int
) -> dict[str, Any]:
    """The power levels a new room starts with."""
    users: dict[str, int] = {}
    if not rules.privileged_creators:
        users[creator] = 100
        for user in trusted:
            users[user] = 100
    return {
        "users": users,
        "users_default": 0,
        "events": dict(DEFAULT_EVENT_LEVELS),
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": invite_level,
        "historical": 100,
    }


def check_version(writer: RoomWriter, version: str) -> RoomRules:
    rules = rules_for(version or writer.default_room_version)
    if rules is None:
        raise PerformFailed("bad_request", f"unsupported room version {version!r}")
    return rules


def alias_of(writer: RoomWriter, name: str) -> str:
    """`#name:server` for a `room_alias_name`; bad_request for a name that cannot be one."""
    if not name or ":" in name or any(c.isspace() for c in name) or name.startswith("#"):
        raise PerformFailed("bad_request", f"room_alias_name {name!r} is not an alias localpart")
    alias = f"#{name}:{writer.server_name}"
    if len(alias.encode()) > 255:
        raise PerformFailed("bad_request", f"the alias {alias!r} is longer than 255 bytes")
    return alias


def creation_drafts(
    writer: RoomWriter, req: CreateRoomRequest, rules: RoomRules, alias: str | None
) -> list[Draft]:
    """The events of the new room, in `/createRoom` order."""
    creator = req.creator
    preset = req.preset or ("public_chat" if req.visibility == "public" else "private_chat")
    join_rule, history, guest, invite_level = PRESETS[preset]
    trusted = list(req.invite) if preset == "trusted_private_chat" else []
    create_content: dict[str, Any] = dict(req.creation_content or {})
    create_content["room_version"] = rules.version
    if rules.privileged_creators and trusted:
        extra = [u for u in create_content.get("additional_creators", []) if u != creator]
        create_content["additional_creators"] = sorted(set(extra) | set(trusted))
    power = default_power_levels(rules, creator, trusted, invite_level)
    power.update(req.power_level_content_override or {})
    initial = {(s.type, s.state_key): s for s in req.initial_state}
    drafts = [
        Draft(CREATE, creator, create_content, ""),
        Draft(MEMBER, creator, {"membership": "join"}, creator),
        Draft(POWER_LEVELS, creator, power, ""),
    ]
    if alias is not None:
        drafts.append(Draft("m.room.canonical_alias", creator, {"alias": alias}, ""))
    preset_state: list[tuple[str, dict[str, Any]]] = [
        ("m.room.join_rules", {"join_rule": join_rule}),
        ("m.room.history_visibility", {"history_visibility": history}),
    ]
    if guest is not None:
        preset_state.append(("m.room.guest_access", {"guest_access": guest}))
    for event_type, preset_content in preset_state:
        if (event_type, "") not in initial:
            drafts.append(Draft(event_type, creator, preset_content, ""))
    for state in req.initial_state:
        drafts.append(Draft(state.type, creator, state.content, state.state_key))
    if req.name is not None:
        drafts.append(Draft("m.room.name", creator, {"name": req.name}, ""))
    if req.topic is not None:
        drafts.append(Draft("m.room.topic", creator, {"topic": req.topic}, ""))
    for user in req.invite:
        content: dict[str, Any] = {"membership": "invite"}
        if req.is_direct:
            content["is_direct"] = True
        drafts.append(Draft(MEMBER, creator, content, user))
    return drafts


def _check_request(writer: RoomWriter, req: CreateRoomRequest) -> None:
    writer.local_user(req.creator, "creator")
    for user in req.invite:
        if not is_valid_user_id(user):
            raise PerformFailed("bad_request", f"invitee {user!r} is not a user ID")
        if user.partition(":")[2] != writer.server_name:
            raise PerformFailed(
                "unavailable",
                f"inviting {user} needs their server's countersignature over federation, "
                "which this roomserver does not do yet",
            )
    for state in req.initial_state:
        if state.type in (CREATE, MEMBER):
            raise PerformFailed("bad_request", f"initial_state may not hold {state.type}")


async def create_room(writer: RoomWriter, req: CreateRoomRequest) -> CreateRoomResponse:
    _check_request(writer, req)
    rules = check_version(writer, req.room_version)
    alias = alias_of(writer, req.room_alias_name) if req.room_alias_name else None
    if alias is not None and await writer.store.alias(alias) is not None:
        raise PerformFailed("conflict", f"the alias {alias} is taken")
    room_id = "" if rules.room_id_from_create_event else writer.opaque_id("!")
    built = await writer.write_chain(RoomHead(rules, room_id), creation_drafts(
        writer, req, rules, alias
    ))
    room_id = built[0].room_id
    if alias is not None and not await writer.store.add_alias(alias, room_id, req.creator):
        raise PerformFailed("conflict", f"the alias {alias} was taken meanwhile")
    if req.visibility == "public":
        await writer.store.set_published(room_id, True)
    return CreateRoomResponse(room_id=room_id, room_alias=alias)


__all__ = ["PRESETS", "create_room", "creation_drafts", "default_power_levels"]
