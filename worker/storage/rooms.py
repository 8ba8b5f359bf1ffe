"""The rooms table: a room's row (version, current snapshot, extremities, notes).

A write transaction reads its room's row with its first statement, under the room's lock,
creating the row if the room is new (`UPSERT_ROOM`); the run and group writes reserve the NIDs
of the events and snapshot layers they will insert in the same round trip (`*_RESERVING`:
they also draw from the `events` and `state_snapshots` sequences). The end of a write updates
the row (`worker.storage.finish`).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from worker.storage.params import array_param, keys_param

# The rows of the rooms named in $1 (those that exist), one probe each.
SELECT_ROOMS = f"""
SELECT r.room_nid, r.room_id, r.room_version, r.current_snapshot_nid, r.extremities
FROM {keys_param(1, "text")} AS k(key) CROSS JOIN LATERAL (
    SELECT * FROM rooms y WHERE y.room_id = k.key LIMIT 1
) r
"""

# The room is nearly always there already: read it first, and only a missing room reaches
# the INSERT (which would otherwise draw a room NID from the sequence and probe the unique
# index again, only to conflict).
UPSERT_ROOM = """
WITH old AS (
    SELECT room_nid, room_id, room_version, current_snapshot_nid, extremities
    FROM rooms WHERE room_id = $1
), ins AS (
    INSERT INTO rooms (room_id, room_version)
    SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM old)
    ON CONFLICT (room_id) DO NOTHING
    RETURNING room_nid, room_id, room_version, current_snapshot_nid, extremities
)
SELECT * FROM ins
UNION ALL
SELECT * FROM old
"""

# UPSERT_ROOM and RESERVE_EVENT_NIDS in one round trip: the room row, plus `reserved`.
_reserved_column = (
    "ARRAY(SELECT nextval(pg_get_serial_sequence('events', 'event_nid'))"
    " FROM generate_series(1, (SELECT $3::int))) AS reserved"
)
_room_tail = "SELECT * FROM ins\nUNION ALL\nSELECT * FROM old\n"
if not UPSERT_ROOM.endswith(_room_tail):
    raise RuntimeError("UPSERT_ROOM changed shape: update UPSERT_ROOM_RESERVING")
UPSERT_ROOM_RESERVING = (
    UPSERT_ROOM.removesuffix(_room_tail)
    + f"SELECT *, {_reserved_column} FROM ins\nUNION ALL\nSELECT *, {_reserved_column} FROM old\n"
)



# UPSERT_ROOM_RESERVING for several rooms in one round trip (a group commit): $1 room IDs,
# $2 their versions, $3 how many event NIDs to reserve for each, $4 how many snapshot NIDs
# (`layers`, for the state layers the group writes at its end). Rooms nearly always exist:
# each is probed by its key first, and only missing ones reach the INSERT.
UPSERT_ROOMS_RESERVING = f"""
WITH req AS (
    SELECT * FROM unnest({array_param(1, "text")}, {array_param(2, "text")},
                         {array_param(3, "int")}, {array_param(4, "int")})
         AS r(room_id, room_version, reserve, layers)
), old AS (
    SELECT x.room_nid, x.room_id, x.room_version, x.current_snapshot_nid, x.extremities
    FROM req CROSS JOIN LATERAL (
        SELECT * FROM rooms y WHERE y.room_id = req.room_id LIMIT 1
    ) x
), ins AS (
    INSERT INTO rooms (room_id, room_version)
    SELECT room_id, room_version FROM req
    WHERE NOT EXISTS (SELECT 1 FROM old WHERE old.room_id = req.room_id)
    ORDER BY room_id
    ON CONFLICT (room_id) DO NOTHING
    RETURNING room_nid, room_id, room_version, current_snapshot_nid, extremities
), found AS (
    SELECT * FROM ins UNION ALL SELECT * FROM old
)
SELECT found.*,
       ARRAY(SELECT nextval(pg_get_serial_sequence('events', 'event_nid'))
             FROM generate_series(1, req.reserve)) AS reserved,
       ARRAY(SELECT nextval(pg_get_serial_sequence('state_snapshots', 'snapshot_nid'))
             FROM generate_series(1, req.layers)) AS layers
FROM found JOIN req USING (room_id)
"""

# A room's version, for the query reads.
SELECT_ROOM_VERSION = "SELECT room_version FROM rooms WHERE room_id = $1"

# A room's row as an operator inspects it.
SELECT_ROOM_SUMMARY = """
SELECT room_id, room_version, extremities, notes FROM rooms WHERE room_id = $1
"""

# Every room, oldest first (the inspector's list).
SELECT_ROOM_IDS = "SELECT room_id FROM rooms ORDER BY room_nid"


@dataclass(frozen=True, slots=True)
class RoomRow:
    room_nid: int
    room_id: str
    version: str
    current_snapshot_nid: int | None
    extremities: list[str]


def room_row(r: asyncpg.Record) -> RoomRow:
    return RoomRow(
        r["room_nid"],
        r["room_id"],
        r["room_version"],
        r["current_snapshot_nid"],
        list(r["extremities"]),
    )


__all__ = [
    "SELECT_ROOMS",
    "SELECT_ROOM_IDS",
    "SELECT_ROOM_SUMMARY",
    "SELECT_ROOM_VERSION",
    "UPSERT_ROOM",
    "UPSERT_ROOMS_RESERVING",
    "UPSERT_ROOM_RESERVING",
    "RoomRow",
    "room_row",
]
