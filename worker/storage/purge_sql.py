"""What belongs to a room, table by table, and the statements that delete it (DESIGN §3
"Lifecycle").

`ROOM_ROWS` is the one list of where a room's rows live: a table and the column that ties a
row to the room, directly (its NID or ID) or through one of the room's events (an event NID or
ID). `purge_room` deletes every row it names; `HISTORY_ROWS` (the tables tied through an event)
is what `purge_history` deletes with an event. A table added to the schema with a room or
event column and not listed here fails `tests/lifecycle/test_purge_room.py`; listing it is one
line. `GLOBAL_TABLES` hold rows shared by every room (string dictionaries, bookkeeping).

Each delete returns `pg_column_size` of the rows it removed, so the caller can report the
bytes freed (what VACUUM can reuse; the files shrink only when VACUUM FULL or a truncation at
the end of a file gives the pages back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Holds = Literal["room_nid", "room_id", "event_nid", "event_id"]


@dataclass(frozen=True, slots=True)
class Owned:
    """Rows of `table` whose `column` holds the room's NID or ID, or one of its events'."""

    table: str
    column: str
    holds: Holds


ROOM_ROWS: tuple[Owned, ...] = (
    Owned("event_json", "event_nid", "event_nid"),
    Owned("event_prevs", "event_nid", "event_nid"),
    Owned("redactions", "redaction_event_id", "event_id"),
    Owned("invites", "room_nid", "room_nid"),
    Owned("memberships", "room_nid", "room_nid"),
    Owned("write_log", "room_nid", "room_nid"),
    Owned("state_snapshots", "room_nid", "room_nid"),
    Owned("state_blocks", "room_nid", "room_nid"),
    Owned("outbox", "room_id", "room_id"),
    Owned("room_joined_counts", "room_nid", "room_nid"),
    Owned("room_aliases", "room_id", "room_id"),
    Owned("room_directory", "room_id", "room_id"),
    Owned("perform_txns", "room_id", "room_id"),
    Owned("forgotten_rooms", "room_id", "room_id"),
    Owned("events", "room_nid", "room_nid"),
    Owned("rooms", "room_nid", "room_nid"),
)

# Rows that go with one event when older history is purged (the event row itself last).
HISTORY_ROWS: tuple[Owned, ...] = (
    Owned("event_json", "event_nid", "event_nid"),
    Owned("event_prevs", "event_nid", "event_nid"),
    Owned("redactions", "redaction_event_id", "event_id"),
    Owned("invites", "invite_event_nid", "event_nid"),
    Owned("write_log", "event_nid", "event_nid"),
    Owned("events", "event_nid", "event_nid"),
)

# Tables with no room's rows: shared dictionaries and bookkeeping.
GLOBAL_TABLES: frozenset[str] = frozenset({"event_types", "state_keys", "schema_migrations"})

# Columns that tie a row to a room or to an event (what the schema test looks for).
ROOM_COLUMNS: frozenset[str] = frozenset({"room_nid", "room_id"})
EVENT_COLUMNS: frozenset[str] = frozenset({"event_nid", "event_id", "redaction_event_id",
                                           "invite_event_nid"})


def _purge_room_sql(rows: tuple[Owned, ...]) -> str:
    """One statement: every table's delete is a data-modifying CTE of it, all seeing the room
    as it was, and the answer is (table, rows, bytes) per table. $1 room NID, $2 room ID."""
    match = {
        "room_nid": "t.{col} = $1",
        "room_id": "t.{col} = $2",
        "event_nid": "t.{col} IN (SELECT event_nid FROM ev)",
        "event_id": "t.{col} IN (SELECT event_id FROM ev)",
    }
    ctes = ["ev AS MATERIALIZED (SELECT event_nid, event_id FROM events WHERE room_nid = $1)"]
    answers = []
    for i, o in enumerate(rows):
        where = match[o.holds].format(col=o.column)
        ctes.append(f"d{i} AS (DELETE FROM {o.table} AS t WHERE {where} "
                    "RETURNING pg_column_size(t.*) AS b)")
        answers.append(f"SELECT '{o.table}'::text, count(*), coalesce(sum(b), 0)::bigint FROM d{i}")
    return "WITH " + ",\n".join(ctes) + "\n" + "\nUNION ALL ".join(answers)


def _purge_events_sql(rows: tuple[Owned, ...]) -> str:
    """Like `_purge_room_sql` for some of a room's events: $1 their NIDs, $2 their IDs."""
    match = {"event_nid": "t.{col} = ANY($1::bigint[])", "event_id": "t.{col} = ANY($2::text[])"}
    ctes = []
    answers = []
    for i, o in enumerate(rows):
        where = match[o.holds].format(col=o.column)
        ctes.append(f"d{i} AS (DELETE FROM {o.table} AS t WHERE {where} "
                    "RETURNING pg_column_size(t.*) AS b)")
        answers.append(f"SELECT '{o.table}'::text, count(*), coalesce(sum(b), 0)::bigint FROM d{i}")
    return "WITH " + ",\n".join(ctes) + "\n" + "\nUNION ALL ".join(answers)


PURGE_ROOM = _purge_room_sql(ROOM_ROWS)
PURGE_EVENTS = _purge_events_sql(HISTORY_ROWS)

SELECT_ROOM = """
SELECT room_nid, current_snapshot_nid, extremities FROM rooms WHERE room_id = $1
"""

# Every event of the room with what the mark phase needs; `old` says whether it lies before
# the cut: before the depth of the given event ($2), or sent before the time ($3, ms).
SELECT_ROOM_EVENTS = """
SELECT e.event_nid, e.event_id, e.auth_event_nids, e.before_snapshot_nid, e.depth,
       CASE WHEN $2::bigint IS NOT NULL THEN e.depth < $2
            ELSE (SELECT (convert_from(j.json, 'UTF8')::json ->> 'origin_server_ts')::bigint
                  FROM event_json j WHERE j.event_nid = e.event_nid) < $3::bigint
       END AS old
FROM events e WHERE e.room_nid = $1
"""

SELECT_EVENT_DEPTH = "SELECT depth FROM events WHERE event_id = $1 AND room_nid = $2"

SELECT_SNAPSHOTS = """
SELECT snapshot_nid, parent_nid, block_nids, delta FROM state_snapshots WHERE room_nid = $1
"""

SELECT_BLOCKS = """
SELECT block_nid, entries FROM state_blocks WHERE room_nid = $1 AND block_nid = ANY($2::bigint[])
"""

SELECT_BLOCK_NIDS = "SELECT block_nid FROM state_blocks WHERE room_nid = $1"

# Events kept only because state or an auth chain names them lose their state before (as
# Synapse makes them outliers): keeping it would keep the snapshots of all history.
FORGET_STATE_BEFORE = """
UPDATE events SET before_snapshot_nid = NULL
WHERE event_nid = ANY($1::bigint[]) AND before_snapshot_nid IS NOT NULL
"""

SWEEP = """
WITH s AS (
    DELETE FROM state_snapshots AS t WHERE t.room_nid = $1 AND t.snapshot_nid = ANY($2::bigint[])
    RETURNING pg_column_size(t.*) AS b
), k AS (
    DELETE FROM state_blocks AS t WHERE t.room_nid = $1 AND t.block_nid = ANY($3::bigint[])
    RETURNING pg_column_size(t.*) AS b
)
SELECT 'state_snapshots'::text, count(*), coalesce(sum(b), 0)::bigint FROM s
UNION ALL SELECT 'state_blocks'::text, count(*), coalesce(sum(b), 0)::bigint FROM k
"""

# A page of room IDs after $1, in order (the retention job walks every room by pages).
SELECT_ROOMS_PAGE = "SELECT room_id FROM rooms WHERE room_id > $1 ORDER BY room_id LIMIT $2"
