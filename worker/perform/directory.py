"""Aliases and the room directory: `set_alias`, `remove_alias`, `publish`, and the queries
`room_for_alias`, `aliases_for_room`, `published_rooms`, `server_keys`.

Spec: https://spec.matrix.org/latest/client-server-api/#room-aliases and
https://spec.matrix.org/latest/client-server-api/#listing-rooms. Only aliases of this server
are kept here; another server's alias is resolved by the federation API.
"""

from __future__ import annotations

from worker.core.auth import PowerLevels
from worker.core.events import MEMBER
from worker.core.ids import domain_of
from worker.messages.perform import (
    AliasesForRoomRequest,
    AliasesForRoomResponse,
    Empty,
    PublishedRoomsRequest,
    PublishedRoomsResponse,
    PublishRequest,
    RemoveAliasRequest,
    RoomForAliasRequest,
    RoomForAliasResponse,
    ServerKeysRequest,
    ServerKeysResponse,
    SetAliasRequest,
)
from worker.perform.writer import PerformFailed, RoomWriter

CANONICAL_ALIAS = "m.room.canonical_alias"
MAX_PAGE = 1000


def check_alias(writer: RoomWriter, alias: str) -> None:
    """`bad_request` unless `alias` is `#localpart:<our server>` within 255 bytes."""
    localpart, colon, _ = alias[1:].partition(":")
    if not alias.startswith("#") or not colon or not localpart or len(alias.encode()) > 255:
        raise PerformFailed("bad_request", f"{alias!r} is not a room alias")
    if domain_of(alias) != writer.server_name:
        raise PerformFailed(
            "bad_request", f"{alias} is an alias of another server, not {writer.server_name}"
        )


async def set_alias(writer: RoomWriter, req: SetAliasRequest) -> Empty:
    check_alias(writer, req.alias)
    writer.local_user(req.user_id, "user_id")
    await writer.rules_of(req.room_id)
    member = (await writer.state_events(req.room_id, [(MEMBER, req.user_id)])).get(
        (MEMBER, req.user_id)
    )
    if member is None or member.membership != "join":
        raise PerformFailed(
            "forbidden", f"{req.user_id} is not in {req.room_id}",
            reason_code="not_in_room", reason="only members of a room may give it an alias",
        )
    if not await writer.store.add_alias(req.alias, req.room_id, req.user_id):
        raise PerformFailed("conflict", f"the alias {req.alias} is taken")
    return Empty()


async def remove_alias(writer: RoomWriter, req: RemoveAliasRequest) -> Empty:
    check_alias(writer, req.alias)
    writer.local_user(req.user_id, "user_id")
    found = await writer.store.alias(req.alias)
    if found is None:
        raise PerformFailed("not_found", f"unknown alias {req.alias}")
    room_id, creator = found
    if req.user_id != creator and not await _may_change_canonical_alias(
        writer, room_id, req.user_id
    ):
        raise PerformFailed(
            "forbidden", f"{req.user_id} may not remove {req.alias}",
            reason_code="insufficient_power",
            reason="only the alias's creator or a user who may change the room's canonical "
            "alias may remove it",
        )
    await writer.store.remove_alias(req.alias)
    return Empty()


async def _may_change_canonical_alias(writer: RoomWriter, room_id: str, user_id: str) -> bool:
    state = await writer.state_events(
        room_id, [("m.room.create", ""), ("m.room.power_levels", "")]
    )
    create = state.get(("m.room.create", ""))
    if create is None:
        return False
    power = PowerLevels.from_auth_events(create.rules, state)
    return power.user_level(user_id) >= power.required_level(CANONICAL_ALIAS, True)


async def publish(writer: RoomWriter, req: PublishRequest) -> Empty:
    await writer.rules_of(req.room_id)
    await writer.store.set_published(req.room_id, req.visibility == "public")
    return Empty()


async def room_for_alias(writer: RoomWriter, req: RoomForAliasRequest) -> RoomForAliasResponse:
    check_alias(writer, req.alias)
    found = await writer.store.alias(req.alias)
    if found is None:
        raise PerformFailed("not_found", f"unknown alias {req.alias}")
    room_id = found[0]
    members = await writer.state_events(room_id, [(MEMBER, "*")])
    others = sorted({
        d for k, e in members.items()
        if e.membership == "join" and (d := domain_of(k[1])) and d != writer.server_name
    })
    return RoomForAliasResponse(room_id=room_id, servers=[writer.server_name, *others])


async def aliases_for_room(
    writer: RoomWriter, req: AliasesForRoomRequest
) -> AliasesForRoomResponse:
    await writer.rules_of(req.room_id)
    return AliasesForRoomResponse(aliases=await writer.store.aliases_for_room(req.room_id))


async def published_rooms(
    writer: RoomWriter, req: PublishedRoomsRequest
) -> PublishedRoomsResponse:
    if not 0 < req.limit <= MAX_PAGE:
        raise PerformFailed("bad_request", f"limit must be 1 to {MAX_PAGE}")
    if req.since and not req.since.isdigit():
        raise PerformFailed("bad_request", f"since {req.since!r} is not a next_batch token")
    room_ids, last, total = await writer.store.published_page(int(req.since or 0), req.limit)
    return PublishedRoomsResponse(
        room_ids=room_ids, next_batch=str(last) if last else "", total=total
    )


async def server_keys(writer: RoomWriter, req: ServerKeysRequest) -> ServerKeysResponse:
    key = writer.key
    return ServerKeysResponse(
        server_name=key.server_name, verify_keys={key.key_id: key.verify_key_b64}
    )


__all__ = [
    "aliases_for_room",
    "check_alias",
    "publish",
    "published_rooms",
    "remove_alias",
    "room_for_alias",
    "server_keys",
    "set_alias",
]
