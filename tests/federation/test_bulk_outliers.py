"""The bulk outlier write of a federated join (`worker.storage.outliers`) against real
PostgreSQL: what it stores reads back exactly as what the pipeline's outlier path stores,
table by table and through the queries; it is idempotent, leaves to the pipeline what the
pipeline must store itself, and a join after it (or after a crash right after it) works."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec

from tests.fixtures.builder import RoomBuilder
from tests.lifecycle.rooms import dump, pipeline_over
from worker.core.joins import RoomSnapshot, check_room_events
from worker.messages import InputRoomEvent
from worker.pipeline import Pipeline
from worker.storage import PostgresStore
from worker.storage.outliers import PgOutlierStore
from worker.storage.purge import PostgresPurger
from worker.storage.query_reads import PostgresQueryReads

BOB = "@bob:hs.test"


def remote_room() -> tuple[RoomBuilder, RoomSnapshot, str]:
    """A room of the server `test` as a send_join answer gives it, checked, and our join."""
    b = RoomBuilder("10", real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"@alice:test": 100})
    b.join_rules("alice", "public")
    b.state_event("m.room.history_visibility", "", {"history_visibility": "shared"}, "alice")
    for i in range(30):
        b.join(f"m{i}")
    for i in range(0, 30, 7):
        b.leave(f"m{i}")
    b.topic("alice", "before bob")
    b.message("alice", "not in the answer")
    state_ids = sorted(b.state.values())
    chain = _auth_chain(b, state_ids) - set(state_ids)
    snapshot = check_room_events(
        [b.events[e] for e in state_ids], [b.events[e] for e in sorted(chain)], b.rules,
        b.room_id, max_events=10_000,
    )
    assert isinstance(snapshot, RoomSnapshot)
    join = b.join(BOB)
    return b, snapshot, join


def _auth_chain(b: RoomBuilder, ids: list[str]) -> set[str]:
    out: set[str] = set()
    todo = [a for e in ids for a in b.events[e]["auth_events"]]
    while todo:
        a = todo.pop()
        if a not in out:
            out.add(a)
            todo.extend(b.events[a]["auth_events"])
    return out


def _input(b: RoomBuilder, event_id: str, kind: str, **extra: Any) -> InputRoomEvent:
    raw = msgspec.Raw(msgspec.json.encode(b.events[event_id]))
    return InputRoomEvent(kind=kind, event=raw, room_version=b.version, **extra)  # type: ignore[arg-type]


async def _join(pipeline: Pipeline, b: RoomBuilder, snapshot: RoomSnapshot, join: str) -> str:
    inp = _input(b, join, "new", state_event_ids=snapshot.state_ids)
    result = await pipeline.handle(b.room_id, inp)
    return result.outcome.value


async def _through_pipeline(store: PostgresStore, b: RoomBuilder, snapshot: RoomSnapshot) -> None:
    """The outlier path as the remote join used it: one `outlier` input per event."""
    pipeline = pipeline_over(store)
    for e in snapshot.events:
        result = await pipeline.handle(b.room_id, _input(b, e.event_id, "outlier"))
        assert result.outcome.value == "outlier", result


async def test_bulk_outliers_store_what_the_pipeline_stores(
    pool: asyncpg.Pool,
    store: PostgresStore,
    other_pool: Callable[[], Awaitable[asyncpg.Pool]],
) -> None:
    b, snapshot, join = remote_room()
    await _through_pipeline(store, b, snapshot)
    piped = await dump(pool)

    bulk_pool = await other_pool()
    bulk = PgOutlierStore(bulk_pool)
    assert await bulk.store_outliers(b.room_id, b.version, snapshot.events) == []
    assert await dump(bulk_pool) == piped

    # Read back alike, through the queries' reads.
    ids = [e.event_id for e in snapshot.events]
    reads = [PostgresQueryReads.from_pool(p) for p in (pool, bulk_pool)]
    answers = [await r.events(ids) for r in reads]
    assert set(answers[0]) == set(answers[1]) == set(ids)
    for eid in ids:
        one, other = answers[0][eid], answers[1][eid]
        assert (bytes(one.json), one.outcome, one.has_state, one.depth) == (
            bytes(other.json), other.outcome, other.has_state, other.depth,
        )
    tops = [e.event_id for e in snapshot.events if e.type == "m.room.member"][-3:]
    assert await reads[0].auth_chain(tops) == await reads[1].auth_chain(tops)
    assert await reads[1].current_state(b.room_id, None) == {}

    # The join on top, then the room's state and auth chain as the queries give them.
    bulk_store = PostgresStore(bulk_pool)
    outcomes = [
        await _join(pipeline_over(s), b, snapshot, join) for s in (store, bulk_store)
    ]
    assert outcomes == ["accepted", "accepted"]
    assert await dump(bulk_pool) == await dump(pool)
    state = [await r.state_before([join], None) for r in reads]
    assert state[0] == state[1] and len(state[0][join]) == len(snapshot.state_ids)
    assert await reads[0].auth_chain([join]) == await reads[1].auth_chain([join])

    # Purged alike.
    for s in (store, bulk_store):
        await PostgresPurger(s).purge_room(b.room_id)
    assert await dump(bulk_pool) == await dump(pool)


async def test_bulk_outliers_are_idempotent_and_a_join_follows(
    pool: asyncpg.Pool, store: PostgresStore
) -> None:
    b, snapshot, join = remote_room()
    outliers = PgOutlierStore(pool)
    half = len(snapshot.events) // 2
    # A first attempt that stored part of the answer (another server's, an invite, ...),
    # then "crashed" before the join: the retry stores the rest, nothing twice.
    assert await outliers.store_outliers(b.room_id, b.version, snapshot.events[:half]) == []
    first = await dump(pool)
    assert len(first["events"]) == half
    assert await outliers.store_outliers(b.room_id, b.version, snapshot.events) == []
    assert await outliers.store_outliers(b.room_id, b.version, snapshot.events) == []
    again = await dump(pool)
    assert len(again["events"]) == len(snapshot.events)
    assert len(again["write_log"]) == len(snapshot.events)
    assert await _join(pipeline_over(store), b, snapshot, join) == "accepted"
    reads = PostgresQueryReads.from_pool(pool)
    assert (await reads.current_state(b.room_id, [("m.room.member", BOB)])) == {
        ("m.room.member", BOB): join
    }


async def test_what_the_pipeline_must_store_is_left_to_it(
    pool: asyncpg.Pool, store: PostgresStore
) -> None:
    """A redaction (paired with its target when stored) and every event citing an event left
    to the pipeline come back, in order, unstored; a room stored with another version
    leaves everything to the pipeline."""
    b, snapshot, _ = remote_room()
    target = b.message("alice", "to redact")
    redaction = b.redact("alice", target)
    events = [*snapshot.events, b.event(redaction)]
    outliers = PgOutlierStore(pool)
    assert await outliers.store_outliers(b.room_id, b.version, events) == [redaction]
    stored = await PostgresQueryReads.from_pool(pool).events([redaction])
    assert stored == {}
    # Left to the pipeline, which stores it as its outlier path does.
    result = await pipeline_over(store).handle(b.room_id, _input(b, redaction, "outlier"))
    assert result.outcome.value == "outlier"

    other = RoomBuilder("9", room_id=b.room_id, real_ids=True)
    other.create("alice")
    other.join("alice")
    left = await outliers.store_outliers(
        other.room_id, other.version, [other.event(e) for e in other.events]
    )
    assert left == list(other.events)
