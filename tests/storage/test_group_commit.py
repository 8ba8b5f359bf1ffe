"""Group commit: writes of several rooms made at the same time share a transaction, store
exactly what one transaction per room would, and one room's failure stays its own."""

from __future__ import annotations

import asyncio
import contextvars

import asyncpg
import pytest

from tests.storage.helpers import make_event, member, write
from worker.errors import RetryableError
from worker.pipeline.ports import EventWrite
from worker.storage import PostgresStore
from worker.storage.events import RoomRow
from worker.storage.store import PgState, StaleWrite

ROOMS = 12


def _creation(store: PostgresStore, room: str) -> tuple[list[EventWrite], PgState]:
    """The writes that create `room` with alice joined and post two messages."""
    create, raw = make_event(room, f"$c{room}", "m.room.create", "", content={"creator": "@alice:test"})
    empty = PgState(room, 0)
    s1 = store.apply(empty, {("m.room.create", ""): create.event_id})
    join, raw_join = member(room, f"$j{room}", "@alice:test", prev=[create.event_id], auth=[create.event_id])
    s2 = store.apply(s1, {("m.room.member", "@alice:test"): join.event_id})
    writes = [
        write(create, raw, before=empty, current=s1, extremities=[create.event_id]),
        write(join, raw_join, before=s1, current=s2, extremities=[join.event_id]),
    ]
    prev = join.event_id
    for i in range(2):
        msg, raw_msg = make_event(room, f"$m{i}{room}", "m.room.message", prev=[prev], auth=[create.event_id])
        writes.append(write(msg, raw_msg, before=s2, current=s2, extremities=[msg.event_id]))
        prev = msg.event_id
    return writes, s2


async def _write_one_by_one(store: PostgresStore, writes: list[EventWrite]) -> None:
    for w in writes:
        await store.persist(w)


async def _stored(pool: asyncpg.Pool, room: str) -> tuple[object, ...]:
    fresh = PostgresStore(pool)  # nothing cached: everything is read back
    current = await fresh.current_state(room)
    assert current is not None
    return (await fresh.extremities(room), await fresh.materialize(current))


async def test_rooms_written_at_once_share_transactions_and_store_the_same(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresStore(pool, concurrency=1)
    rooms = [f"!g{i}:test" for i in range(ROOMS)]
    plans = {room: _creation(store, room) for room in rooms}
    await asyncio.gather(*(_write_one_by_one(store, plans[r][0]) for r in rooms))
    # One slot: while one transaction ran, the other rooms' writes queued and went together.
    assert store._commits.requests == ROOMS * 4
    assert store._commits.calls < ROOMS * 4
    for room in rooms:
        extremities, state = await _stored(pool, room)
        assert extremities == [f"$m1{room}"]
        assert state == await store.materialize(plans[room][1])
    async with pool.acquire() as c:
        assert await c.fetchval("SELECT count(*) FROM events") == ROOMS * 4


async def test_one_rooms_failure_does_not_fail_the_others_of_its_group(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresStore(pool, concurrency=1)
    good = [f"!ok{i}:test" for i in range(4)]
    bad = "!bad:test"
    plans = {room: _creation(store, room) for room in [*good, bad]}
    # The bad room is created; then a run that repeats a stored event is refused (StaleWrite).
    await _write_one_by_one(store, plans[bad][0])
    writes, state = plans[bad]
    again = writes[-1]
    late, raw = make_event(bad, "$late", "m.room.message", prev=[again.event.event_id])
    rerun = [again, write(late, raw, before=state, current=state, extremities=["$late"])]

    blocker = asyncio.Event()
    real_txn = store._group_txn

    async def slow_first(conn: asyncpg.Connection, commits: list) -> list:  # type: ignore[type-arg]
        await blocker.wait()
        return await real_txn(conn, commits)

    store._group_txn = slow_first  # type: ignore[method-assign]
    # The first write holds the only slot; everything else queues behind it as one group.
    first = asyncio.create_task(store.persist(plans[good[0]][0][0]))
    await asyncio.sleep(0.05)
    others = [asyncio.create_task(_write_one_by_one(store, plans[r][0])) for r in good[1:]]
    failing = asyncio.create_task(store.persist_many(rerun))
    await asyncio.sleep(0.05)
    blocker.set()
    await first
    await _write_one_by_one(store, plans[good[0]][0][1:])
    await asyncio.gather(*others)
    with pytest.raises(StaleWrite):
        await failing
    for room in good:
        assert (await _stored(pool, room))[0] == [f"$m1{room}"]
    assert await store.events(["$late"]) == {}
    assert (await _stored(pool, bad))[0] == [f"$m1{bad}"]


_REFUSE: contextvars.ContextVar[bool] = contextvars.ContextVar("refuse", default=False)


class _Refusing(PostgresStore):
    """Refuses a write when its caller's context says so: the check runs in the group
    commit's task, so this only works if each room's writes run in their caller's context."""

    def check_room_row(self, room: RoomRow) -> None:
        if _REFUSE.get():
            raise RetryableError(f"refused {room.room_id}", code="test_refusal")


async def test_each_rooms_writes_run_in_their_callers_context(pool: asyncpg.Pool) -> None:
    store = _Refusing(pool, concurrency=1)
    rooms = [f"!ctx{i}:test" for i in range(5)]
    plans = {room: _creation(store, room) for room in rooms}

    async def create(room: str, refuse: bool) -> None:
        _REFUSE.set(refuse)
        await store.persist_many(plans[room][0][:1])

    results = await asyncio.gather(
        *(create(r, i == 2) for i, r in enumerate(rooms)), return_exceptions=True
    )
    assert [isinstance(r, RetryableError) for r in results] == [False, False, True, False, False]
    assert sorted(await store.events([f"$c{r}" for r in rooms])) == sorted(
        f"$c{r}" for i, r in enumerate(rooms) if i != 2
    )
