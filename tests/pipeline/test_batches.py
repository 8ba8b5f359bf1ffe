"""Handling a room's inputs in batches (one transaction per batch) decides and stores exactly
what handling them one by one does, on the real PostgreSQL store.

The same input sequence — a new room from its create event, state changes, a refused ban,
a fork merged by a multi-prev event, redactions before and after their targets, a
soft-failed event, invites, outliers later promoted, a federated join's state, old events and
repeated inputs — goes once through `Pipeline.handle` per input and once through
`Pipeline.handle_batch` in chunks of random sizes, into two databases; results, outbox rows,
stored events, snapshots and the room's state must be identical.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest

from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import builder
from worker.core.outcomes import Outcome
from worker.embedded import EmbeddedPostgres
from worker.messages import HandleResult, InputRoomEvent
from worker.pipeline import Pipeline
from worker.pipeline.ports import EventWrite
from worker.storage import PostgresStore, apply_migrations
from worker.storage.batch import StoreBatch

Step = tuple[RoomBuilder, str, str, dict[str, Any]]


class _NoRelay:
    """Outputs stay in the outbox, where the test compares them."""

    async def flush(self, room_id: str) -> None:
        return None


def _scenario() -> list[Step]:
    b = builder("10")
    steps: list[Step] = []

    def add(bb: RoomBuilder, eid: str, kind: str = "new", **kw: Any) -> str:
        steps.append((bb, eid, kind, kw))
        return eid

    add(b, b.create("alice"))
    add(b, b.join("alice"))
    add(b, b.power_levels("alice", users={"alice": 100, "bob": 40}))
    add(b, b.join_rules("alice", "public"))
    add(b, b.join("bob"))
    for i in range(5):
        add(b, b.message("bob", f"m{i}"))
        add(b, b.topic("alice", f"t{i}"))
    # A repeat inside what is likely one batch.
    add(b, b.message("alice", "said twice"))
    add(*steps[-1][:2])
    latest = list(b.latest)
    add(b, b.ban("bob", "alice", apply=False))  # bob (40) may not ban: rejected
    b.latest = latest
    add(b, b.invite("alice", "carol"))
    add(b, b.join("carol"))
    fork = b.fork()
    add(b, b.topic("alice", "main branch"))
    side = fork.message("bob", "to be redacted")
    red_early = add(b, b.redact("alice", side))  # before its target
    add(fork, side)
    add(b, b.message("alice", "merged", prev=[red_early, side]))
    late = add(b, b.message("carol", "oops"))
    add(b, b.redact("alice", late))  # after its target
    stale = b.fork()
    add(b, b.ban("alice", "carol"))
    add(stale, stale.message("carol", "from the past"))  # soft-failed
    promoted = b.message("bob", "first seen as an outlier")
    add(b, promoted, "outlier")
    add(b, promoted)
    history = b.fork()
    for i in range(4):
        add(b, b.message("alice", f"after {i}"))
        add(b, b.state_event("m.room.name", "", {"name": f"N{i}"}, "alice"))
    add(b, history.message("alice", "long ago"), "old")
    # A federated join: the state as outliers, then the join with the state it saw.
    remote = builder("10")
    remote_steps = [remote.create("rita"), remote.join("rita")]
    remote_steps.append(remote.power_levels("rita", users={"rita": 100}))
    remote_steps.append(remote.join_rules("rita", "public"))
    remote.topic("rita", "remote room")
    for eid in sorted(set(remote.state.values()), key=lambda e: remote.events[e]["depth"]):
        add(remote, eid, "outlier")
    before = tuple(remote.state.values())
    add(remote, remote.join("@zed:test"), state_event_ids=before)
    for i in range(3):
        add(remote, remote.message("@zed:test", f"z{i}"))
    # A new room whose create event is refused (its sender is of another server than the
    # room): the events after it in its batch were validated ahead as that room's, and are
    # refused exactly as one by one.
    doomed = builder("10", room_id="!doomed:test")
    for eid in (doomed.create("@mallory:elsewhere.test"), doomed.join("@mallory:elsewhere.test"),
                doomed.message("@mallory:elsewhere.test", "anyone?")):
        add(doomed, eid)
    return steps


def _input(b: RoomBuilder, eid: str, kind: str, kw: dict[str, Any]) -> InputRoomEvent:
    raw = msgspec.Raw(msgspec.json.encode(b.events[eid]))
    return InputRoomEvent(kind=kind, event=raw, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def two_pools(embedded_pg: EmbeddedPostgres) -> AsyncIterator[list[asyncpg.Pool]]:
    names = [f"t_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    admin = await asyncpg.connect(embedded_pg.dsn())
    pools: list[asyncpg.Pool] = []
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
            pool = await asyncpg.create_pool(embedded_pg.dsn(name), min_size=1, max_size=4)
            assert pool is not None
            await apply_migrations(pool)
            pools.append(pool)
        yield pools
    finally:
        for pool in pools:
            await pool.close()
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _run(
    pool: asyncpg.Pool, steps: Sequence[Step], chunks: Sequence[int] | None
) -> tuple[list[tuple[str, str, str, bool]], PostgresStore]:
    store = PostgresStore(pool)
    pipeline = Pipeline(store, _NoRelay())
    persist_many = store.persist_many

    async def spy(writes: Sequence[EventWrite]) -> None:
        store.commits.append(len(writes))  # type: ignore[attr-defined]
        await persist_many(writes)

    store.commits = []  # type: ignore[attr-defined]
    store.persist_many = spy  # type: ignore[method-assign]
    results: list[HandleResult] = []
    i = 0
    sizes = iter(chunks or [])
    while i < len(steps):
        n = 1 if chunks is None else next(sizes, 1)
        # A batch is one room's: cut it where the room changes.
        room_id = steps[i][0].room_id
        group = []
        for b, eid, kind, kw in steps[i : i + n]:
            if b.room_id != room_id:
                break
            group.append((_input(b, eid, kind, kw), 1, None))
        if chunks is None:
            inp = group[0][0]
            results.append(await pipeline.handle(room_id, inp, delivery=1, in_progress=None))  # type: ignore[arg-type]
        else:
            results.extend(await pipeline.handle_batch(room_id, group))
        i += len(group)
    return [(r.event_id, r.outcome, r.reason_code, r.duplicate) for r in results], store


async def _stored(pool: asyncpg.Pool) -> dict[str, Any]:
    """Everything the two runs must agree on, read with IDs instead of NIDs."""
    async with pool.acquire() as c:
        events = await c.fetch(
            """SELECT e.event_id, e.kind, e.outcome, e.reason_code, e.redacted_by, j.json
               FROM events e JOIN event_json j USING (event_nid) ORDER BY e.event_id"""
        )
        outbox = await c.fetch("SELECT output_id, output_type, payload FROM outbox ORDER BY seq")
        rooms = await c.fetch("SELECT room_id, extremities FROM rooms ORDER BY room_id")
        members = await c.fetch(
            """SELECT e.event_id FROM memberships m JOIN events e ON e.event_nid = m.event_nid
               ORDER BY 1"""
        )
        invites = await c.fetch(
            """SELECT e.event_id, i.retired FROM invites i
               JOIN events e ON e.event_nid = i.invite_event_nid ORDER BY 1"""
        )
        prevs = await c.fetch(
            """SELECT p.prev_event_id, e.event_id FROM event_prevs p
               JOIN events e ON e.event_nid = p.event_nid ORDER BY 1, 2"""
        )
        auth = await c.fetch(
            """SELECT e.event_id, array(SELECT a.event_id FROM events a
                                        WHERE a.event_nid = ANY(e.auth_event_nids)
                                        ORDER BY 1)
               FROM events e ORDER BY 1"""
        )
        logged = await c.fetchval("SELECT count(*) FROM write_log")
    return {
        "invites": [tuple(r) for r in invites],
        "prevs": [tuple(r) for r in prevs],
        "auth": [(r[0], list(r[1])) for r in auth],
        "write_log": logged,
        "events": [tuple(r) for r in events],
        "outbox": [tuple(r) for r in outbox],
        "rooms": [(r[0], sorted(r[1])) for r in rooms],
        "members": [r[0] for r in members],
    }


async def _states(store: PostgresStore, steps: Sequence[Step]) -> dict[str, Any]:
    ids = sorted({eid for _, eid, _, _ in steps})
    after = await store.state_after(ids)
    out: dict[str, Any] = {eid: sorted((await store.materialize(h)).items()) for eid, h in after.items()}
    for room_id in sorted({b.room_id for b, _, _, _ in steps}):
        current = await store.current_state(room_id)
        # None for a room whose create event was refused.
        out[room_id] = sorted((await store.materialize(current)).items()) if current else None
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_batches_decide_and_store_what_one_by_one_does(
    seed: int, two_pools: list[asyncpg.Pool]
) -> None:
    steps = _scenario()
    rng = random.Random(seed)
    chunks = [rng.choice([2, 3, 5, 8, 64]) for _ in steps]
    one, one_store = await _run(two_pools[0], steps, None)
    many, many_store = await _run(two_pools[1], steps, chunks)
    assert many == one
    doomed = [(outcome, code) for _, outcome, code, _ in one[-3:]]
    assert [code for _, code in doomed] == [
        "bad_create", "auth_event_rejected", "auth_event_rejected"
    ], doomed
    # One by one, each write is its own transaction; batched, many share one.
    assert max(one_store.commits) == 1  # type: ignore[attr-defined]
    assert max(many_store.commits) >= 5  # type: ignore[attr-defined]
    assert len(many_store.commits) < len(one_store.commits) / 2  # type: ignore[attr-defined]
    outcomes = {getattr(o, "value", o) for _, o, _, _ in one}
    # The scenario really covers what it says.
    assert {"accepted", "rejected", "soft_failed", "outlier"} <= outcomes
    assert any(dup for *_, dup in one)
    assert await _stored(two_pools[1]) == await _stored(two_pools[0])
    assert await _states(many_store, steps) == await _states(one_store, steps)


async def test_a_batch_stores_each_state_change_once(two_pools: list[asyncpg.Pool]) -> None:
    """Snapshots of events written together are chained, not each a copy of the batch's
    whole delta: the batch writes no more snapshot entries than one-by-one writes do."""
    b = builder("10")
    steps: list[Step] = [(b, eid, "new", {}) for eid in list(b.events)]
    for eid in (b.create("alice"), b.join("alice"), b.join_rules("alice", "public")):
        steps.append((b, eid, "new", {}))
    steps.append((b, b.power_levels("alice", users={"alice": 100}), "new", {}))
    for i in range(40):
        steps.append((b, b.join(f"@u{i}:test"), "new", {}))
    await _run(two_pools[0], steps, None)
    await _run(two_pools[1], steps, [64] * len(steps))

    async def entries(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as c:
            return int(
                await c.fetchval(
                    "SELECT coalesce(sum(octet_length(coalesce(delta, ''::bytea))), 0)"
                    " FROM state_snapshots"
                )
            )

    assert await entries(two_pools[1]) <= await entries(two_pools[0])


async def test_a_failed_batch_stores_nothing(two_pools: list[asyncpg.Pool]) -> None:
    """A batch whose commit fails leaves no trace: the inputs can be handled again."""
    b = builder("10")
    create = b.create("alice")
    setup = [b.join("alice"), b.join_rules("alice", "public")]
    msgs = [b.message("alice", f"m{i}") for i in range(5)]
    store = PostgresStore(two_pools[0])
    pipeline = Pipeline(store, _NoRelay())
    first = await pipeline.handle(
        b.room_id, _input(b, create, "new", {}), delivery=1, in_progress=None
    )
    assert first.outcome is Outcome.ACCEPTED
    group = [(_input(b, eid, "new", {}), 1, None) for eid in [*setup, *msgs]]

    failing = store.batch

    def broken(room_id: str) -> StoreBatch:
        batch = failing(room_id)
        assert isinstance(batch, StoreBatch)

        async def boom() -> None:
            raise ConnectionResetError("the database went away mid-commit")

        batch.commit = boom  # type: ignore[method-assign]
        return batch

    store.batch = broken  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError):
        await pipeline.handle_batch(b.room_id, group)
    assert await store.events([*setup, *msgs]) == {}
    assert await store.extremities(b.room_id) == [create]
    store.batch = failing  # type: ignore[method-assign]
    results = await pipeline.handle_batch(b.room_id, group)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * len(group)
    assert await store.extremities(b.room_id) == [msgs[-1]]


async def test_a_batch_that_needs_gap_filling_writes_through(
    two_pools: list[asyncpg.Pool], nats_url: str, prefix: str
) -> None:
    """An input of a batch with missing prev events: what the batch held is committed, the
    gap filler (which reads the store itself) fetches and stores the gap, and the rest of
    the batch is written through — the same outcome as one by one."""
    import nats

    from tests.federation.conftest import SETTINGS, FakeFederation
    from tests.pipeline.conftest import started
    from worker.federation.client import NatsFederationClient

    b = started("10")
    base = list(b.events)
    before_gap = [b.message("alice", f"before {i}") for i in range(3)]
    gap = [b.message("bob", f"missed {i}") for i in range(3)]
    after = [b.message("alice", f"after {i}") for i in range(4)]
    nc = await nats.connect(nats_url)
    subject_prefix = f"{prefix}.federation.request"
    fed = FakeFederation(nc, subject_prefix)
    await fed.start()
    fed.serve(b)
    try:
        runs = []
        for pool in two_pools:
            store = PostgresStore(pool)
            client = NatsFederationClient(nc, subject_prefix, timeout=2.0, state_timeout=2.0)
            pipeline = Pipeline(store, _NoRelay(), client, gap_settings=SETTINGS)
            runs.append((store, pipeline))
        # Both: the room's start one by one; then what the first run takes one by one, the
        # second takes as one batch in which the gap shows up mid-way.
        sent = [*before_gap, *after]
        outcomes = []
        for i, (store, pipeline) in enumerate(runs):
            for eid in base:
                await pipeline.handle_batch(b.room_id, [(_input(b, eid, "new", {}), 1, None)])
            items = [(_input(b, eid, "new", {}), 1, None) for eid in sent]
            if i == 0:
                results = [(await pipeline.handle_batch(b.room_id, [item]))[0] for item in items]
            else:
                results = await pipeline.handle_batch(b.room_id, items)
            outcomes.append([(r.event_id, r.outcome) for r in results])
            stored = await store.events(gap)
            assert {e: s.kind for e, s in stored.items()} == {e: "old" for e in gap}
            assert await store.extremities(b.room_id) == [after[-1]]
        assert outcomes[0] == outcomes[1]
        assert all(o is Outcome.ACCEPTED for _, o in outcomes[1])
        assert await _stored(two_pools[1]) == await _stored(two_pools[0])
    finally:
        await fed.stop()
        await nc.close()
