"""`locked_txn` against real PostgreSQL: a transaction holds its rooms' advisory locks from
its start to its end, all of them, taken in one statement."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from worker.storage.transactions import Database, room_lock_key

ROOMS = [f"!room{i}:test" for i in range(40)]


async def _held_by(other: asyncpg.Connection, pid: int) -> set[int]:
    rows = await other.fetch(
        "SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks"
        " WHERE locktype = 'advisory' AND pid = $1 AND granted",
        pid,
    )
    # Back to the signed 64-bit key.
    return {r["key"] - (1 << 64) if r["key"] >= 1 << 63 else r["key"] for r in rows}


async def test_a_transaction_holds_every_lock_of_its_rooms(pool: asyncpg.Pool) -> None:
    keys = {room_lock_key(r) for r in ROOMS}
    other = await pool.acquire()
    try:

        async def inside(conn: asyncpg.Connection) -> set[int]:
            held = await _held_by(other, conn.get_server_pid())
            # Exclusive: no one else gets any of them meanwhile.
            for key in keys:
                assert not await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", key)
            return held

        # Given in any order and with repeats.
        held = await Database(pool).txn("t", inside, locks=[*reversed(sorted(keys)), *keys])
        assert held == keys
        async with other.transaction():
            for key in keys:
                assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", key)
    finally:
        await pool.release(other)


async def test_transactions_over_overlapping_rooms_take_turns(pool: asyncpg.Pool) -> None:
    db = Database(pool)
    log: list[tuple[str, str]] = []

    def writer(name: str) -> Callable[[asyncpg.Connection], Awaitable[None]]:
        async def fn(conn: asyncpg.Connection) -> None:
            log.append((name, "in"))
            await asyncio.sleep(0.05)
            log.append((name, "out"))

        return fn

    # Opposite orders of overlapping rooms: taken in one order by both, so neither deadlocks.
    await asyncio.gather(
        db.txn("a", writer("a"), locks=[room_lock_key(r) for r in ROOMS[:30]]),
        db.txn("b", writer("b"), locks=[room_lock_key(r) for r in reversed(ROOMS[10:])]),
    )
    assert log in (
        [("a", "in"), ("a", "out"), ("b", "in"), ("b", "out")],
        [("b", "in"), ("b", "out"), ("a", "in"), ("a", "out")],
    )
