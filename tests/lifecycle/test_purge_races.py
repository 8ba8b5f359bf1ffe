"""A purge against what happens around it: inputs of the room wait for it (the room's lock)
and are then decided against the purged room; other rooms do not wait; a purge killed
mid-transaction leaves the room whole."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg
import msgspec

from tests.lifecycle.rooms import busy_room, dump, feed, pipeline_over
from worker.errors import RetryableError
from worker.messages import HandleResult, InputRoomEvent
from worker.pipeline import Pipeline
from worker.storage import PostgresStore, room_lock_key
from worker.storage import purge_sql as q
from worker.storage.purge import PostgresPurger


async def _handle_retrying(pipeline: Pipeline, room_id: str, inp: InputRoomEvent) -> HandleResult:
    """As the consumer does: a retryable error redelivers the input."""
    for _ in range(5):
        try:
            return await pipeline.handle(room_id, inp)
        except RetryableError:
            await asyncio.sleep(0.05)
    raise AssertionError("still failing")


def _input(pdu: dict[str, object]) -> InputRoomEvent:
    return InputRoomEvent(kind="new", event=msgspec.Raw(msgspec.json.encode(pdu)))


async def test_inputs_wait_for_the_purge_then_meet_the_purged_room(pool: asyncpg.Pool) -> None:
    store = PostgresStore(pool, fence_writes=True)
    pipeline = pipeline_over(store)
    a, b = busy_room("!a:test"), busy_room("!b:test")
    first = await feed(pipeline, b)
    await feed(pipeline, a)
    # The purge holds the room's lock for a while: deleting the room row sleeps.
    await pool.execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM pg_sleep(2); RETURN OLD; END $$;"
        " CREATE TRIGGER slow BEFORE DELETE ON rooms FOR EACH ROW EXECUTE FUNCTION slow()"
    )
    purge = asyncio.create_task(PostgresPurger(store).purge_room(b.room_id))
    await asyncio.sleep(0.3)
    waiting = asyncio.create_task(
        _handle_retrying(pipeline, b.room_id, _input(b.events[b.message("bob", "during")]))
    )
    # Another room is not held up by the purge.
    other = await pipeline.handle(a.room_id, _input(a.events[a.message("bob", "elsewhere")]))
    assert other.outcome.value == "accepted"
    await asyncio.sleep(0.3)
    assert not purge.done() and not waiting.done()
    await purge
    during = await waiting
    # The room is gone: the write computed against it found another room row under the lock
    # (the write fence of worker.storage.fence), was redone against the purged room and refused; it
    # stored nothing.
    assert (during.outcome.value, during.reason_code) == ("rejected", "room_unknown")
    assert await pool.fetchval("SELECT count(*) FROM rooms WHERE room_id = $1", b.room_id) == 0
    await pool.execute("DROP TRIGGER slow ON rooms")
    # And the room can be received again from its start.
    again = await feed(pipeline, b, list(b.events)[: len(first)])
    assert [r.outcome for r in again] == [r.outcome for r in first]
    assert not any(r.duplicate for r in again)


_KILLED_PURGE = """
import asyncio, sys
import asyncpg

async def main(dsn, room_id, key, sql):
    conn = await asyncpg.connect(dsn)
    tr = conn.transaction()
    await tr.start()
    await conn.execute(f"SELECT pg_advisory_xact_lock({key})")
    nid = await conn.fetchval("SELECT room_nid FROM rooms WHERE room_id = $1", room_id)
    rows = await conn.fetch(sql, nid, room_id)
    print("deleted", sum(r[1] for r in rows), flush=True)
    await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:4], sys.stdin.read()))
"""


async def test_a_purge_killed_mid_transaction_leaves_the_room_whole(
    pool: asyncpg.Pool, database_dsn: str
) -> None:
    store = PostgresStore(pool, fence_writes=True)
    b = busy_room("!b:test")
    await feed(pipeline_over(store), b)
    before = await dump(pool)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_PURGE, database_dsn, b.room_id,
        str(room_lock_key(b.room_id)),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(q.PURGE_ROOM.encode())
    proc.stdin.close()
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.startswith(b"deleted") and int(line.split()[1]) > len(b.events)
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    # The room's lock is free once PostgreSQL has rolled the dead session back.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", room_lock_key(b.room_id))
    assert await dump(pool) == before
    # A purge that runs to the end removes it all.
    await PostgresPurger(store).purge_room(b.room_id)
    assert await store.room(b.room_id) is None
