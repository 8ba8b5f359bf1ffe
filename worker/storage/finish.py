"""The end of a write: one statement that updates every table an event's effects reach.

`FINISH_EVENT` (one room) and `FINISH_ROOMS` (the rooms of a group commit, each finishing
once) write, in one round trip:

- `rooms`: the current snapshot, extremities and notes, only when one of them changes;
- `memberships`: the new member events of changed targets upserted, vanished targets deleted;
- `invites`: new invites recorded, a changed target's older active invites retired;
- `outbox`: the write's outputs, in order (the relay publishes them, `worker.storage.outbox`);
- `redactions` (`FINISH_EVENT` only): a redaction event paired with its target.

Arrays are read through InitPlans and rows reached by key probes (`worker.storage.params`).
"""

from __future__ import annotations

from worker.storage.events import EVENT_BY_NID
from worker.storage.params import array_param, keys_param

# The end of an event's write, in one round trip: the room row (current snapshot,
# extremities, notes), the membership changes of a new current state ($6: the new member
# events of changed targets, upserted, and recorded as invites when they are invites; $7:
# targets whose entry disappeared, a state reset, deleted; $8: every changed target, whose
# older active invites are retired), the outbox rows in order, and the pairing of a
# redaction event with its target. The room row is rewritten only when a value changes (a
# write of membership changes alone, or an outlier, leaves it as it is). Arrays are read
# through InitPlans (`worker.storage.params`).
FINISH_EVENT = f"""
WITH room AS (
    UPDATE rooms
    SET current_snapshot_nid = CASE WHEN $2 THEN $3 ELSE current_snapshot_nid END,
        extremities = coalesce($4, extremities),
        notes = notes || $5::jsonb
    WHERE room_nid = $1
      AND (CASE WHEN $2 THEN $3 ELSE current_snapshot_nid END
               IS DISTINCT FROM current_snapshot_nid
           OR coalesce($4, extremities) IS DISTINCT FROM extremities
           OR notes || $5::jsonb IS DISTINCT FROM notes)
), up AS (
    INSERT INTO memberships (room_nid, target_nid, membership, event_nid)
    SELECT $1, e.state_key_nid, coalesce(e.membership, 0), e.event_nid
    FROM {keys_param(6, "bigint")} AS k(key) CROSS JOIN {EVENT_BY_NID} e
    ON CONFLICT (room_nid, target_nid) DO UPDATE
    SET membership = EXCLUDED.membership, event_nid = EXCLUDED.event_nid
), inv AS (
    INSERT INTO invites (invite_event_nid, room_nid, target_nid)
    SELECT e.event_nid, $1, e.state_key_nid
    FROM {keys_param(6, "bigint")} AS k(key) CROSS JOIN {EVENT_BY_NID} e
    WHERE e.membership = 2
    ON CONFLICT (invite_event_nid) DO NOTHING
), del AS (
    DELETE FROM memberships WHERE room_nid = $1 AND target_nid = ANY({array_param(7, "bigint")})
), ret AS (
    UPDATE invites SET retired = true
    WHERE room_nid = $1 AND target_nid = ANY({array_param(8, "bigint")}) AND NOT retired
      AND NOT (invite_event_nid = ANY({array_param(6, "bigint")}))
), ob AS (
    INSERT INTO outbox (output_id, room_id, output_type, payload)
    SELECT output_id, $12, output_type, payload
    FROM unnest({array_param(9, "text")}, {array_param(10, "text")}, {array_param(11, "bytea")})
         WITH ORDINALITY
         AS u(output_id, output_type, payload, pos)
    ORDER BY pos
    ON CONFLICT (output_id) DO NOTHING
), red AS (
    INSERT INTO redactions (redaction_event_id, target_event_id)
    SELECT $13::text, $14::text WHERE $13::text IS NOT NULL
    ON CONFLICT (redaction_event_id) DO NOTHING
)
SELECT 1
"""


_ROOMS_ARRAYS = ", ".join(
    array_param(n, t)
    for n, t in ((1, "bigint"), (2, "boolean"), (3, "bigint"), (4, "jsonb"), (5, "jsonb"))
)

# FINISH_EVENT for the rooms of a group commit, each finishing once, in one statement: the
# same writes as FINISH_EVENT room by room (without the redaction pairing, which a run of
# new events never carries). Per room ($1..$5): room NID, whether the current state changed, its
# snapshot, the extremities as a JSON array (NULL: unchanged), notes to merge. Flat over the
# rooms: $6 new member event NIDs (each names its room), $7/$8 (room, target) memberships to
# delete, $9/$10 (room, target) whose invites to retire, $11..$14 outbox rows in order (rooms
# one after another). Rows are reached by key probes (deletes and retirements then by the
# probed rows' ctids, a TID scan), never by a join the planner could turn into a scan
# (worker.storage.params, "Plan robustness").
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
    FROM {keys_param(6, "bigint")} AS k(key) CROSS JOIN {EVENT_BY_NID} e
    ON CONFLICT (room_nid, target_nid) DO UPDATE
    SET membership = EXCLUDED.membership, event_nid = EXCLUDED.event_nid
), inv AS (
    INSERT INTO invites (invite_event_nid, room_nid, target_nid)
    SELECT e.event_nid, e.room_nid, e.state_key_nid
    FROM {keys_param(6, "bigint")} AS k(key) CROSS JOIN {EVENT_BY_NID} e
    WHERE e.membership = 2
    ON CONFLICT (invite_event_nid) DO NOTHING
), del AS (
    DELETE FROM memberships WHERE ctid = ANY(ARRAY(
        SELECT m.ctid
        FROM unnest({array_param(7, "bigint")}, {array_param(8, "bigint")})
             AS d(room_nid, target_nid)
        CROSS JOIN LATERAL (
            SELECT y.ctid FROM memberships y
            WHERE y.room_nid = d.room_nid AND y.target_nid = d.target_nid LIMIT 1
        ) m))
), ret AS (
    UPDATE invites SET retired = true WHERE ctid = ANY(ARRAY(
        SELECT i.ctid
        FROM unnest({array_param(9, "bigint")}, {array_param(10, "bigint")})
             AS d(room_nid, target_nid)
        CROSS JOIN LATERAL (
            SELECT y.ctid, y.invite_event_nid FROM invites y
            WHERE y.target_nid = d.target_nid AND y.room_nid = d.room_nid AND NOT y.retired
        ) i
        WHERE NOT (i.invite_event_nid = ANY({array_param(6, "bigint")}))))
), ob AS (
    INSERT INTO outbox (output_id, room_id, output_type, payload)
    SELECT output_id, room_id, output_type, payload
    FROM unnest({array_param(11, "text")}, {array_param(12, "text")},
                {array_param(13, "text")}, {array_param(14, "bytea")})
         WITH ORDINALITY AS u(output_id, room_id, output_type, payload, pos)
    ORDER BY pos
    ON CONFLICT (output_id) DO NOTHING
)
SELECT 1
"""


__all__ = ["FINISH_EVENT", "FINISH_ROOMS"]
