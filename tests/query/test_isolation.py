"""A query never blocks event processing of other rooms (issue 7, DESIGN §5).

The real worker (consumer, pipeline, PostgreSQL store, outbox relay) and the query service
share one asyncpg pool and one NATS connection, as `worker.app` wires them. A burst of heavy
queries on a big room (state resolution over a fork, every member's current state) is held
mid-flight, each holding a pool connection, until the test lets go; meanwhile another room's
events must be accepted and their outputs published, and the queries must never hold more than
their quarter of the pool. Likewise with the queries held in their state resolution threads:
the pipeline's own off-loop resolution of another room's fork must still find a thread. Holding
is done with gates, not timing: nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest

from tests.e2e.conftest import Client, WorkerRun, client, event_id_of  # noqa: F401
from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import builder
from worker.bus.subjects import Subjects
from worker.pipeline import state as pipeline_state
from worker.query.ports import QueryEvent
from worker.query.service import QueryService
from worker.storage import query_reads
from worker.storage.query_reads import PostgresQueryReads
from worker.wiring import start_queries

# The worker's pool: large enough that a quarter of it is more than one connection, so the
# test sees several queries held at once and can tell "a quarter" from "all of it".
POOL_SIZE = 8
QUERY_SHARE = POOL_SIZE // 4
MEMBERS = 40
STATE_QUERIES = 6
MEMBER_QUERIES = 6
# Only against a hang; every wait below ends on an event, long before this.
HANG_GUARD = 60.0


class Tracker:
    """How many pool connections the query side holds right now, and the most it ever held;
    how many worker threads its state resolutions hold. Two gates: `gate` holds a query's
    connection, `thread_gate` its resolution thread."""

    def __init__(self) -> None:
        self.holding = 0
        self.peak = 0
        self.held = 0  # queries that reached the gate
        self.gate = asyncio.Event()
        self.thread_gate = threading.Event()
        self._threads: set[int] = set()
        self._threads_lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        self._thread_changed = asyncio.Event()

    @property
    def threads(self) -> int:
        with self._threads_lock:
            return len(self._threads)

    def hold_thread(self) -> None:
        """In a worker thread: wait for `thread_gate`, counted while waiting."""
        me = threading.get_ident()
        with self._threads_lock:
            self._threads.add(me)
        self._loop.call_soon_threadsafe(self._thread_changed.set)
        try:
            self.thread_gate.wait()
        finally:
            with self._threads_lock:
                self._threads.discard(me)

    async def until_threads(self, n: int) -> None:
        async def reach() -> None:
            while self.threads < n:
                self._thread_changed.clear()
                if self.threads >= n:
                    break
                await self._thread_changed.wait()

        await asyncio.wait_for(reach(), HANG_GUARD)

    async def change(self, delta: int) -> None:
        async with self._changed:
            self.holding += delta
            self.peak = max(self.peak, self.holding)
            self._changed.notify_all()

    async def gated(self) -> None:
        async with self._changed:
            self.held += 1
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), HANG_GUARD)


class _Counted:
    """`pool.acquire()` that counts the connection as held by queries while it is out."""

    def __init__(self, pool: asyncpg.Pool, tracker: Tracker) -> None:
        self._cm = pool.acquire()
        self._tracker = tracker

    async def __aenter__(self) -> Any:
        conn = await self._cm.__aenter__()
        await self._tracker.change(+1)
        return conn

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._cm.__aexit__(*exc)
        finally:
            await self._tracker.change(-1)


class CountingPool:
    """The shared pool as the query side sees it: every connection it takes is counted.

    `fetch`/`fetchval`/`fetchrow`/`execute` go through `acquire` (asyncpg's own would take
    the connection behind our back); anything else (sizes) is the real pool's.
    """

    def __init__(self, pool: asyncpg.Pool, tracker: Tracker) -> None:
        self._pool = pool
        self._tracker = tracker

    def acquire(self) -> _Counted:
        return _Counted(self._pool, self._tracker)

    async def _on_conn(self, method: str, *args: Any, **kw: Any) -> Any:
        async with self.acquire() as conn:
            return await getattr(conn, method)(*args, **kw)

    async def fetch(self, *args: Any, **kw: Any) -> Any:
        return await self._on_conn("fetch", *args, **kw)

    async def fetchval(self, *args: Any, **kw: Any) -> Any:
        return await self._on_conn("fetchval", *args, **kw)

    async def fetchrow(self, *args: Any, **kw: Any) -> Any:
        return await self._on_conn("fetchrow", *args, **kw)

    async def execute(self, *args: Any, **kw: Any) -> Any:
        return await self._on_conn("execute", *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class ThreadHeldEvent(QueryEvent):
    """A loaded event whose parsing, when a worker thread does it (a state resolution run
    off the loop), waits for the test: a resolution that is slow in CPU."""

    def __init__(self, tracker: Tracker, e: QueryEvent) -> None:
        super().__init__(
            event_id=e.event_id, json=e.json, rules=e.rules, room_id=e.room_id,
            depth=e.depth, outcome=e.outcome, has_state=e.has_state, redacted=e.redacted,
            membership=e.membership,
        )
        self.tracker = tracker

    @property
    def event(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            self.tracker.hold_thread()
        return super().event


def held_reads(tracker: Tracker) -> type[PostgresQueryReads]:
    """The real PostgreSQL query reads over a counting pool, whose event loads (every heavy
    query ends with one: the events to resolve, the state events to send) hold their pool
    connection until the test opens the gate: a query that is slow in the database. The
    events they return hold the resolution thread until `thread_gate` is set."""

    class HeldReads(PostgresQueryReads):
        @classmethod
        def from_pool(cls, pool: asyncpg.Pool[Any]) -> PostgresQueryReads:
            counting: Any = CountingPool(pool, tracker)
            return super().from_pool(counting)

        async def events(self, event_ids: Sequence[str]) -> dict[str, QueryEvent]:
            async with self._pool.acquire():
                await tracker.gated()
                await tracker.gate.wait()
            found = await super().events(event_ids)
            return {i: ThreadHeldEvent(tracker, e) for i, e in found.items()}

    return HeldReads


@pytest.fixture
async def worker(
    nats_url: str, database_dsn: str, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[WorkerRun]:
    """The e2e harness's worker, with a pool of POOL_SIZE (or the test's parameter) instead
    of its usual 4."""
    real = asyncpg.create_pool
    size = getattr(request, "param", POOL_SIZE)

    def sized(dsn: str, **kw: Any) -> Any:
        return real(dsn, **{**kw, "max_size": size})

    run = WorkerRun(nats_url, database_dsn, Subjects(prefix))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(asyncpg, "create_pool", sized)
        await run.start()
    try:
        yield run
    finally:
        await run.stop()


@pytest.fixture
async def held(
    worker: WorkerRun, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[QueryService, Tracker]]:
    assert worker.nc is not None and worker.pool is not None
    tracker = Tracker()
    monkeypatch.setattr(query_reads, "PostgresQueryReads", held_reads(tracker))
    # As worker.app starts it: the worker's own NATS connection and pool.
    svc = await start_queries(worker.nc, worker.pool, prefix=prefix)
    try:
        yield svc, tracker
    finally:
        tracker.gate.set()
        tracker.thread_gate.set()
        await svc.stop()


def big_room() -> tuple[RoomBuilder, str, str]:
    """A public room of MEMBERS members whose topic forked: (builder, topic 1, topic 2)."""
    b = builder("10")
    b.room_id = "!big:test"
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "public")
    for n in range(MEMBERS):
        b.join(f"member{n}")
    other = b.fork()
    t1 = b.topic("alice", "one")
    t2 = other.topic(
        "alice", "two", extra={"origin_server_ts": b.events[t1]["origin_server_ts"] + 1}
    )
    return b, t1, t2


def small_room() -> RoomBuilder:
    """Another room, with a fork of its own that the pipeline must resolve."""
    b = builder("10")
    b.room_id = "!other:test"
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100, "bob": 50})
    b.join_rules("alice", "public")
    b.join("bob")
    other = b.fork()
    t1 = b.topic("alice", "left")
    t2 = other.topic("bob", "right")
    b.message("alice", "merge", prev=[t1, t2])
    for n in range(5):
        b.message("bob", f"while the queries are held {n}")
    return b


async def send_all(client: Client, b: RoomBuilder) -> None:  # noqa: F811
    for eid in list(b.events):
        reply = await client.send(b, eid)
        assert reply.outcome == "accepted", (eid, reply)


async def published(client: Client, event_ids: set[str]) -> None:  # noqa: F811
    """Read the output stream until every one of `event_ids` came out."""
    async def read() -> None:
        while not event_ids <= {event_id_of(o) for o in client.seen}:
            await client.outputs(at_least=len(client.seen) + 1, timeout=1.0)

    await asyncio.wait_for(read(), HANG_GUARD)


async def test_held_queries_never_stop_other_rooms(
    client: Client, held: tuple[QueryService, Tracker], prefix: str  # noqa: F811
) -> None:
    svc, tracker = held
    tracker.thread_gate.set()  # here the queries are held on their connections only
    # The cap is the app's: a quarter of the shared pool.
    assert svc.max_in_flight == QUERY_SHARE

    big, t1, t2 = big_room()
    await send_all(client, big)
    await published(client, set(big.events))

    def ask(name: str, body: dict[str, Any]) -> Awaitable[Any]:
        return client.nc.request(
            f"{prefix}.query.{name}", json.dumps(body).encode(), timeout=HANG_GUARD
        )

    resolving = [
        asyncio.create_task(ask("state_after_events", {
            "room_id": big.room_id, "prev_event_ids": [t1, t2],
        }))
        for _ in range(STATE_QUERIES)
    ]
    members = [
        asyncio.create_task(ask("current_state", {
            "room_id": big.room_id, "state_tuples": [["m.room.member", "*"]],
        }))
        for _ in range(MEMBER_QUERIES)
    ]
    queries = resolving + members
    try:
        # The burst fills the queries' share of the pool, each holding its connection...
        await tracker.until(lambda: tracker.held == QUERY_SHARE)
        assert tracker.holding == QUERY_SHARE

        # ...while another room is processed end to end: accepted (the pipeline committed,
        # fork resolution included) and every output published by the relay.
        small = small_room()
        await send_all(client, small)
        await published(client, set(small.events))

        # All that happened with the queries still held: none answered, none more let in.
        assert not any(q.done() for q in queries)
        assert tracker.held == QUERY_SHARE
        assert tracker.holding == QUERY_SHARE
        assert tracker.peak == QUERY_SHARE

        tracker.gate.set()
        replies = await asyncio.wait_for(asyncio.gather(*queries), HANG_GUARD)
    finally:
        tracker.gate.set()
        for q in queries:
            q.cancel()
        for q in queries:
            with contextlib.suppress(BaseException):
                await q

    # Released, the queued queries ran too, never more at once than the share.
    assert tracker.held >= len(queries)
    assert tracker.peak == QUERY_SHARE
    assert tracker.holding == 0
    member_ids = {eid for (t, _), eid in big.state.items() if t == "m.room.member"}
    for reply in replies:
        assert reply.headers is None or "Nats-Service-Error-Code" not in reply.headers
    for reply in replies[:STATE_QUERIES]:
        got = msgspec.json.decode(reply.data)
        assert got["prev_events_exist"]
        state = {(e["type"], e["state_key"]): e["event_id"] for e in got["state_events"]}
        assert state[("m.room.topic", "")] in (t1, t2)
        assert {eid for (t, _), eid in state.items() if t == "m.room.member"} == member_ids
    for reply in replies[STATE_QUERIES:]:
        got = msgspec.json.decode(reply.data)
        assert {e["event_id"] for e in got["state_events"]} == member_ids


# A pool so big that its quarter is the service's whole max_in_flight (16): more queries than
# the loop's default executor has threads on a small machine (min(32, CPUs + 4)).
BIG_POOL = 64
DEFAULT_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)


@pytest.mark.parametrize("worker", [BIG_POOL], indirect=True)
async def test_held_resolutions_leave_the_pipeline_a_thread(
    client: Client, held: tuple[QueryService, Tracker], prefix: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Query resolutions and the pipeline's big-fork resolutions share the loop's default
    executor: queries must never take all of its threads."""
    svc, tracker = held
    tracker.gate.set()  # here the queries are held in their resolution threads only
    # Every fork the pipeline resolves goes to a thread, as a big room's would.
    monkeypatch.setattr(pipeline_state, "OFFLOAD_EVENTS", 0)
    assert svc.max_in_flight < DEFAULT_EXECUTOR_THREADS

    big, t1, t2 = big_room()
    await send_all(client, big)
    queries = [
        asyncio.create_task(client.nc.request(
            f"{prefix}.query.state_after_events",
            json.dumps({"room_id": big.room_id, "prev_event_ids": [t1, t2]}).encode(),
            timeout=HANG_GUARD,
        ))
        for _ in range(16)
    ]
    try:
        await tracker.until_threads(svc.max_in_flight)
        small = small_room()
        await send_all(client, small)
        await published(client, set(small.events))
        assert not any(q.done() for q in queries)
        assert tracker.threads == svc.max_in_flight
        tracker.thread_gate.set()
        replies = await asyncio.wait_for(asyncio.gather(*queries), HANG_GUARD)
    finally:
        tracker.thread_gate.set()
        for q in queries:
            q.cancel()
        for q in queries:
            with contextlib.suppress(BaseException):
                await q
    for reply in replies:
        got = msgspec.json.decode(reply.data)
        state = {(e["type"], e["state_key"]): e["event_id"] for e in got["state_events"]}
        assert state[("m.room.topic", "")] in (t1, t2)
