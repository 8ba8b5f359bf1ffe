"""Reads of invites to rooms this server is not in (input kind `invite`, STYLE R8).

Such an invite, and the leave that rejects it, are stored as outliers of a room with no
state of ours (no current snapshot). The membership of a user there is that of the latest
of those member events: `invite` until the leave (or, once we join, the room's state)
says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

# The preassigned NID of `m.room.member` (schemas/sql/0001_initial.sql); kind 2: outlier.
_MEMBER_TYPE_NID = 5
_OUTLIER_KIND = 2
_MEMBERSHIPS = {1: "leave", 2: "invite", 3: "join", 4: "knock", 5: "ban"}

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


__all__ = ["OutlierMembership", "PgInviteReads"]
