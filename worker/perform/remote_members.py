"""Where the performs `join`, `leave` and `invite` take their remote paths
(`worker.perform.remote`): an alias of another server, a room with no user of ours, an
invite to a room we are not in, an invitee of another server."""

from __future__ import annotations

from typing import Any

import msgspec

from worker.core.builder import Draft
from worker.core.events import Event
from worker.core.format import parse_pdu
from worker.core.ids import domain_of
from worker.core.versions import rules_for
from worker.messages.perform import InviteRequest, JoinRequest, LeaveRequest
from worker.messages.perform_backfill import BackfillRequest, BackfillResponse
from worker.perform.remote import INVITE_STATE_KEYS, RemotePerformer
from worker.perform.writer import PerformFailed, RoomWriter, verdict


def _remote(writer: RoomWriter, what: str) -> RemotePerformer:
    if writer.remote is None:
        raise PerformFailed("unavailable", f"{what} needs the federation service, not configured")
    return writer.remote


async def resolve_alias(writer: RoomWriter, req: JoinRequest) -> JoinRequest:
    """The join request with an alias of another server resolved through that server's
    directory: its room ID, and the servers the directory names after those given (as
    Dendrite's join by alias does). Other requests come back as they are."""
    alias = req.room_id_or_alias
    if not alias.startswith("#") or domain_of(alias) == writer.server_name:
        return req
    remote = _remote(writer, f"resolving {alias}, an alias of another server,")
    room_id, servers = await remote.resolve_alias(alias)
    return msgspec.structs.replace(
        req, room_id_or_alias=room_id, server_names=[*req.server_names, *servers]
    )


async def join(writer: RoomWriter, room_id: str, req: JoinRequest) -> str:
    """Join through `req.server_names`, then the inviter's server of a pending invite, then
    the server in the room ID (v1-v11 IDs name the server that made the room)."""
    remote = _remote(writer, f"joining {room_id}, where no user of {writer.server_name} is,")
    servers = list(req.server_names)
    pending = await _pending(remote, room_id, req.user_id)
    if pending is not None:
        servers += _servers_of(pending)
    named = domain_of(room_id)
    if named:
        servers.append(named)
    async with writer.locks.hold(room_id):
        return await remote.join(room_id, req.user_id, servers, req.content)


async def reject_invite(writer: RoomWriter, req: LeaveRequest) -> str | None:
    """The leave of a room known only through an invite, through the inviter's server; None
    when the user holds no such invite (the local path applies)."""
    if writer.remote is None:
        return None
    pending = await _pending(writer.remote, req.room_id, req.user_id)
    if pending is None or pending.membership != "invite":
        return None
    return await writer.remote.reject_invite(
        req.room_id, req.user_id, pending.room_version, _servers_of(pending), req.reason or ""
    )


async def invite(writer: RoomWriter, req: InviteRequest, content: dict[str, Any]) -> str:
    """An invite of a user of another server: countersigned by their server, then submitted."""
    remote = _remote(writer, f"inviting {req.user_id}")
    draft = Draft("m.room.member", req.sender, content, req.user_id)
    async with writer.locks.hold(req.room_id):
        head = await writer.head(req.room_id, [draft])
        built = writer.build(draft, head)
        state = await writer.state_events(req.room_id, list(INVITE_STATE_KEYS))
        signed = await remote.countersign(built.event, state)
        reply = await writer.submitter.submit(
            req.room_id, head.rules.version, signed, built.event_id
        )
    verdict(reply)
    return built.event_id


async def _pending(remote: RemotePerformer, room_id: str, user_id: str) -> Any:
    return await remote.invites.outlier_membership(room_id, user_id) if remote.invites else None


def _servers_of(pending: Any) -> list[str]:
    """The server of the invite's sender, and the origin it names."""
    rules = rules_for(pending.room_version)
    event = parse_pdu(pending.json, rules, event_id=pending.event_id) if rules else None
    if not isinstance(event, Event):
        return []
    servers = [domain_of(event.sender) or ""]
    origin = event.pdu.get("origin")
    if isinstance(origin, str):
        servers.append(origin)
    return [s for s in servers if s]


async def backfill(writer: RoomWriter, req: BackfillRequest) -> BackfillResponse:
    """The `backfill` perform (`worker.perform.backfill`)."""
    remote = _remote(writer, "backfill")
    if remote.backfiller is None:
        raise PerformFailed("unavailable", "backfill is not configured")
    return await remote.backfiller.backfill(req)


__all__ = ["backfill", "invite", "join", "reject_invite", "resolve_alias"]
