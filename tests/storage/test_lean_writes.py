"""What migration 0003 and the leaner statements keep doing, now without triggers: the write
log gets one row per event first written (never for a re-input), and FINISH_EVENT leaves
the room row alone when nothing in it changes."""

from __future__ import annotations

import asyncpg

from worker.storage import apply_migrations
from worker.storage import events as ev_sql
from worker.storage import finish as finish_sql
from worker.storage import rooms as room_sql


async def _upsert(conn: asyncpg.Connection, event_id: str, outcome: int) -> int:
    nid: int = await conn.fetchval(
        ev_sql.UPSERT_EVENT, event_id, 1, 17, 0, 1, 1, outcome, "", "", None, [], 0,
        b'{"type":"m.room.message"}', ["$prev"],
    )
    return nid


async def test_write_log_has_one_row_per_event_first_written(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn, server_settings={"application_name": "w-7"})
    try:
        await apply_migrations(conn)
        await conn.fetchrow(room_sql.UPSERT_ROOM, "!a:t", "10")
        async with conn.transaction():
            first = await _upsert(conn, "$a", 1)
            started = await conn.fetchval("SELECT now()")
        again = await _upsert(conn, "$a", 3)  # a re-input updates the decision only
        other = await _upsert(conn, "$b", 1)
        assert again == first != other
        rows = await conn.fetch(
            "SELECT room_nid, event_nid, worker, txn_started, written FROM write_log ORDER BY seq"
        )
        assert [(r["room_nid"], r["event_nid"], r["worker"]) for r in rows] == [
            (1, first, "w-7"), (1, other, "w-7"),
        ]
        assert rows[0]["txn_started"] == started <= rows[0]["written"]
        assert await conn.fetchval("SELECT outcome FROM events WHERE event_id = '$a'") == 3
    finally:
        await conn.close()


async def test_finish_event_rewrites_the_room_row_only_when_it_changes(
    database_dsn: str,
) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        await apply_migrations(conn)
        await conn.fetchrow(room_sql.UPSERT_ROOM, "!a:t", "10")

        async def finish(changed: bool, snapshot: int, extremities: list[str] | None) -> str:
            await conn.execute(
                finish_sql.FINISH_EVENT, 1, changed, snapshot, extremities, "{}",
                [], [], [], [], [], [], "!a:t", None, None,
            )
            version: str = await conn.fetchval("SELECT xmin::text FROM rooms WHERE room_nid = 1")
            return version

        v1 = await finish(True, 5, ["$a"])
        assert await finish(False, 0, None) == v1  # membership changes only
        assert await finish(True, 5, ["$a"]) == v1  # the same values again
        v2 = await finish(True, 6, None)
        assert v2 != v1
        row = await conn.fetchrow("SELECT current_snapshot_nid, extremities FROM rooms")
        assert (row["current_snapshot_nid"], row["extremities"]) == (6, ["$a"])
    finally:
        await conn.close()
