"""`purge_room` against real PostgreSQL: exactly the room's rows go, in one transaction, and
the room can come back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.bus.outbox_rows import insert_outputs
from tests.lifecycle.rooms import (
    DUMPS,
    busy_room,
    dump,
    feed,
    feed_interleaved,
    pipeline_over,
    tables,
)
from worker.messages import decode_output
from worker.pipeline.ports import OutputRecord
from worker.storage import PostgresStore, fetch_unsent
from worker.storage import purge_sql as q
from worker.storage.outbox import PgOutboxStore
from worker.storage.purge import PostgresPurger, PurgeRefused, purge_output_id

GLOBAL = q.GLOBAL_TABLES


async def test_every_table_with_a_room_or_event_column_is_purged(pool: asyncpg.Pool) -> None:
    """A table added to the schema must be listed in purge_sql: by its room or event column
    in ROOM_ROWS (and HISTORY_ROWS for an event column), or as a global table."""
    rows = await pool.fetch(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c"
        " JOIN information_schema.tables t USING (table_schema, table_name)"
        " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"
    )
    columns: dict[str, set[str]] = {}
    for r in rows:
        columns.setdefault(r["table_name"], set()).add(r["column_name"])
    purged = {o.table for o in q.ROOM_ROWS}
    history = {o.table for o in q.HISTORY_ROWS}
    for table, cols in sorted(columns.items()):
        if table in GLOBAL:
            assert not cols & q.ROOM_COLUMNS, f"{table} is listed as global but has a room column"
            continue
        assert table in purged, f"table {table} is neither purged (purge_sql.ROOM_ROWS) nor global"
        if cols & q.EVENT_COLUMNS and not cols & q.ROOM_COLUMNS:
            # Tied to the room through an event only: purge_history must delete it too.
            assert table in history, f"table {table} has an event column but no HISTORY_ROWS entry"
    for o in (*q.ROOM_ROWS, *q.HISTORY_ROWS):
        assert o.column in columns.get(o.table, set()), f"{o.table}.{o.column} does not exist"


async def test_purge_a_room_among_others(
    pool: asyncpg.Pool, store: PostgresStore, other_pool: Callable[[], Awaitable[asyncpg.Pool]]
) -> None:
    """A, B and C interleaved, then B purged, holds what A and C alone hold, table by table."""
    a, b, c = busy_room("!a:test"), busy_room("!b:test", 7), busy_room("!c:test", 3)
    await feed_interleaved(pipeline_over(store), [a, b, c])
    b_nid = await pool.fetchval("SELECT room_nid FROM rooms WHERE room_id = $1", b.room_id)
    removed = await PostgresPurger(store).purge_room(b.room_id)
    assert removed.rows["events"] == len(b.events)
    assert removed.rows["rooms"] == 1
    assert all(removed.bytes[t] > 0 for t, n in removed.rows.items() if n)
    # The purge's own output, then nothing else of B.
    unsent = await fetch_unsent(pool, room_id=b.room_id, limit=10_000)
    assert [r.output_id for r in unsent] == [purge_output_id(b.room_id, b_nid)]
    assert decode_output(unsent[0].payload).type == "purge_room"
    await pool.execute("DELETE FROM outbox WHERE room_id = $1", b.room_id)

    alone = await other_pool()
    await feed_interleaved(pipeline_over(PostgresStore(alone)), [a, c])
    got, want = await dump(pool), await dump(alone)
    assert set(got) == set(DUMPS) == await tables(pool)
    for table in DUMPS:
        if table in GLOBAL:
            # Dictionaries are shared by every room and never deleted.
            assert set(got[table]) >= set(want[table]), table
        else:
            assert got[table] == want[table], table
    # The states the snapshots give are the same too.
    for room in (a, c):
        assert await _state(store, room.room_id) == await _state(PostgresStore(alone), room.room_id)


async def _state(store: PostgresStore, room_id: str) -> dict[tuple[str, str], str]:
    h = await store.current_state(room_id)
    assert h is not None
    return await store.materialize(h)


async def test_purged_room_is_unknown_and_comes_back(store: PostgresStore, pool: asyncpg.Pool) -> None:
    """Unknown to every read at once (no restart, same store and caches), then received
    again event by event with the same outcomes and no duplicate."""
    b = busy_room("!b:test")
    pipeline = pipeline_over(store)
    first = await feed(pipeline, b)
    assert await store.room(b.room_id) is not None
    await PostgresPurger(store).purge_room(b.room_id)
    assert await store.room(b.room_id) is None
    assert await store.current_state(b.room_id) is None
    assert await store.extremities(b.room_id) == []
    assert await store.events(list(b.events)) == {}
    assert await store.state_after(list(b.events)) == {}
    again = await feed(pipeline, b)
    assert [(r.outcome, r.duplicate) for r in again] == [(r.outcome, False) for r in first]
    assert await _state(store, b.room_id) == b.state
    # Its outputs were committed again, as new rows.
    outputs = await fetch_unsent(pool, room_id=b.room_id, limit=10_000)
    assert len(outputs) > len(b.events) // 2


async def test_unknown_room(store: PostgresStore) -> None:
    with pytest.raises(PurgeRefused) as e:
        await PostgresPurger(store).purge_room("!nope:test")
    assert e.value.code == "unknown_room"


async def test_an_aborted_purge_changes_nothing(store: PostgresStore, pool: asyncpg.Pool) -> None:
    """The deletes run in one transaction: an error after them (here, the output insert
    failing) leaves every row of the room."""
    b = busy_room("!b:test")
    await feed(pipeline_over(store), b)
    before = await dump(pool)
    await pool.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'refused'; END $$;"
        " CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse()"
    )
    with pytest.raises(asyncpg.RaiseError):
        await PostgresPurger(store).purge_room(b.room_id)
    await pool.execute("DROP TRIGGER refuse ON outbox")
    assert await dump(pool) == before
    assert await store.room(b.room_id) is not None


async def test_marking_an_old_lifes_output_leaves_the_new_one_unsent(pool: asyncpg.Pool) -> None:
    """The relay publishes a row, the room is purged and its event received again (same
    output id, new row) before the relay marks the first: the new row stays unsent."""
    relay_store = PgOutboxStore(pool)
    out = OutputRecord(output_id="$e:new_room_event", output_type="new_room_event", payload=b"{}")
    async with pool.acquire() as conn:
        await insert_outputs(conn, "!r:test", [out])
    (old,) = await relay_store.fetch_unsent(10)
    await pool.execute("DELETE FROM outbox WHERE room_id = '!r:test'")
    async with pool.acquire() as conn:
        await insert_outputs(conn, "!r:test", [out])
    await relay_store.mark_sent([old.seq])
    (new,) = await fetch_unsent(pool, room_id="!r:test")
    assert new.output_id == old.output_id and new.seq != old.seq
