"""Marking outbox rows sent, against real PostgreSQL: what a mark costs the database.

A mark is not worth a WAL flush of its own (a lost one only republishes rows, which the
output stream drops as duplicates), and it rewrites its row on the row's own page, so that
the WAL carries what changed rather than the row's payload again.
"""

from __future__ import annotations

import asyncpg

from worker.storage.outbox import INSERT_OUTPUTS, fetch_unsent, mark_sent

ROOM = "!room:test"
# About the size of a new_room_event output of a small event.
PAYLOAD = b"x" * 1200


async def _insert(db: asyncpg.Pool | asyncpg.Connection, n: int) -> list[str]:
    ids = [f"$e{i}:new" for i in range(n)]
    await db.execute(INSERT_OUTPUTS, ROOM, ids, ["new_room_event"] * n, [PAYLOAD] * n)
    return ids


async def _pages(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT output_id, (ctid::text::point)[0]::int AS page FROM outbox")
    return {r["output_id"]: r["page"] for r in rows}


async def test_a_mark_commits_without_waiting_for_its_wal_flush(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # Whatever the test server's default: the session asks for durable commits.
        await conn.execute("SET synchronous_commit = on")
        ids = await _insert(conn, 2)
        async with conn.transaction():
            assert await mark_sent(conn, ids[:1]) == 1
            # In force when the mark's transaction commits ...
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
        # ... and for that transaction only: the pooled connection's next writes (an event's
        # outbox rows among them) commit durably again.
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await mark_sent(conn, ids[1:]) == 1
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        await conn.execute("RESET synchronous_commit")
    assert await fetch_unsent(pool) == []


async def test_a_marked_row_stays_on_its_page(pool: asyncpg.Pool) -> None:
    ids = await _insert(pool, 60)
    before = await _pages(pool)
    assert len(set(before.values())) > 5, "the rows should span several pages"
    assert await mark_sent(pool, ids) == len(ids)
    after = await _pages(pool)
    moved = [i for i in ids if after[i] != before[i]]
    # On full pages every row of all but the last page would move.
    assert len(moved) <= len(ids) // 10, f"{len(moved)} of {len(ids)} rows moved to other pages"
