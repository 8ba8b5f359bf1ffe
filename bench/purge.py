"""Purge bench: `purge_room` of a 100,000-event room, and `purge_history` of its oldest 90%.

The room is the storage bench's events (`bench.storage`: ~30% state events, joins outpacing
leaves to ~10,000 members), linear, written through the store's bulk write path
(`PostgresStore.persist_many`, 500 events a transaction, each with its state before and
after as handles chained in memory, as the pipeline's batches do) into an embedded PostgreSQL
without fsync; then copied (`CREATE DATABASE ... TEMPLATE`) so each purge starts from the same
database. `BENCH_PURGE_FILL=events` writes it with the storage bench's own writer instead
(event by event, with its forks; several times slower).

Reported: the time of `purge_room` (goal <= 10 s on 2 cores) and the rows it removed; for
`purge_history` before the time of the event at 90%, its time, the events it kept for state,
and the rows and bytes of the state tables (`state_snapshots`, `state_blocks`, with indexes
and TOAST: `pg_total_relation_size`) before, right after (deleted rows still take their space
until VACUUM), after VACUUM, and after VACUUM FULL (what the files shrink to); goal: the state
tables shrink by >= 80%.

BENCH_PURGE_EVENTS=20000 python -m bench purge   # a quick run
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import msgspec

from bench.storage import ROOM, RULES, VERSION, _Gen, _write_room
from worker.core.events import Event
from worker.core.outcomes import Outcome
from worker.pipeline.ports import EventWrite
from worker.storage import PostgresStore, apply_migrations
from worker.storage.purge import PostgresPurger

STATE_TABLES = ("state_snapshots", "state_blocks")
_BASE_TS = 1_700_000_000_000  # bench.storage stamps the n-th event _BASE_TS + n
_BATCH = 500


async def _state_size(pool: asyncpg.Pool) -> tuple[int, int]:
    rows = sizes = 0
    for t in STATE_TABLES:
        rows += int(await pool.fetchval(f"SELECT count(*) FROM {t}"))
        sizes += int(await pool.fetchval("SELECT pg_total_relation_size($1::regclass)", t))
    return rows, sizes


async def _write_fast(store: PostgresStore, total: int, seed: int) -> None:
    """The storage bench's events, linear (no forks), through `persist_many` in batches of
    `_BATCH`: the store's bulk write path, as the pipeline's batches use it."""
    assert RULES is not None
    gen = _Gen(random.Random(seed), total)
    cur = await store.handle_from_map(ROOM, {})
    tip: list[str] = []
    batch: list[EventWrite] = []
    for depth in range(1, total + 1):
        eid, pdu = gen.pdu(tip, depth)
        if depth == 1:
            pdu.update(type="m.room.create", state_key="", content={"room_version": VERSION})
        event = Event(pdu, eid, RULES)
        after = cur
        if event.state_tuple is not None:
            after = store.apply(cur, {event.state_tuple: eid})
        batch.append(EventWrite(
            room_id=ROOM, room_version=VERSION, event=event, event_json=msgspec.json.encode(pdu),
            kind="new", outcome=Outcome.ACCEPTED, state_before=cur, extremities=[eid],
            current_state=after,
        ))
        cur, tip = after, [eid]
        if len(batch) == _BATCH or depth == total:
            await store.persist_many(batch)
            batch = []
            handle = await store.current_state(ROOM)
            assert handle is not None
            cur = handle
            if depth % 20_000 == 0:
                print(f"  ... {depth} events written", file=sys.stderr)


async def _fill(dsn: str, total: int, fast: bool) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    assert pool is not None
    try:
        await apply_migrations(pool)
        start = time.perf_counter()
        if fast:
            await _write_fast(PostgresStore(pool), total, seed=5)
        else:
            await _write_room(PostgresStore(pool), total, seed=5)
        took = time.perf_counter() - start
        await pool.execute("VACUUM ANALYZE")
        return took
    finally:
        await pool.close()


async def _purge_room(dsn: str, total: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    assert pool is not None
    try:
        store = PostgresStore(pool)
        start = time.perf_counter()
        removed = await PostgresPurger(store).purge_room(ROOM)
        took = time.perf_counter() - start
        left = await pool.fetchval("SELECT count(*) FROM events")
    finally:
        await pool.close()
    print(f"purge_room: {total} events, {removed.total_rows:,} rows "
          f"({removed.total_bytes / 1e6:.1f} MB) in {took:.2f} s (goal <= 10 s); "
          f"events left {left}")
    for table, n in sorted(removed.rows.items(), key=lambda kv: -kv[1]):
        print(f"  {table:<16}{n:>10,} rows {removed.bytes.get(table, 0) / 1e6:>8.1f} MB")


async def _purge_history(dsn: str, total: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    assert pool is not None
    try:
        store = PostgresStore(pool)
        before_rows, before_bytes = await _state_size(pool)
        start = time.perf_counter()
        done = await PostgresPurger(store).purge_history(
            ROOM, before_ts=_BASE_TS + total * 9 // 10)
        took = time.perf_counter() - start
        after_rows, after_delete = await _state_size(pool)
        for t in STATE_TABLES:
            await pool.execute(f"VACUUM {t}")
        _, after_vacuum = await _state_size(pool)
        for t in STATE_TABLES:
            await pool.execute(f"VACUUM FULL {t}")
        _, after_full = await _state_size(pool)
        events = await pool.fetchval("SELECT count(*) FROM events")
    finally:
        await pool.close()
    removed = done.removed
    print(f"purge_history of the oldest 90%: {removed.rows.get('events', 0):,} events deleted, "
          f"{done.kept_for_state:,} old events kept for state or auth, {events:,} left; "
          f"{took:.2f} s")
    shrink = 100 * (1 - after_rows / before_rows)
    print(f"  state tables rows: {before_rows:,} -> {after_rows:,} (-{shrink:.0f}%; "
          f"goal >= 80%)")
    print(f"  state tables bytes: {before_bytes:,} before; {after_delete:,} after the purge; "
          f"{after_vacuum:,} after VACUUM; {after_full:,} after VACUUM FULL "
          f"(-{100 * (1 - after_full / before_bytes):.0f}%)")
    for table, n in sorted(removed.rows.items(), key=lambda kv: -kv[1]):
        print(f"  {table:<16}{n:>10,} rows {removed.bytes.get(table, 0) / 1e6:>8.1f} MB")


async def main() -> None:
    total = int(os.environ.get("BENCH_PURGE_EVENTS", "100000"))
    # BENCH_PURGE_FILL=events: the storage bench's own writer, event by event, with its forks
    # (slower: ~200 events/s on 2 shared cores).
    fast = os.environ.get("BENCH_PURGE_FILL", "batches") != "events"
    from worker.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="bench-purge-") as d:
        pg = EmbeddedPostgres(Path(d) / "pg", fsync=False)
        pg.start()
        try:
            admin = await asyncpg.connect(pg.dsn())
            try:
                await admin.execute('CREATE DATABASE "bench_purge"')
                took = await _fill(pg.dsn("bench_purge"), total, fast)
                how = "persist_many, batches of 500" if fast else "persist, event by event"
                print(f"filled: {total} events through PostgresStore.{how} in {took:.0f} s")
                for copy in ("bench_purge_room", "bench_purge_history"):
                    await admin.execute(f'CREATE DATABASE "{copy}" TEMPLATE "bench_purge"')
            finally:
                await admin.close()
            await _purge_room(pg.dsn("bench_purge_room"), total)
            await _purge_history(pg.dsn("bench_purge_history"), total)
        finally:
            pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
