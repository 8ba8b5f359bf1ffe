"""The relay's many-room flush (`flush_rooms`) and the background flusher's single loop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from tests.bus.test_outbox import MemoryOutbox, read_outputs
from worker.bus.outbox import NatsOutboxRelay, PgOutboxStore, RoomsOutboxStore
from worker.bus.subjects import MSG_ID_HEADER, ROOM_ID_HEADER, Subjects
from worker.pipeline.flusher import BackgroundFlusher
from worker.pipeline.ports import BatchOutboxRelay, OutputRecord
from worker.storage.migrations import apply_migrations
from worker.storage.outbox import insert_outputs_txn


def _records(room: str, n: int) -> list[OutputRecord]:
    return [
        OutputRecord(
            output_id=f"{room}-{i}",
            output_type="purge_room",
            payload=msgspec.json.encode({"type": "purge_room", "n": i}),
        )
        for i in range(n)
    ]


async def test_flush_rooms_publishes_each_room_in_order_and_marks_all(
    nc: NATS, streams: Subjects, database_dsn: str
) -> None:
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        await apply_migrations(pool)
        # Interleaved commits of three rooms, five outputs each.
        for i in range(5):
            for room in ("!a:x", "!b:x", "!c:x"):
                async with pool.acquire() as conn, conn.transaction():
                    await insert_outputs_txn(
                        conn,  # type: ignore[arg-type]
                        room,
                        [_records(room, 5)[i]],
                    )
        store = PgOutboxStore(pool)
        assert isinstance(store, RoomsOutboxStore)
        # A batch smaller than the rows: the relay must come back for the rest.
        relay = NatsOutboxRelay(nc, streams, store, batch=4)
        assert isinstance(relay, BatchOutboxRelay)
        await relay.flush_rooms(["!c:x", "!a:x"])

        assert await store.fetch_unsent(100, room_id="!a:x") == []
        assert await store.fetch_unsent(100, room_id="!c:x") == []
        assert [r.output_id for r in await store.fetch_unsent(100)] == [
            f"!b:x-{i}" for i in range(5)
        ]
        published = await read_outputs(nc, streams)
        by_room: dict[str, list[str]] = {}
        for _, headers, _ in published:
            by_room.setdefault(headers[ROOM_ID_HEADER], []).append(headers[MSG_ID_HEADER])
        assert by_room == {
            "!a:x": [f"!a:x-{i}" for i in range(5)],
            "!c:x": [f"!c:x-{i}" for i in range(5)],
        }
    finally:
        await pool.close()


async def test_flush_rooms_reaches_a_room_whose_rows_all_come_after_a_full_pass(
    nc: NATS, streams: Subjects, database_dsn: str
) -> None:
    """Room a's six rows come first by seq, room c's two after them: with four rows per
    pass, the first pass holds none of c's, and c must still be flushed (not left for the
    next sweep, seconds later)."""
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        await apply_migrations(pool)
        for room, n in (("!a:x", 6), ("!c:x", 2)):
            async with pool.acquire() as conn, conn.transaction():
                await insert_outputs_txn(conn, room, _records(room, n))  # type: ignore[arg-type]
        store = PgOutboxStore(pool)
        relay = NatsOutboxRelay(nc, streams, store, batch=4)
        await relay.flush_rooms(["!a:x", "!c:x"])
        assert await store.fetch_unsent(100) == []
        published = await read_outputs(nc, streams)
        assert [h[MSG_ID_HEADER] for _, h, _ in published if h[ROOM_ID_HEADER] == "!c:x"] == [
            "!c:x-0", "!c:x-1",
        ]
    finally:
        await pool.close()


async def test_flush_rooms_without_a_many_room_store_flushes_each_room(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox()
    for n in range(3):
        for room in ("!a:x", "!b:x", "!c:x"):
            store.add(room, n)
    assert not isinstance(store, RoomsOutboxStore)
    relay = NatsOutboxRelay(nc, streams, store, batch=2)
    await relay.flush_rooms(["!b:x", "!a:x"])
    assert store.sent_ids() == {f"out-{r}-{n}" for r in ("!a:x", "!b:x") for n in range(3)}


class RecordingRelay:
    """A batch relay that records its passes; the first pass waits to be released."""

    def __init__(self) -> None:
        self.passes: list[list[str]] = []
        self.release = asyncio.Event()

    async def flush(self, room_id: str) -> None:
        await self.flush_rooms([room_id])

    async def flush_rooms(self, room_ids: Sequence[str]) -> None:
        self.passes.append(list(room_ids))
        if len(self.passes) == 1:
            await self.release.wait()
        if "!bad:x" in room_ids:
            raise RuntimeError("publish failed")


async def test_flusher_gathers_rooms_kicked_during_a_pass_into_the_next() -> None:
    relay = RecordingRelay()
    flusher = BackgroundFlusher(relay)
    flusher.kick("!a:x")
    await asyncio.sleep(0)
    assert relay.passes == [["!a:x"]]
    # Kicked while the first pass runs: all of them go in one second pass.
    for room in ("!c:x", "!b:x", "!a:x", "!c:x"):
        flusher.kick(room)
    assert flusher.pending > 0
    relay.release.set()
    await flusher.wait()
    assert relay.passes == [["!a:x"], ["!a:x", "!b:x", "!c:x"]]
    assert flusher.pending == 0


async def test_flusher_survives_a_failed_pass() -> None:
    relay = RecordingRelay()
    relay.release.set()
    flusher = BackgroundFlusher(relay)
    flusher.kick("!bad:x")
    await flusher.wait()
    flusher.kick("!a:x")
    await flusher.wait()
    assert relay.passes == [["!bad:x"], ["!a:x"]]
