"""SQL for writing a run of a batch's events in one statement (`PostgresStore.persist_many`).

A batch's events are new to the store (the batch checked each was not stored, under the
room's lease and lock), so their rows are plain inserts: their NIDs are reserved first, in
one round trip, so that the snapshots that name them can be planned before the rows exist,
and then every row (event, JSON, prev references, write log) goes in with one statement.
If some event turned out to be stored after all (`ON CONFLICT DO NOTHING` skipped it), the
caller aborts the transaction: the upsert path of one-by-one writes handles that case.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from worker.storage import events as ev_sql

# NIDs for `n` events about to be inserted, in the order they will be used.
RESERVE_EVENT_NIDS = """
SELECT nextval(pg_get_serial_sequence('events', 'event_nid')) AS nid
FROM generate_series(1, (SELECT $1::int))
"""

# UPSERT_ROOM and RESERVE_EVENT_NIDS in one round trip: the room row, plus `reserved`.
_reserved_column = (
    "ARRAY(SELECT nextval(pg_get_serial_sequence('events', 'event_nid'))"
    " FROM generate_series(1, (SELECT $3::int))) AS reserved"
)
_room_tail = "SELECT * FROM ins\nUNION ALL\nSELECT * FROM old\n"
if not ev_sql.UPSERT_ROOM.endswith(_room_tail):
    raise RuntimeError("UPSERT_ROOM changed shape: update UPSERT_ROOM_RESERVING")
UPSERT_ROOM_RESERVING = (
    ev_sql.UPSERT_ROOM.removesuffix(_room_tail)
    + f"SELECT *, {_reserved_column} FROM ins\nUNION ALL\nSELECT *, {_reserved_column} FROM old\n"
)

# $1..$13: one array element per event (the room's NID is $13: one statement may carry
# the events of several rooms, a group commit's); $14, $15: the prev references as
# parallel arrays (prev event ID, the NID of the event naming it). auth_event_nids travel as
# array literals ('{1,2}'): a SQL array of arrays must be rectangular.
INSERT_EVENTS = """
WITH u AS (
    SELECT *
    FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                $6::smallint[], $7::smallint[], $8::text[], $9::text[], $10::smallint[],
                $11::text[], $12::bigint[], $13::bigint[], $16::bytea[])
         AS u(event_nid, event_id, type_nid, state_key_nid, depth, kind, outcome,
              reason_code, reason, membership, auth, before, room_nid, json)
), e AS (
    INSERT INTO events (event_nid, event_id, room_nid, type_nid, state_key_nid, depth, kind,
                        outcome, reason_code, reason, membership, auth_event_nids,
                        before_snapshot_nid)
    OVERRIDING SYSTEM VALUE
    SELECT event_nid, event_id, room_nid, type_nid, state_key_nid, depth, kind, outcome,
           reason_code, reason, membership, auth::bigint[], before
    FROM u
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_nid, room_nid
), j AS (
    INSERT INTO event_json (event_nid, json)
    SELECT u.event_nid, u.json FROM u WHERE u.event_nid IN (SELECT event_nid FROM e)
), p AS (
    INSERT INTO event_prevs (prev_event_id, event_nid)
    SELECT prev, nid FROM unnest($14::text[], $15::bigint[]) AS r(prev, nid)
    WHERE nid IN (SELECT event_nid FROM e)
    ON CONFLICT DO NOTHING
), w AS (
    INSERT INTO write_log (room_nid, event_nid, worker, txn_started, written)
    SELECT room_nid, event_nid, current_setting('application_name'), now(), clock_timestamp()
    FROM e
)
SELECT count(*) FROM e
"""

# UPSERT_ROOM_RESERVING for several rooms in one round trip (a group commit): $1 room IDs,
# $2 their versions, $3 how many event NIDs to reserve for each. Rooms nearly always exist:
# each is probed by its key first, and only missing ones reach the INSERT.
UPSERT_ROOMS_RESERVING = f"""
WITH req AS (
    SELECT * FROM unnest({ev_sql.array_param(1, "text")}, {ev_sql.array_param(2, "text")},
                         {ev_sql.array_param(3, "int")}) AS r(room_id, room_version, reserve)
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
             FROM generate_series(1, req.reserve)) AS reserved
FROM found JOIN req USING (room_id)
"""


def nid_array(nids: Sequence[int]) -> str:
    """A bigint[] literal."""
    return "{" + ",".join(str(n) for n in nids) + "}"


async def reserve_event_nids(conn: asyncpg.Connection, n: int) -> list[int]:
    rows = await conn.fetch(RESERVE_EVENT_NIDS, n)
    return sorted(int(r["nid"]) for r in rows)
