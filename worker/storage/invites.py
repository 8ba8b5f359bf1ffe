"""Reads of invites to rooms this server is not in (input kind `invite`, STYLE R8).

Such an invite, and the leave that rejects it, are stored as outliers of a room with no
state of ours (no current snapshot). The membership of a user there is that of the latest
of those member events: `invite` until the leave (or, once we join, the room's state)
says otherwise. `rooms_for_user` with membership `invite` lists these rooms too
(`invited_rooms`), beside the invites of the rooms' current states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

# The preassigned NID of `m.room.member` (schemas/sql/0001_initial.sql); kind 2: outlier.
_MEMBER_TYPE_NID = 5
_OUTLIER_KIND = 2
_MEMBERSHIPS = {1: "leave", 2: "invite", 3: "join", 4: "knock", 5: "ban"}
_INVITE = 2

# The user's latest outlier member event in a room we hold no state of.
SELECT_OUTLIER_MEMBERSHIP = f"""
SELECT e.event_id, e.membership, r.room_version,
       (SELECT j.json FROM event_json j WHERE j.event_nid = e.event_nid) AS json
FROM rooms r
JOIN events e ON e.room_nid = r.room_nid
WHERE r.room_id = $1 AND r.current_snapshot_nid IS NULL
  AND e.type_nid = {_MEMBER_TYPE_NID} AND e.kind = {_OUTLIER_KIND}
  AND e.state_key_nid = (SELECT s.state_key_nid FROM state_keys s WHERE s.state_key = $2)
ORDER BY e.event_nid DESC
LIMIT 1
"""

# The rooms we hold no state of where the user's latest outlier member event is an invite
# (`invited_rooms`): the rooms of the user's outlier member events by one range of
# events_outlier_member_idx (schemas/sql/0008), each room's row by its key, then the user's
# latest outlier member event there (events_room_member_idx). $1: the user's state key NID.
SELECT_INVITED_ROOMS = f"""
SELECT r.room_id
FROM (
    SELECT DISTINCT o.room_nid FROM events o
    WHERE o.state_key_nid = $1 AND o.type_nid = {_MEMBER_TYPE_NID} AND o.kind = {_OUTLIER_KIND}
) c
CROSS JOIN LATERAL (SELECT * FROM rooms y WHERE y.room_nid = c.room_nid LIMIT 1) r
CROSS JOIN LATERAL (
    SELECT e.membership FROM events e
    WHERE e.room_nid = c.room_nid AND e.type_nid = {_MEMBER_TYPE_NID}
      AND e.state_key_nid = $1 AND e.kind = {_OUTLIER_KIND}
    ORDER BY e.event_nid DESC
    LIMIT 1
) latest
WHERE r.current_snapshot_nid IS NULL AND latest.membership = {_INVITE}
"""


@dataclass(frozen=True, slots=True)
class OutlierMembership:
    """A user's membership in a room known only through an invite."""

    event_id: str
    membership: str
    room_version: str
    # The stored PDU (JSON, without the v3+ event ID).
    json: bytes


class PgInviteReads:
    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def outlier_membership(self, room_id: str, user_id: str) -> OutlierMembership | None:
        row = await self._pool.fetchrow(SELECT_OUTLIER_MEMBERSHIP, room_id, user_id)
        if row is None:
            return None
        return OutlierMembership(
            event_id=row["event_id"],
            membership=_MEMBERSHIPS.get(row["membership"] or 0, ""),
            room_version=row["room_version"],
            json=bytes(row["json"]) if row["json"] is not None else b"{}",
        )


async def invited_rooms(conn: asyncpg.Connection, user_nid: int) -> list[str]:
    """The rooms we hold no state of in which the user (by state key NID) holds an invite
    not yet retired: a leave stored after it (a rejection) retires it, and so does a join,
    which gives the room a current state (the room's `memberships` then tell)."""
    return [r["room_id"] for r in await conn.fetch(SELECT_INVITED_ROOMS, user_nid)]


__all__ = ["OutlierMembership", "PgInviteReads", "invited_rooms"]
