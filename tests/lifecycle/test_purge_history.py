"""`purge_history` against real PostgreSQL: old events and the state only they needed go;
current state, the state at kept events, auth chains and new events' outcomes stay as they
would have been."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.fixtures.builder import RoomBuilder
from tests.lifecycle.rooms import continuation, feed, long_room, pipeline_over
from worker.core.outcomes import Outcome
from worker.storage import PostgresStore
from worker.storage.purge import PostgresPurger, PurgeRefused

EVENTS = 2000


async def _count(pool: asyncpg.Pool, table: str) -> int:
    n: int = await pool.fetchval(f"SELECT count(*) FROM {table}")
    return n


async def _state_at(store: PostgresStore, event_ids: list[str]) -> dict[str, dict[tuple[str, str], str]]:
    handles = await store.state_after(event_ids)
    return {e: await store.materialize(h) for e, h in handles.items()}


async def _auth_chains_complete(pool: asyncpg.Pool) -> None:
    """Every stored event's auth events are stored (so every auth chain is whole)."""
    missing = await pool.fetchval(
        "SELECT count(*) FROM events e, unnest(e.auth_event_nids) a(nid)"
        " WHERE NOT EXISTS (SELECT 1 FROM events x WHERE x.event_nid = a.nid)"
    )
    assert missing == 0


async def test_purge_history_keeps_what_is_needed(
    other_pool: Callable[..., Awaitable[asyncpg.Pool]]
) -> None:
    b = long_room("!long:test", EVENTS)
    order = list(b.events)
    built = await other_pool()
    await feed(pipeline_over(PostgresStore(built)), b)
    name = await built.fetchval("SELECT current_database()")
    await built.close()
    # Two copies of the room: one purged, one (the replica) not.
    pool = await other_pool(name)
    store, replica = PostgresStore(pool), PostgresStore(await other_pool(name))

    cut = order[len(order) * 9 // 10]
    kept = order[len(order) * 9 // 10 :]
    current = await store.materialize(await _current(store, b))
    states = await _state_at(store, kept)
    snapshots, blocks = await _count(pool, "state_snapshots"), await _count(pool, "state_blocks")

    done = await PostgresPurger(store).purge_history(b.room_id, before_event_id=cut)
    assert done.remaining == 0
    # The old events (by depth, the first 90% of this linear room) all went, but those the
    # state at kept events or an auth chain still names.
    assert done.removed.rows["events"] + done.kept_for_state == len(order) * 9 // 10
    assert done.kept_for_state < len(order) // 5
    left = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM events")}
    assert set(kept) <= left
    # Old events stay only as current state, state at kept events or auth chains need them.
    assert len(left) < len(order) // 4
    assert await store.materialize(await _current(store, b)) == current
    assert await _state_at(store, kept) == states
    await _auth_chains_complete(pool)
    assert await _count(pool, "state_snapshots") < snapshots // 5
    assert await _count(pool, "state_blocks") <= blocks

    # New events get the outcomes they get where nothing was purged.
    more = continuation(b)
    got = await feed(pipeline_over(store), b, more)
    want = await feed(pipeline_over(replica), b, more)
    assert [(r.outcome, r.reason_code) for r in got] == [(r.outcome, r.reason_code) for r in want]
    assert {r.outcome for r in got} == {Outcome.ACCEPTED, Outcome.REJECTED}
    assert await store.materialize(await _current(store, b)) == await replica.materialize(
        await _current(replica, b)
    )
    assert sorted(await store.extremities(b.room_id)) == sorted(await replica.extremities(b.room_id))


async def test_purge_history_by_time_in_bounded_runs(pool: asyncpg.Pool, store: PostgresStore) -> None:
    b = long_room("!long:test", 600)
    await feed(pipeline_over(store), b)
    order = list(b.events)
    # The builder stamps events one millisecond apart, in order.
    before_ts = b.events[order[400]]["origin_server_ts"]
    current = await store.materialize(await _current(store, b))
    purger = PostgresPurger(store)
    runs = []
    while True:
        done = await purger.purge_history(b.room_id, before_ts=before_ts, limit=100)
        runs.append(done.removed.rows.get("events", 0))
        if done.remaining == 0:
            break
    assert len(runs) >= 3 and max(runs) <= 100
    left = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM events")}
    assert set(order[400:]) <= left
    assert await store.materialize(await _current(store, b)) == current
    await _auth_chains_complete(pool)
    again = await purger.purge_history(b.room_id, before_ts=before_ts)
    assert again.removed.total_rows == 0


async def test_refusals(store: PostgresStore) -> None:
    b = long_room("!r:test", 20)
    await feed(pipeline_over(store), b)
    purger = PostgresPurger(store)
    with pytest.raises(PurgeRefused) as e:
        await purger.purge_history("!nope:test", before_ts=1)
    assert e.value.code == "unknown_room"
    with pytest.raises(PurgeRefused) as e:
        await purger.purge_history(b.room_id, before_event_id="$nope")
    assert e.value.code == "unknown_event"
    with pytest.raises(ValueError):
        await purger.purge_history(b.room_id)


async def _current(store: PostgresStore, b: RoomBuilder):  # type: ignore[no-untyped-def]
    h = await store.current_state(b.room_id)
    assert h is not None
    return h
