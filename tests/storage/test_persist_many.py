"""`PostgresStore.persist_many`: several writes of a room in one transaction, the bulk path
for runs of new events, and what happens when a run meets an event already stored."""

from __future__ import annotations

import pytest

from tests.storage.helpers import make_event, member, write
from worker.storage import PostgresStore
from worker.storage.handles import PgState
from worker.storage.run_write import StaleWrite

ROOM = "!many:test"


async def _room(store: PostgresStore) -> PgState:
    """A created room with alice joined, written one by one; returns its current state."""
    create, raw = make_event(ROOM, "$create", "m.room.create", "", content={"creator": "@alice:test"})
    empty = PgState(ROOM, 0)
    after_create = store.apply(empty, {("m.room.create", ""): "$create"})
    await store.persist(write(create, raw, before=empty, current=after_create, extremities=["$create"]))
    join, raw = member(ROOM, "$join", "@alice:test", prev=["$create"], auth=["$create"])
    after_join = store.apply(after_create, {("m.room.member", "@alice:test"): "$join"})
    await store.persist(write(join, raw, before=after_create, current=after_join, extremities=["$join"]))
    return after_join


async def test_a_run_of_new_events_is_stored_as_one_by_one_would(store: PostgresStore) -> None:
    state = await _room(store)
    writes = []
    prev = "$join"
    for i in range(10):
        eid = f"$m{i}"
        if i % 3 == 0:
            ev, raw = member(ROOM, eid, f"@u{i}:test", prev=[prev], auth=["$create", "$join"])
            after = store.apply(state, {("m.room.member", f"@u{i}:test"): eid})
        else:
            ev, raw = make_event(ROOM, eid, "m.room.message", prev=[prev], auth=["$create", "$join"])
            after = state
        writes.append(write(ev, raw, before=state, current=after, extremities=[eid]))
        state, prev = after, eid
    await store.persist_many(writes)
    fresh = PostgresStore(store.pool)  # nothing cached: everything read back
    stored = await fresh.events([w.event.event_id for w in writes])
    assert sorted(stored) == sorted(w.event.event_id for w in writes)
    assert await fresh.extremities(ROOM) == ["$m9"]
    current = await fresh.current_state(ROOM)
    assert current is not None
    assert await fresh.materialize(current) == await store.materialize(state)
    after = await fresh.state_after(["$m3"])
    assert ("m.room.member", "@u3:test") in await fresh.materialize(after["$m3"])
    async with store.pool.acquire() as c:
        auth = await c.fetchval(
            "SELECT auth_event_nids FROM events WHERE event_id = '$m5'"
        )
        nids = await c.fetchval(
            "SELECT array_agg(event_nid ORDER BY event_nid) FROM events"
            " WHERE event_id IN ('$create', '$join')"
        )
        assert list(auth) == list(nids)
        assert await c.fetchval("SELECT count(*) FROM event_prevs") == 11
        assert await c.fetchval("SELECT count(*) FROM write_log") == 12


async def test_a_run_meeting_a_stored_event_stores_nothing(store: PostgresStore) -> None:
    state = await _room(store)
    ev1, raw1 = make_event(ROOM, "$a", "m.room.message", prev=["$join"], auth=["$create"])
    await store.persist(write(ev1, raw1, before=state, current=state, extremities=["$a"]))
    ev2, raw2 = make_event(ROOM, "$b", "m.room.message", prev=["$a"], auth=["$create"])
    # "$a" again (as a stale owner would), then a new event: the bulk insert finds "$a".
    again = write(ev1, raw1, before=state, current=state, extremities=["$a"])
    with pytest.raises(StaleWrite):
        await store.persist_many([again, write(ev2, raw2, before=state, current=state, extremities=["$b"])])
    assert await store.events(["$b"]) == {}
    assert await store.extremities(ROOM) == ["$a"]
