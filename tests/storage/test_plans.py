"""Every hot statement stays an index probe per key, whatever the statistics.

asyncpg prepares each statement once per connection and PostgreSQL may then switch it to a
generic plan that it keeps until the table is analyzed. A generic plan costed on tiny or
never-analyzed tables can freeze a hash join over a sequential scan of a table that grows to
millions of rows: every event read then scans the whole table. These tests force generic plans
(`plan_cache_mode = force_generic_plan`) on a freshly migrated, never-analyzed database, empty
(what a worker sees at start-up) and then growing to a few thousand rows in every big table,
then analyzed at that size (the smallest autovacuum analyzes them at, schemas/sql/0004), and
assert that no statement scans a big table sequentially.

Statements are discovered, not listed: every module-level SQL constant of every module of
`worker.storage` is checked, so a new
statement or module is covered the day it is written. The few statements that must read a
whole table by design are listed in `_SCANS`.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import asyncpg
import msgspec

import worker.storage
from worker.storage import apply_migrations, outbox

_MODULES: tuple[ModuleType, ...] = (
    *(
        importlib.import_module(f"worker.storage.{m.name}")
        for m in pkgutil.iter_modules(worker.storage.__path__)
    ),
)

# Tables that grow with the rooms, events and users of a deployment (`event_types` stays small).
_BIG = frozenset({
    "events", "event_json", "event_prevs", "state_snapshots", "state_blocks", "outbox",
    "redactions", "memberships", "invites", "write_log", "rooms", "state_keys",
})

# Statements that read a whole table on purpose, and why.
_SCANS = {
    # Periodic (the relay's prune timer), not per event; an index on sent_at would cost an
    # index insert on every mark_sent to save one scan per prune interval.
    "outbox.DELETE_SENT",
    # The inspector's list of every room (an operator's command, not the worker's).
    "rooms.SELECT_ROOM_IDS",
    # Purges (worker.storage.purge): an admin's request or the retention job, never per
    # event. They find a room's rows by a room or event column that no index serves, on
    # purpose: an index per table would cost an entry on every event written to save a scan
    # per purge (FORGET_STATE_BEFORE goes by primary key, but its generic plan on a
    # never-analyzed table scans). The retention job pays these scans once per room it visits.
    "purge_sql.PURGE_ROOM",
    "purge_sql.PURGE_EVENTS",
    "purge_sql.SELECT_ROOM_EVENTS",
    "purge_sql.SELECT_SNAPSHOTS",
    "purge_sql.SELECT_BLOCK_NIDS",
    "purge_sql.FORGET_STATE_BEFORE",
}

_SQL_START = re.compile(r"^\s*(SELECT|WITH|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_ROWS = 3000


def _statements() -> Iterator[tuple[str, str]]:
    for module in _MODULES:
        short = module.__name__.rsplit(".", 1)[-1]
        for name, value in sorted(vars(module).items()):
            if name.lstrip("_").isupper() and isinstance(value, str) and _SQL_START.match(value):
                yield f"{short}.{name}", value


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _seq_scans(plan: dict[str, Any]) -> Iterator[str]:
    for node in _nodes(plan):
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in _BIG:
            yield str(node["Relation Name"])


async def _generic_plan(conn: asyncpg.Connection, sql: str) -> dict[str, Any]:
    """The generic plan of `sql` (the session must force generic plans)."""
    # asyncpg infers the parameter types exactly as the worker's own prepare does.
    params = (await conn.prepare(sql)).get_parameters()
    types = [await conn.fetchval("SELECT format_type($1::oid, NULL)", p.oid) for p in params]
    decl = f"({', '.join(types)})" if types else ""
    args = f"({', '.join('NULL' for _ in types)})" if types else ""
    await conn.execute(f"PREPARE plan_check{decl} AS {sql}")
    try:
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE plan_check{args}")
    finally:
        await conn.execute("DEALLOCATE plan_check")
    plan: dict[str, Any] = msgspec.json.decode(raw)[0]["Plan"]
    return plan


async def _generic_scans(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """Statement -> big tables its generic plan scans sequentially (only offenders)."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    found: dict[str, list[str]] = {}
    for name, sql in _statements():
        scans = sorted(set(_seq_scans(await _generic_plan(conn, sql))))
        if scans and name not in _SCANS:
            found[name] = scans
    return found


def _populate(lo: int, hi: int) -> str:
    """Rows lo+1..hi in every big table (NIDs and IDs numbered by row)."""
    return f"""
INSERT INTO rooms (room_id, room_version) SELECT '!r' || i || ':t', '10'
FROM generate_series({lo + 1}, {hi}) i;
INSERT INTO state_keys (state_key) SELECT '@u' || i || ':t' FROM generate_series({lo + 1}, {hi}) i;
INSERT INTO events (event_id, room_nid, type_nid, state_key_nid, depth, kind, outcome,
                    membership, auth_event_nids, before_snapshot_nid)
SELECT '$e' || i, 1 + i % 7, CASE WHEN i % 3 = 0 THEN 5 ELSE 17 END,
       CASE WHEN i % 3 = 0 THEN 65535 + i ELSE 0 END, i, 1, 1,
       CASE WHEN i % 3 = 0 THEN 3 END, ARRAY[greatest(i - 1, 1)]::bigint[], i
FROM generate_series({lo + 1}, {hi}) i;
INSERT INTO event_json (event_nid, json)
SELECT event_nid, convert_to('{{"type":"m.room.message"}}', 'UTF8') FROM events
WHERE event_nid > {lo};
INSERT INTO event_prevs (prev_event_id, event_nid) SELECT '$e' || (event_nid - 1), event_nid
FROM events WHERE event_nid > {lo};
INSERT INTO state_blocks (room_nid, hash, entries)
SELECT 1, sha224(int8send(i)), int8send(i) FROM generate_series({lo + 1}, {hi}) i;
INSERT INTO state_snapshots (room_nid, hash, parent_nid, rank, block_nids, delta)
SELECT 1, sha256(int8send(i)), i - 1, 0, CASE WHEN i % 50 = 1 THEN ARRAY[i]::bigint[] END,
       int8send(i)
FROM generate_series({lo + 1}, {hi}) i;
INSERT INTO memberships (room_nid, target_nid, membership, event_nid)
SELECT 1 + i % 7, 65535 + i, 3, i FROM generate_series({lo + 1}, {hi}) i;
INSERT INTO invites (invite_event_nid, room_nid, target_nid, retired)
SELECT i, 1 + i % 7, 65535 + i, i % 2 = 0 FROM generate_series({lo + 1}, {hi}) i;
INSERT INTO redactions (redaction_event_id, target_event_id, applied)
SELECT '$e' || i, '$e' || (i + 1), i % 2 = 0 FROM generate_series({lo + 1}, {hi}) i;
INSERT INTO outbox (output_id, room_id, output_type, payload, sent_at)
SELECT 'o' || i, '!r' || (1 + i % 7) || ':t', 'new_room_event', '\\x00',
       CASE WHEN i % 10 <> 0 THEN now() END
FROM generate_series({lo + 1}, {hi}) i;
"""

_POPULATE = _populate(0, _ROWS)


# Table sizes (rows in each big table) the plans are checked at, never analyzed: empty (what a
# worker sees at start-up), and growing through the sizes where `events` crosses the ten
# pages PostgreSQL assumes of a never-analyzed table (500-700 rows: there a scan with a
# ten-key filter once beat ten index probes, and `key = ANY($1)` plans were frozen as scans).
_SIZES = (0, 100, 300, 500, 600, 700, 1000, 1500, _ROWS)


async def test_hot_statements_never_scan_big_tables(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        await apply_migrations(conn)
        tables = sorted(_BIG)
        # No analyze may run behind the test's back until the test runs one.
        for table in tables:
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        assert len(list(_statements())) >= 30  # discovery found the statement constants
        rows = 0
        for size in _SIZES:
            if size:
                await conn.execute(_populate(rows, size))
                rows = size
            assert await _generic_scans(conn) == {}, f"never analyzed, {size} rows per table"
        never = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY($1::text[])"
            " AND last_analyze IS NULL AND last_autoanalyze IS NULL",
            tables,
        )
        assert never == len(tables)
        # The smallest statistics autovacuum gathers (schemas/sql/0004) are of this size.
        await conn.execute("ANALYZE")
        assert await _generic_scans(conn) == {}, f"analyzed at {_ROWS} rows per table"
    finally:
        await conn.close()


async def test_big_tables_are_first_analyzed_when_big(database_dsn: str) -> None:
    """Statistics of a tiny table would make a scan look cheaper than a probe, and the plan
    built on them would be kept while the table grows: autovacuum leaves the big tables alone
    until they changed (mostly: grew) by at least twice the size checked above. `rooms` is
    exempt: every event rewrites its row, so it is re-analyzed as it changes."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await apply_migrations(conn)
        rows = await conn.fetch(
            "SELECT relname, reloptions FROM pg_class WHERE relname = ANY($1::text[])",
            sorted(_BIG - {"rooms"}),
        )
        assert len(rows) == len(_BIG) - 1
        for r in rows:
            options = dict(o.split("=", 1) for o in r["reloptions"] or ())
            for name in (
                "autovacuum_analyze_threshold",
                "autovacuum_vacuum_threshold",
                "autovacuum_vacuum_insert_threshold",
            ):
                assert int(options.get(name, 0)) >= 2 * _ROWS, (r["relname"], name)
    finally:
        await conn.close()


async def test_the_check_sees_a_frozen_hash_join(database_dsn: str) -> None:
    """The detector itself: the join the statements used to be written with is caught."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await apply_migrations(conn)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(
            "PREPARE joined(text[]) AS SELECT e.event_id, j.json FROM events e"
            " JOIN event_json j ON j.event_nid = e.event_nid WHERE e.event_id = ANY($1)"
        )
        raw = await conn.fetchval("EXPLAIN (FORMAT JSON) EXECUTE joined(NULL)")
        assert list(_seq_scans(msgspec.json.decode(raw)[0]["Plan"])) == ["event_json"]
    finally:
        await conn.close()


async def test_marking_sent_probes_by_key(database_dsn: str) -> None:
    """MARK_SENT finds its rows by output ID, never by walking the unsent rows' index
    (which a backlog, and every marked row not yet vacuumed, makes long)."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await apply_migrations(conn)
        await conn.execute(_POPULATE)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        plan = await _generic_plan(conn, outbox.MARK_SENT)
        used = {n["Index Name"] for n in _nodes(plan) if "Index Name" in n}
        assert used == {"outbox_pkey"}
    finally:
        await conn.close()


# The modules whose statements are written to keep their generic plans (worker.storage.params,
# "Generic plans"), but for the statements listed after them (the writes of runs and groups,
# whose arrays are sized by the write, and the inspector's), and a value of each parameter
# type for calling them.
_GENERIC_MODULES = ("events", "rooms", "finish", "snapshots", "nids", "outbox", "query_reads")
_NOT_GENERIC = frozenset({
    "events.INSERT_EVENTS", "events.RESERVE_EVENT_NIDS", "rooms.UPSERT_ROOM_RESERVING",
    "rooms.UPSERT_ROOMS_RESERVING", "finish.FINISH_ROOMS", "rooms.SELECT_ROOM_SUMMARY",
    "rooms.SELECT_ROOM_IDS",
})
_VALUES: dict[str, Any] = {
    "text[]": ["$e7"], "bigint[]": [7], "bytea[]": [b"\x07"], "text": "!r7:t", "bigint": 7,
    "integer": 7, "smallint": 1, "smallint[]": [1], "boolean": True, "boolean[]": [True],
    "bytea": b"\x07",
    "jsonb": "{}", "double precision": 7.0,
}


async def test_statements_keep_their_generic_plan(database_dsn: str) -> None:
    """PostgreSQL plans a prepared statement afresh on every call while a custom plan looks
    cheaper than the generic one, as it always did for a short key array. Called with one-key arrays, every
    statement settles on the generic plan after PostgreSQL's five custom ones."""
    conn = await asyncpg.connect(database_dsn)
    try:
        await apply_migrations(conn)
        await conn.execute(_POPULATE)
        kept: dict[str, tuple[int, int]] = {}
        async with conn.transaction():
            for name, sql in _statements():
                if name.split(".")[0] not in _GENERIC_MODULES or name in _NOT_GENERIC:
                    continue
                stmt = await conn.prepare(sql)
                types = [
                    await conn.fetchval("SELECT format_type($1::oid, NULL)", p.oid)
                    for p in stmt.get_parameters()
                ]
                for _ in range(10):
                    await stmt.fetch(*(_VALUES[t] for t in types))
                plans = await conn.fetchrow(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement = $1",
                    sql,
                )
                assert plans is not None
                kept[name] = (plans["generic_plans"], plans["custom_plans"])
            # Nothing the calls wrote is kept.
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()
    assert len(kept) >= 30
    # Statements without parameters are generic from the first call.
    assert {k: v for k, v in kept.items() if v not in ((5, 5), (10, 0))} == {}


class _Rollback(Exception):
    pass
