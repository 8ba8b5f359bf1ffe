"""Shard leases against the real PostgreSQL, the write fence of `PostgresStore`, and
`shard_of` against NATS's own subject partitioning."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import msgspec
import nats
import pytest

from tests.fixtures.builder import RoomBuilder
from worker.bus.leases import LeaseSettings, ShardLeases
from worker.bus.shards import fair_share, shard_of
from worker.bus.streams import StreamLimits, ensure_streams
from worker.bus.subjects import Subjects
from worker.messages import InputRoomEvent
from worker.pipeline import Pipeline
from worker.pipeline.ports import EventWrite
from worker.storage import PostgresStore, apply_migrations
from worker.storage.errors import is_database_down
from worker.storage.fence import StaleRoomView

K = 5


class Tracker:
    """Who consumes which shard, per the callbacks; fails on a shard consumed twice."""

    def __init__(self) -> None:
        self.owner: dict[int, str] = {}
        self.double: list[str] = []
        self.lost: list[tuple[str, int]] = []

    def leases(self, dsn: str, prefix: str, name: str) -> ShardLeases:
        async def gain(shard: int) -> None:
            if shard in self.owner:
                self.double.append(f"{name} gained {shard} held by {self.owner[shard]}")
            self.owner[shard] = name

        async def release(shard: int) -> None:
            assert self.owner.pop(shard) == name

        async def lost(shard: int) -> None:
            self.lost.append((name, shard))
            assert self.owner.pop(shard) == name

        return ShardLeases(dsn, prefix, name, LeaseSettings(shards=K, interval=0.05),
                           on_gain=gain, on_release=release, on_lost=lost)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in self.owner.values():
            out[name] = out.get(name, 0) + 1
        return out


async def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


async def test_leases_balance_take_over_and_rebalance(database_dsn: str, prefix: str) -> None:
    t = Tracker()
    a, b, c = (t.leases(database_dsn, prefix, n) for n in "abc")
    tasks = [asyncio.create_task(x.run()) for x in (a, b)]
    try:
        await until(lambda: len(t.owner) == K and max(t.counts().values()) <= 3, "a, b balanced")
        tasks.append(asyncio.create_task(c.run()))
        # A third worker: the others release down to ceil(5/3) = 2 and c picks the rest up.
        await until(lambda: len(t.owner) == K and t.counts().get("c", 0) >= 1
                    and max(t.counts().values()) <= fair_share(K, 3), "c joined")
        # b dies: its session closes without releasing; a and c take its shards over.
        b.halt()
        await b.close()
        for s in [s for s, n in t.owner.items() if n == "b"]:
            del t.owner[s]
        await until(lambda: len(t.owner) == K and set(t.owner.values()) == {"a", "c"},
                    "b's shards taken over")
        assert t.double == []
    finally:
        for x in (a, b, c):
            x.halt()
        await asyncio.gather(*tasks, return_exceptions=True)
        for x in (a, b, c):
            await x.close()


async def test_a_broken_lease_session_stops_every_shard_at_once(
    database_dsn: str, pg_admin_dsn: str, prefix: str
) -> None:
    t = Tracker()
    a = t.leases(database_dsn, prefix, "a")
    task = asyncio.create_task(a.run())
    try:
        await until(lambda: len(t.owner) == K, "a owns everything")
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'roomserver-lease a'"
            )
        finally:
            await admin.close()
        await until(lambda: len(t.lost) == K, "every shard reported lost")
        # Then it reconnects and takes them again.
        await until(lambda: len(t.owner) == K, "a owns everything again")
        assert t.double == []
    finally:
        a.halt()
        await task
        await a.close()


class _NoRelay:
    async def flush(self, room_id: str) -> None:
        return None


def _input(b: RoomBuilder, eid: str) -> InputRoomEvent:
    return InputRoomEvent(kind="new", event=msgspec.Raw(msgspec.json.encode(b.events[eid])))


def _public_room(room_id: str) -> tuple[RoomBuilder, list[str]]:
    """A public room (alice, bob) and four messages: nine events, in order."""
    b = RoomBuilder("10", room_id=room_id, real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "public")
    b.join("bob")
    ids = list(b.events)
    for i in range(4):
        ids.append(b.message("bob", f"m{i}"))
    return b, ids


async def _a_writes_after_b(
    pool: asyncpg.Pool, sa: PostgresStore, b: RoomBuilder, ids: list[str]
) -> tuple[Pipeline, PostgresStore]:
    """Worker A (store `sa`) writes ids[:5], worker B ids[5:8]; A's write of ids[8], computed
    from its now stale row, is refused. Returns A's pipeline and B's store."""
    await apply_migrations(pool)
    sb = PostgresStore(pool, fence_writes=True)
    pa, pb = Pipeline(sa, _NoRelay()), Pipeline(sb, _NoRelay())
    for eid in ids[:5]:
        await pa.handle(b.room_id, _input(b, eid))
    for eid in ids[5:8]:
        await pb.handle(b.room_id, _input(b, eid))
    with pytest.raises(StaleRoomView):
        await pa.handle(b.room_id, _input(b, ids[8]))
    return pa, sb


async def test_a_stale_view_of_the_room_is_fenced(database_dsn: str) -> None:
    """Worker A handled a room, worker B went on with it; A's cached row is stale. A's next
    write is refused (nothing written), and once retried with a fresh view it is right."""
    b, ids = _public_room("!fence:test")
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=4)
    try:
        sa = PostgresStore(pool, fence_writes=True)
        pa, _ = await _a_writes_after_b(pool, sa, b, ids)
        assert sa.stale_views == 1
        result = await pa.handle(b.room_id, _input(b, ids[8]))
        assert result.outcome.value == "accepted"
        assert await sa.extremities(b.room_id) == [ids[8]]
        current = await sa.current_state(b.room_id)
        assert current is not None
        assert await sa.materialize(current) == b.state
        # Forgetting a shard drops exactly the cached rows of its rooms.
        assert sa.forget_rooms(lambda r: shard_of(r, K) == (shard_of(b.room_id, K) + 1) % K) == 0
        assert sa.forget_rooms(lambda r: shard_of(r, K) == shard_of(b.room_id, K)) == 1
    finally:
        await pool.close()


class _ForgetsBeforeWriting(PostgresStore):
    """Forgets the room's cached row right before each write, as gaining a shard mid-event
    does (`forget_rooms`)."""

    async def persist(self, write: EventWrite) -> None:
        self.forget_room(write.room_id)
        await super().persist(write)


async def test_the_fence_uses_the_view_the_event_was_computed_from(database_dsn: str) -> None:
    """A stale view must be refused even when the cache was refreshed between computing the
    event and writing it: the fence compares what the pipeline used, not a fresh read."""
    b, ids = _public_room("!refresh:test")
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=4)
    try:
        # A computes ids[8] from its stale row; the row is refreshed from the database just
        # before the write (_ForgetsBeforeWriting), and the write must still be refused.
        pa, sb = await _a_writes_after_b(pool, _ForgetsBeforeWriting(pool, fence_writes=True), b, ids)
        assert await sb.extremities(b.room_id) == [ids[7]]
        # Retried (as the bus does), it is computed from the fresh row and written right.
        result = await pa.handle(b.room_id, _input(b, ids[8]))
        assert result.outcome.value == "accepted"
        sb.forget_room(b.room_id)
        assert await sb.extremities(b.room_id) == [ids[8]]
    finally:
        await pool.close()


async def test_a_soft_fail_decided_on_a_stale_view_is_fenced(database_dsn: str) -> None:
    """Worker A's cached row predates bob's join, which worker B wrote. Bob's message (its
    prev is the join) is soft-fail-checked by A against A's stale current state, where bob
    is not in the room: that soft-fail must be refused, not stored, and the retry accepts."""
    b, ids = _public_room("!softfence:test")
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=4)
    try:
        await apply_migrations(pool)
        sa, sb = PostgresStore(pool, fence_writes=True), PostgresStore(pool, fence_writes=True)
        pa, pb = Pipeline(sa, _NoRelay()), Pipeline(sb, _NoRelay())
        for eid in ids[:4]:
            await pa.handle(b.room_id, _input(b, eid))
        await pb.handle(b.room_id, _input(b, ids[4]))  # bob joins, written by B
        with pytest.raises(StaleRoomView):
            await pa.handle(b.room_id, _input(b, ids[5]))
        assert await sb.events([ids[5]]) == {}
        result = await pa.handle(b.room_id, _input(b, ids[5]))
        assert result.outcome.value == "accepted"
    finally:
        await pool.close()


async def test_shard_of_matches_the_streams_partitioning(nats_url: str, prefix: str) -> None:
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, subjects, StreamLimits(shards=7))
        rooms = [f"!p{i}:test" for i in range(40)]
        for room in rooms:
            await js.publish(subjects.input(room), b"{}")
        for seq, room in enumerate(rooms, start=1):
            msg = await js.get_msg(subjects.input_stream, seq)
            shard, _ = subjects.parse_stored_input(msg.subject)
            assert shard == shard_of(room, 7), room
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), True),
        (asyncpg.InternalClientError("cannot switch to state 15"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (asyncpg.UniqueViolationError("duplicate key"), False),
        (StaleRoomView("moved"), False),
        (ValueError("a bug"), False),
    ],
)
def test_a_database_restart_is_retryable_not_a_dead_letter(
    exc: BaseException, transient: bool
) -> None:
    assert is_database_down(exc) is transient
