"""The admin performs that empty a room or a user's memberships (DESIGN §3 "Lifecycle", §4):
`evacuate_room` (every member of this server leaves the room) and `evacuate_user` (a user of
this server leaves every room).

Each leave is the `leave` perform (`worker.perform.members.leave`) as the user themselves:
the server acts for its own users, and leaving (or rejecting an invite, or retracting a
knock) needs no power in the room. Who is where comes from the membership index the
homeserver queries read, through the narrow `MemberReads` port below.

A leave that fails does not stop the others: the answer lists the leaves done and, apart,
those that failed with the leave's error code and message, so the operator can ask again
for what is left. Leaves of one room are pipelined by the writer (each built on the one
before while its verdict is on the way); leaves of different rooms run side by side, at
most `MAX_AT_ONCE` at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import msgspec
import structlog

from worker.core.events import MEMBER, StateKey
from worker.core.ids import domain_of
from worker.messages import admin as m
from worker.messages.perform import LeaveRequest
from worker.perform.members import leave
from worker.perform.writer import PerformFailed, RoomWriter
from worker.query.homeserver_ports import RoomState

log = structlog.get_logger(__name__)

# Memberships a leave ends: a join, an invite (rejected) and a knock (retracted).
EVACUATED = ("join", "invite", "knock")
MAX_AT_ONCE = 16

Handler = Callable[[RoomWriter, Any], Awaitable[msgspec.Struct]]


class MemberReads(Protocol):
    """The membership index (`worker.storage.homeserver_reads.PostgresHomeserverReads`)."""

    async def current_state(
        self, room_ids: Sequence[str], keys: Sequence[StateKey]
    ) -> dict[str, RoomState]:
        """The known rooms among `room_ids` with their current state at `keys` (a `"*"`
        state key: every key of the type); unknown rooms are absent."""
        ...

    async def rooms_of_user(self, user_id: str, membership: str) -> list[str]:
        """Rooms where the user's membership in the current state is `membership`."""
        ...


class Evacuations:
    """`evacuate_room` and `evacuate_user`, as Perform API handlers (`handlers`)."""

    def __init__(self, reads: MemberReads) -> None:
        self._reads = reads

    @property
    def handlers(self) -> dict[str, tuple[type[msgspec.Struct], Handler]]:
        """Perform name -> (request type, handler), for `worker.perform.service`."""
        return {
            "evacuate_room": (m.EvacuateRoomRequest, self.evacuate_room),
            "evacuate_user": (m.EvacuateUserRequest, self.evacuate_user),
        }

    async def local_members(self, writer: RoomWriter, room_id: str) -> list[str]:
        """The room's members of this server who are joined, invited or knocking, sorted;
        `not_found` for a room the roomserver does not know."""
        if not room_id:
            raise PerformFailed("bad_request", "room_id is required")
        found = await self._reads.current_state([room_id], [(MEMBER, "*")])
        room = found.get(room_id)
        if room is None:
            raise PerformFailed("not_found", f"unknown room {room_id!r}")
        return sorted(
            key[1] for key, entry in room.entries.items()
            if domain_of(key[1]) == writer.server_name
            and entry.content.get("membership") in EVACUATED
        )

    async def rooms_of(self, writer: RoomWriter, user_id: str) -> list[str]:
        """The rooms the user (of this server) is joined to, invited to or knocking on."""
        writer.local_user(user_id, "user_id")
        rooms: set[str] = set()
        for membership in EVACUATED:
            rooms.update(await self._reads.rooms_of_user(user_id, membership))
        return sorted(rooms)

    async def evacuate_room(
        self, writer: RoomWriter, req: m.EvacuateRoomRequest
    ) -> m.EvacuateRoomResponse:
        users = await self.local_members(writer, req.room_id)
        done, failed = await _leaves(writer, [(req.room_id, u) for u in users], req.reason)
        return m.EvacuateRoomResponse(
            room_id=req.room_id, event_ids=[e for _, _, e in done],
            user_ids=[u for _, u, _ in done], failed=failed,
        )

    async def evacuate_user(
        self, writer: RoomWriter, req: m.EvacuateUserRequest
    ) -> m.EvacuateUserResponse:
        rooms = await self.rooms_of(writer, req.user_id)
        done, failed = await _leaves(writer, [(r, req.user_id) for r in rooms], req.reason)
        return m.EvacuateUserResponse(
            user_id=req.user_id, event_ids=[e for _, _, e in done],
            room_ids=[r for r, _, _ in done], failed=failed,
        )


async def _leaves(
    writer: RoomWriter, who: Sequence[tuple[str, str]], reason: str
) -> tuple[list[tuple[str, str, str]], list[m.EvacuationFailure]]:
    """Each (room, user) leaves; the (room, user, event ID) done and the failures, both in
    the order of `who`."""
    slots = asyncio.Semaphore(MAX_AT_ONCE)

    async def one(room_id: str, user_id: str) -> str | m.EvacuationFailure:
        async with slots:
            try:
                left = await leave(writer, LeaveRequest(room_id=room_id, user_id=user_id,
                                                        reason=reason or None))
            except PerformFailed as exc:
                return m.EvacuationFailure(room_id=room_id, user_id=user_id, code=exc.code,
                                           message=exc.message)
            except Exception as exc:
                # One broken room must not keep the user in every other one.
                log.exception("evacuation_leave_failed", room_id=room_id, user_id=user_id)
                return m.EvacuationFailure(room_id=room_id, user_id=user_id, code="internal",
                                           message=f"{type(exc).__name__}: {exc}")
            return left.event_id

    outcomes = await asyncio.gather(*(one(r, u) for r, u in who))
    done = [(r, u, o) for (r, u), o in zip(who, outcomes, strict=True) if isinstance(o, str)]
    failed = [o for o in outcomes if isinstance(o, m.EvacuationFailure)]
    return done, failed


__all__ = ["EVACUATED", "Evacuations", "MemberReads"]
