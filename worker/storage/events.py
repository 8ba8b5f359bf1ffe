"""Events, their JSON, prev references, write log and redactions (STYLE R8).

Statement constants and batch-first functions; functions that must run inside the caller's
transaction take the connection first and end in `_txn`. Every statement's parameters follow
`worker.storage.params` (index probes per key, plans kept).

A run of new events is inserted by one statement (`INSERT_EVENTS`) under NIDs reserved
first (`RESERVE_EVENT_NIDS`, or with the room's row: `worker.storage.rooms`), so that the
snapshots naming them can be planned before the rows exist; an event found stored after all
(`ON CONFLICT DO NOTHING` skipped it) makes the caller abort, and the upsert of one event at
a time (`UPSERT_EVENT`) decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import msgspec

from worker.core.events import Event
from worker.core.outcomes import Outcome
from worker.core.versions import rules_for
from worker.storage.params import array_param, keys_param

KIND_CODES = {"new": 1, "outlier": 2, "old": 3}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
OUTCOME_CODES = {
    Outcome.ACCEPTED: 1,
    Outcome.SOFT_FAILED: 2,
    Outcome.REJECTED: 3,
    Outcome.OUTLIER: 4,
    Outcome.INVALID: 5,
}
OUTCOME_NAMES = {v: k for k, v in OUTCOME_CODES.items()}
MEMBERSHIP_CODES = {"leave": 1, "invite": 2, "join": 3, "knock": 4, "ban": 5}
MEMBERSHIP_NAMES = {v: k for k, v in MEMBERSHIP_CODES.items()}
MEMBERSHIP_INVITE = 2

_json_decoder = msgspec.json.Decoder(dict[str, Any])

# The event with a given ID or NID, one probe per key `k.key` (use as `... e`).
_EVENT_BY_ID = "LATERAL (SELECT * FROM events x WHERE x.event_id = k.key LIMIT 1)"
EVENT_BY_NID = "LATERAL (SELECT * FROM events x WHERE x.event_nid = k.key LIMIT 1)"

# One statement stores the event row, its JSON and its prev references, and, for an event
# it inserts (not one it updates), its write-log row (schemas/sql/0002, 0003: `pre` reads the
# statement's snapshot, taken before the insert). A re-input updates the decision but never
# downgrades a stored event to an outlier, and never touches the JSON (which may have been
# redacted since: redaction is permanent).
UPSERT_EVENT = f"""
WITH e AS (
    INSERT INTO events AS old (event_id, room_nid, type_nid, state_key_nid, depth, kind,
                               outcome, reason_code, reason, membership, auth_event_nids,
                               before_snapshot_nid)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
            (SELECT coalesce(array_agg(DISTINCT a.event_nid ORDER BY a.event_nid), '{{}}')
             FROM {keys_param(11, "text")} AS k(key) CROSS JOIN {_EVENT_BY_ID} a),
            $12)
    ON CONFLICT (event_id) DO UPDATE
    SET kind = EXCLUDED.kind, outcome = EXCLUDED.outcome, reason_code = EXCLUDED.reason_code,
        reason = EXCLUDED.reason, auth_event_nids = EXCLUDED.auth_event_nids,
        before_snapshot_nid = coalesce(EXCLUDED.before_snapshot_nid, old.before_snapshot_nid)
    WHERE NOT (EXCLUDED.kind = 2 AND old.kind <> 2)
    RETURNING event_nid
), ev AS (
    SELECT event_nid FROM e
    UNION ALL
    SELECT event_nid FROM events WHERE event_id = $1 AND NOT EXISTS (SELECT 1 FROM e)
), j AS (
    INSERT INTO event_json (event_nid, json) SELECT event_nid, $13 FROM ev
    ON CONFLICT (event_nid) DO NOTHING
), p AS (
    INSERT INTO event_prevs (prev_event_id, event_nid)
    SELECT unnest({array_param(14, "text")}), event_nid FROM ev
    ON CONFLICT DO NOTHING
), w AS (
    INSERT INTO write_log (room_nid, event_nid, worker, txn_started, written)
    SELECT $2, event_nid, current_setting('application_name'), now(), clock_timestamp()
    FROM e WHERE NOT EXISTS (SELECT 1 FROM events pre WHERE pre.event_id = $1)
)
SELECT event_nid FROM ev
"""

# NIDs for `n` events about to be inserted, in the order they will be used.
RESERVE_EVENT_NIDS = """
SELECT nextval(pg_get_serial_sequence('events', 'event_nid')) AS nid
FROM generate_series(1, (SELECT $1::int))
"""

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

# The JSON and room version of an event by primary key (`worker.storage.params`).
_JSON_OF = "(SELECT j.json FROM event_json j WHERE j.event_nid = e.event_nid)"
_VERSION_OF = "(SELECT r.room_version FROM rooms r WHERE r.room_nid = e.room_nid)"
_JSON_OF_E = f"{_JSON_OF} AS json"
_VERSION_OF_E = f"{_VERSION_OF} AS room_version"

SELECT_EVENTS_BY_ID = f"""
SELECT e.event_nid, e.event_id, e.kind, e.outcome, e.reason_code, e.reason,
       e.before_snapshot_nid, e.redacted_by, e.type_nid, e.state_key_nid,
       {_JSON_OF_E}, {_VERSION_OF_E}
FROM {keys_param(1, "text")} AS k(key) CROSS JOIN {_EVENT_BY_ID} e
"""

# The unapplied redactions of target `k.key` (OFFSET 0 keeps the subquery a per-key probe:
# the planner may not merge it into a join).
_PENDING_OF_KEY = """LATERAL (
    SELECT x.target_event_id, x.redaction_event_id FROM redactions x
    WHERE x.target_event_id = k.key AND NOT x.applied OFFSET 0
)"""

# Accepted redactions only: the redaction event's outcome, probed per pending row.
_REDACTION_ACCEPTED = (
    "(SELECT x.outcome FROM events x WHERE x.event_id = r.redaction_event_id) = 1"
)

# SELECT_EVENTS_BY_ID and SELECT_PENDING_REDACTIONS in one round trip: rows with a
# redaction_event_id are (target, redaction) pairs, the others events.
# `$3[i]` says the reader holds event `$1[i]` already: unless it was redacted since (the
# only change stored JSON ever sees), its JSON and room version are not sent (NULL).
SELECT_EVENTS_AND_PENDING_REDACTIONS = f"""
SELECT e.event_nid, e.event_id, e.kind, e.outcome, e.reason_code, e.reason,
       e.before_snapshot_nid, e.redacted_by, e.type_nid, e.state_key_nid,
       CASE WHEN k.held AND e.redacted_by IS NULL THEN NULL ELSE {_JSON_OF} END AS json,
       CASE WHEN k.held AND e.redacted_by IS NULL THEN NULL ELSE {_VERSION_OF} END
           AS room_version,
       NULL::text AS redaction_event_id
FROM unnest({array_param(1, "text")}, {array_param(3, "bool")}) AS k(key, held)
CROSS JOIN {_EVENT_BY_ID} e
UNION ALL
SELECT NULL, r.target_event_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       r.redaction_event_id
FROM {keys_param(2, "text")} AS k(key) CROSS JOIN {_PENDING_OF_KEY} r
WHERE {_REDACTION_ACCEPTED}
"""

SELECT_EVENTS_BY_NID = f"""
SELECT e.event_nid, e.event_id, {_JSON_OF_E}, {_VERSION_OF_E}
FROM {keys_param(1, "bigint")} AS k(key) CROSS JOIN {EVENT_BY_NID} e
"""

SELECT_NIDS_BY_ID = f"""
SELECT e.event_id, e.event_nid FROM {keys_param(1, "text")} AS k(key) CROSS JOIN {_EVENT_BY_ID} e
"""
SELECT_IDS_BY_NID = f"""
SELECT e.event_nid, e.event_id FROM {keys_param(1, "bigint")} AS k(key) CROSS JOIN {EVENT_BY_NID} e
"""

# Everything needed to name a state's entries, from the event NIDs alone: an entry's key is
# its event's own (type, state key).
SELECT_STATE_NAMES = f"""
SELECT e.event_nid, e.event_id,
       e.type_nid,
       (SELECT t.event_type FROM event_types t WHERE t.type_nid = e.type_nid) AS event_type,
       e.state_key_nid,
       (SELECT k.state_key FROM state_keys k WHERE k.state_key_nid = e.state_key_nid)
           AS state_key
FROM {keys_param(1, "bigint")} AS k(key) CROSS JOIN {EVENT_BY_NID} e
"""

# The state keys of events given by ID (a federated join's state can be tens of thousands of
# events: their JSON is not needed). Non-state events come back with a NULL state key.
SELECT_STATE_KEYS_BY_ID = f"""
SELECT e.event_id,
       (SELECT t.event_type FROM event_types t WHERE t.type_nid = e.type_nid) AS event_type,
       CASE WHEN e.state_key_nid <> 0 THEN
           (SELECT k.state_key FROM state_keys k WHERE k.state_key_nid = e.state_key_nid)
       END AS state_key
FROM {keys_param(1, "text")} AS k(key) CROSS JOIN {_EVENT_BY_ID} e
"""

SELECT_PENDING_REDACTIONS = f"""
SELECT r.target_event_id, r.redaction_event_id
FROM {keys_param(1, "text")} AS k(key) CROSS JOIN {_PENDING_OF_KEY} r
WHERE {_REDACTION_ACCEPTED}
ORDER BY r.target_event_id, r.redaction_event_id
"""

SELECT_REDACTION_TARGETS = f"""
SELECT e.event_nid, e.event_id, e.redacted_by, {_JSON_OF_E}, {_VERSION_OF_E}
FROM {keys_param(1, "text")} AS k(key)
CROSS JOIN LATERAL (SELECT * FROM events x WHERE x.event_id = k.key LIMIT 1 FOR UPDATE) e
"""

APPLY_REDACTION = """
WITH j AS (UPDATE event_json SET json = $2 WHERE event_nid = $1),
     e AS (UPDATE events SET redacted_by = $3 WHERE event_nid = $1)
UPDATE redactions SET applied = true WHERE redaction_event_id = $3
"""

INSERT_REDACTION_APPLIED = """
INSERT INTO redactions (redaction_event_id, target_event_id, applied) VALUES ($1, $2, true)
ON CONFLICT (redaction_event_id) DO UPDATE SET applied = true
"""


def decode_event(event_id: str, json: bytes, version: str) -> Event:
    """An `Event` view of stored JSON (the room version was checked when the room was made)."""
    rules = rules_for(version)
    if rules is None:
        raise RuntimeError(f"stored room version {version!r} is unknown")
    return Event(_json_decoder.decode(json), event_id, rules)


def membership_code(event: Event) -> int | None:
    """The `events.membership` value: a code for member events, None for other types."""
    if event.type != "m.room.member":
        return None
    return MEMBERSHIP_CODES.get(event.membership or "", 0)


async def event_nids(conn: asyncpg.Connection, ids: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    return {r["event_id"]: r["event_nid"] for r in await conn.fetch(SELECT_NIDS_BY_ID, wanted)}


async def event_ids(conn: asyncpg.Connection, nids: Iterable[int]) -> dict[int, str]:
    wanted = sorted(set(nids))
    if not wanted:
        return {}
    return {r["event_nid"]: r["event_id"] for r in await conn.fetch(SELECT_IDS_BY_NID, wanted)}


async def events_by_nid(conn: asyncpg.Connection, nids: Sequence[int]) -> dict[int, Event]:
    if not nids:
        return {}
    rows = await conn.fetch(SELECT_EVENTS_BY_NID, sorted(set(nids)))
    return {r["event_nid"]: decode_event(r["event_id"], r["json"], r["room_version"]) for r in rows}


async def reserve_event_nids(conn: asyncpg.Connection, n: int) -> list[int]:
    rows = await conn.fetch(RESERVE_EVENT_NIDS, n)
    return sorted(int(r["nid"]) for r in rows)
