"""The relay's background pump (`kick`, `settle`) and the flusher that hands rooms to it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from tests.bus.outbox_rows import insert_outputs
from tests.bus.test_outbox import MemoryOutbox, Row, output_id, read_outputs
from worker.bus.outbox import NatsOutboxRelay, OutboxRow, RoomsOutboxStore
from worker.bus.subjects import ROOM_ID_HEADER, Subjects
from worker.pipeline.flusher import BackgroundFlusher
from worker.pipeline.ports import BackgroundOutboxRelay, OutputRecord
from worker.storage.migrations import apply_migrations
from worker.storage.outbox import PgOutboxStore


def _records(room: str, n: int) -> list[OutputRecord]:
    return [
        OutputRecord(
            output_id=f"{room}-{i}",
            output_type="purge_room",
            payload=msgspec.json.encode({"type": "purge_room", "n": i}),
        )
        for i in range(n)
    ]


async def _insert(pool: asyncpg.Pool, room: str, records: list[OutputRecord]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_outputs(conn, room, records)  # type: ignore[arg-type]


def _ids_by_room(published: list[tuple[str, dict[str, str], bytes]]) -> dict[str, list[str]]:
    by_room: dict[str, list[str]] = {}
    for _, headers, _ in published:
        by_room.setdefault(headers[ROOM_ID_HEADER], []).append(output_id(headers))
    return by_room


class CountingStore(PgOutboxStore):
    """`PgOutboxStore` that counts its many-room reads and every row they return."""

    reads: list[list[str]]

    def __init__(self, db: asyncpg.Pool) -> None:
        super().__init__(db)
        object.__setattr__(self, "reads", [])

    async def fetch_unsent_rooms(
        self, room_ids: Sequence[str], limit: int, *, per_room: int | None = None
    ) -> Sequence[OutboxRow]:
        rows = await super().fetch_unsent_rooms(room_ids, limit, per_room=per_room)
        self.reads.append([r.output_id for r in rows])
        return rows


async def test_kicked_rooms_are_published_each_in_order_and_marked(
    nc: NATS, streams: Subjects, database_dsn: str
) -> None:
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=3)
    assert pool is not None
    try:
        await apply_migrations(pool)
        # Interleaved commits of three rooms, five outputs each.
        for i in range(5):
            for room in ("!a:x", "!b:x", "!c:x"):
                await _insert(pool, room, [_records(room, 5)[i]])
        store = CountingStore(pool)
        assert isinstance(store, RoomsOutboxStore)
        # Fewer rows a room than it has: the pump must come back for the rest.
        relay = NatsOutboxRelay(nc, streams, store, batch=2)
        assert isinstance(relay, BackgroundOutboxRelay)
        relay.kick("!c:x")
        relay.kick("!a:x")
        assert relay.pending == 2
        await relay.settle()
        assert relay.pending == 0

        assert await store.fetch_unsent(100, room_id="!a:x") == []
        assert await store.fetch_unsent(100, room_id="!c:x") == []
        assert [r.output_id for r in await store.fetch_unsent(100)] == [
            f"!b:x-{i}" for i in range(5)
        ]
        assert _ids_by_room(await read_outputs(nc, streams)) == {
            "!a:x": [f"!a:x-{i}" for i in range(5)],
            "!c:x": [f"!c:x-{i}" for i in range(5)],
        }
        # The first read took both rooms at once, two rows each; no row was read twice.
        assert store.reads[0] == ["!a:x-0", "!c:x-0", "!a:x-1", "!c:x-1"]
        read = [output_id for rows in store.reads for output_id in rows]
        assert sorted(read) == sorted(set(read))
    finally:
        await pool.close()


async def test_a_room_whose_rows_all_come_after_a_cut_read_is_still_published(
    nc: NATS, streams: Subjects, database_dsn: str
) -> None:
    """Room a's six rows come first by seq, room c's two after them: with four rows a read,
    the first read holds none of c's, and c must still be published now (not left for the
    next sweep, seconds later)."""
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=3)
    assert pool is not None
    try:
        await apply_migrations(pool)
        for room, n in (("!a:x", 6), ("!c:x", 2)):
            await _insert(pool, room, _records(room, n))
        store = PgOutboxStore(pool)
        relay = NatsOutboxRelay(nc, streams, store, read_rows=4)
        relay.kick("!a:x")
        relay.kick("!c:x")
        await relay.settle()
        assert await store.fetch_unsent(100) == []
        assert _ids_by_room(await read_outputs(nc, streams)) == {
            "!a:x": [f"!a:x-{i}" for i in range(6)],
            "!c:x": ["!c:x-0", "!c:x-1"],
        }
    finally:
        await pool.close()


async def test_without_a_many_room_store_each_room_is_read_on_its_own(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox.interleaved(3)
    assert not isinstance(store, RoomsOutboxStore)
    relay = NatsOutboxRelay(nc, streams, store, batch=2)
    relay.kick("!b:x")
    relay.kick("!a:x")
    await relay.settle()
    assert store.sent_ids() == {f"out-{r}-{n}" for r in ("!a:x", "!b:x") for n in range(3)}


class GatedOutbox(MemoryOutbox):
    """Marks wait for `gate`; every read of one room is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.marking = asyncio.Event()
        self.reads: list[list[str]] = []

    async def fetch_unsent(
        self, limit: int, room_id: str | None = None, *, min_age: float = 0.0
    ) -> list[Row]:
        rows = await super().fetch_unsent(limit, room_id, min_age=min_age)
        if room_id is not None:
            self.reads.append([r.output_id for r in rows])
        return rows

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        self.marking.set()
        await self.gate.wait()
        await super().mark_sent(seqs)


async def _marking_three_rows(
    nc: NATS, streams: Subjects
) -> tuple[GatedOutbox, NatsOutboxRelay]:
    """A relay whose pump published room a's three rows and waits for their mark."""
    store = GatedOutbox()
    for n in range(3):
        store.add("!a:x", n)
    relay = NatsOutboxRelay(nc, streams, store)
    relay.kick("!a:x")
    await store.marking.wait()
    return store, relay


async def test_a_room_kicked_while_held_is_read_again_once_marked(
    nc: NATS, streams: Subjects
) -> None:
    store, relay = await _marking_three_rows(nc, streams)
    # Published, not yet marked: a read now would take the same rows again.
    for n in range(3, 5):
        store.add("!a:x", n)
    relay.kick("!a:x")
    assert store.reads == [[f"out-!a:x-{n}" for n in range(3)]]
    # A sweep meanwhile leaves the room to the pump.
    assert await relay.sweep() == 0
    store.gate.set()
    await relay.settle()
    assert store.reads[1:] == [["out-!a:x-3", "out-!a:x-4"]]
    published = await read_outputs(nc, streams)
    assert [output_id(h) for _, h, _ in published] == [f"out-!a:x-{n}" for n in range(5)]
    assert store.sent_ids() == {r.output_id for r in store.rows}


async def test_stop_cancels_the_pump_and_leaves_its_rooms_to_the_sweep(
    nc: NATS, streams: Subjects
) -> None:
    store, relay = await _marking_three_rows(nc, streams)
    await relay.stop()
    assert relay.pending == 0
    relay.kick("!a:x")
    assert relay.pending == 0
    await relay.settle()
    assert store.sent == set()
    # The rows the pump published and never marked: the sweep publishes them again (JetStream
    # drops the repeats) and marks them.
    store.gate.set()
    assert await relay.sweep() == 3
    assert store.sent_ids() == {r.output_id for r in store.rows}
    published = await read_outputs(nc, streams)
    assert [output_id(h) for _, h, _ in published] == [f"out-!a:x-{n}" for n in range(3)]


async def test_failures_are_logged_and_leave_the_rows_for_later(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox()
    store.add("!a:x", 0)
    store.add("!b:x", 0)
    store.fail_mark = True
    relay = NatsOutboxRelay(nc, streams, store)
    unroutable = NatsOutboxRelay(
        nc, Subjects(streams.prefix + "nostream"), store, publish_timeout=0.5
    )
    with capture_logs() as logs:
        relay.kick("!a:x")
        await relay.settle()
        unroutable.kick("!b:x")
        await unroutable.settle()
    assert [e["event"] for e in logs] == ["outbox_mark_failed", "outbox_flush_failed"]
    assert relay.pending == unroutable.pending == 0
    assert store.sent == set()
    # Kicked again, once the store is back: the repeat of a's row is dropped by JetStream.
    store.fail_mark = False
    relay.kick("!a:x")
    relay.kick("!b:x")
    await relay.settle()
    assert store.sent_ids() == {"out-!a:x-0", "out-!b:x-0"}
    published = await read_outputs(nc, streams)
    assert [output_id(h) for _, h, _ in published] == ["out-!a:x-0", "out-!b:x-0"]


class RecordingRelay:
    """A background relay that records what it is asked."""

    def __init__(self) -> None:
        self.kicked: list[str] = []
        self.flushed: list[str] = []
        self.settled = 0

    async def flush(self, room_id: str) -> None:
        self.flushed.append(room_id)

    def kick(self, room_id: str) -> None:
        self.kicked.append(room_id)

    @property
    def pending(self) -> int:
        return len(self.kicked) - self.settled

    async def settle(self) -> None:
        self.settled = len(self.kicked)


async def test_flusher_hands_rooms_to_a_background_relay() -> None:
    relay = RecordingRelay()
    flusher = BackgroundFlusher(relay)
    for room in ("!a:x", "!b:x", "!a:x"):
        flusher.kick(room)
    assert flusher.pending == 3
    await flusher.wait()
    assert relay.kicked == ["!a:x", "!b:x", "!a:x"]
    assert relay.flushed == []
    assert flusher.pending == 0
