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
# $2 their versions, $3 how many event NIDs to reserve for each, $4 how many snapshot NIDs
# (`layers`, for the state layers the group writes at its end). Rooms nearly always exist:
# each is probed by its key first, and only missing ones reach the INSERT.
UPSERT_ROOMS_RESERVING = f"""
WITH req AS (
    SELECT * FROM unnest({ev_sql.array_param(1, "text")}, {ev_sql.array_param(2, "text")},
                         {ev_sql.array_param(3, "int")}, {ev_sql.array_param(4, "int")})
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


_ROOMS_ARRAYS = ", ".join(
    ev_sql.array_param(n, t)
    for n, t in ((1, "bigint"), (2, "boolean"), (3, "bigint"), (4, "jsonb"), (5, "jsonb"))
)

# FINISH_EVENT for the rooms of a group commit, each finishing once, in one statement: the
# same writes as FINISH_EVENT room by room (without the redaction pairing, which the bulk
# path never carries). Per room ($1..$5): room NID, whether the current state changed, its
# snapshot, the extremities as a JSON array (NULL: unchanged), notes to merge. Flat over the
# rooms: $6 new member event NIDs (each names its room), $7/$8 (room, target) memberships to
# delete, $9/$10 (room, target) whose invites to retire, $11..$14 outbox rows in order (rooms
# one after another). Rows are reached by key probes (deletes and retirements then by the
# probed rows' ctids, a TID scan), never by a join the planner could turn into a scan
# (worker.storage.events, "Plan robustness").
FINISH_ROOMS = f"""
WITH f AS (
    SELECT * FROM unnest({_ROOMS_ARRAYS})
         AS f(room_nid, changed, current_nid, extremities, notes)
), new AS (
    SELECT f.room_nid, r.room_id, r.room_version,
           CASE WHEN f.changed THEN f.current_nid ELSE r.current_snapshot_nid END AS cur,
           CASE WHEN f.extremities IS NULL THEN r.extremities
                ELSE ARRAY(SELECT jsonb_array_elements_text(f.extremities)) END AS ext,
           r.notes || f.notes AS notes,
           r.current_snapshot_nid AS old_cur, r.extremities AS old_ext, r.notes AS old_notes
    FROM f CROSS JOIN LATERAL (SELECT * FROM rooms y WHERE y.room_nid = f.room_nid LIMIT 1) r
), room AS (
    -- An update through the primary key's conflict check: a probe per room whatever the
    -- table's statistics (an UPDATE joined to the rooms could be planned as a scan).
    INSERT INTO rooms AS r (room_nid, room_id, room_version, current_snapshot_nid,
                            extremities, notes)
    OVERRIDING SYSTEM VALUE
    SELECT room_nid, room_id, room_version, cur, ext, notes FROM new
    WHERE cur IS DISTINCT FROM old_cur OR ext IS DISTINCT FROM old_ext
       OR notes IS DISTINCT FROM old_notes
    ON CONFLICT (room_nid) DO UPDATE
    SET current_snapshot_nid = EXCLUDED.current_snapshot_nid,
        extremities = EXCLUDED.extremities, notes = EXCLUDED.notes
), up AS (
    INSERT INTO memberships (room_nid, target_nid, membership, event_nid)
    SELECT e.room_nid, e.state_key_nid, coalesce(e.membership, 0), e.event_nid
    FROM {ev_sql.keys_param(6, "bigint")} AS k(key) CROSS JOIN {ev_sql.EVENT_BY_NID} e
    ON CONFLICT (room_nid, target_nid) DO UPDATE
    SET membership = EXCLUDED.membership, event_nid = EXCLUDED.event_nid
), inv AS (
    INSERT INTO invites (invite_event_nid, room_nid, target_nid)
    SELECT e.event_nid, e.room_nid, e.state_key_nid
    FROM {ev_sql.keys_param(6, "bigint")} AS k(key) CROSS JOIN {ev_sql.EVENT_BY_NID} e
    WHERE e.membership = 2
    ON CONFLICT (invite_event_nid) DO NOTHING
), del AS (
    DELETE FROM memberships WHERE ctid = ANY(ARRAY(
        SELECT m.ctid
        FROM unnest({ev_sql.array_param(7, "bigint")}, {ev_sql.array_param(8, "bigint")})
             AS d(room_nid, target_nid)
        CROSS JOIN LATERAL (
            SELECT y.ctid FROM memberships y
            WHERE y.room_nid = d.room_nid AND y.target_nid = d.target_nid LIMIT 1
        ) m))
), ret AS (
    UPDATE invites SET retired = true WHERE ctid = ANY(ARRAY(
        SELECT i.ctid
        FROM unnest({ev_sql.array_param(9, "bigint")}, {ev_sql.array_param(10, "bigint")})
             AS d(room_nid, target_nid)
        CROSS JOIN LATERAL (
            SELECT y.ctid, y.invite_event_nid FROM invites y
            WHERE y.target_nid = d.target_nid AND y.room_nid = d.room_nid AND NOT y.retired
        ) i
        WHERE NOT (i.invite_event_nid = ANY({ev_sql.array_param(6, "bigint")}))))
), ob AS (
    INSERT INTO outbox (output_id, room_id, output_type, payload)
    SELECT output_id, room_id, output_type, payload
    FROM unnest({ev_sql.array_param(11, "text")}, {ev_sql.array_param(12, "text")},
                {ev_sql.array_param(13, "text")}, {ev_sql.array_param(14, "bytea")})
         WITH ORDINALITY AS u(output_id, room_id, output_type, payload, pos)
    ORDER BY pos
    ON CONFLICT (output_id) DO NOTHING
)
SELECT 1
"""


def nid_array(nids: Sequence[int]) -> str:
    """A bigint[] literal."""
    return "{" + ",".join(str(n) for n in nids) + "}"


async def reserve_event_nids(conn: asyncpg.Connection, n: int) -> list[int]:
    rows = await conn.fetch(RESERVE_EVENT_NIDS, n)
    return sorted(int(r["nid"]) for r in rows)
