"""The outbox relay against the embedded NATS (and, for the storage adapter, PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from tests.bus.outbox_rows import insert_outputs
from worker.bus.outbox import NatsOutboxRelay
from worker.bus.subjects import MSG_ID_HEADER, OUTPUT_TYPE_HEADER, ROOM_ID_HEADER, Subjects
from worker.errors import RetryableError
from worker.messages import PurgeRoom, decode_output, encode_output
from worker.pipeline.ports import OutboxRelay, OutputRecord
from worker.storage.migrations import apply_migrations
from worker.storage.outbox import PgOutboxStore


@dataclass(frozen=True)
class Row:
    seq: int
    room_id: str
    output_id: str
    output_type: str
    payload: bytes


@dataclass
class MemoryOutbox:
    rows: list[Row] = field(default_factory=list)
    sent: set[int] = field(default_factory=set)
    fail_mark: bool = False
    # When each row was committed, by seq (time.monotonic()).
    created: dict[int, float] = field(default_factory=dict)
    marks: list[list[int]] = field(default_factory=list)

    @classmethod
    def interleaved(cls, n: int, rooms: Sequence[str] = ("!a:x", "!b:x", "!c:x")) -> MemoryOutbox:
        """`n` rows of each room, committed in turns."""
        store = cls()
        for i in range(n):
            for room in rooms:
                store.add(room, i)
        return store

    def add(self, room_id: str, n: int, *, age: float = 0.0) -> Row:
        self.created[len(self.rows) + 1] = time.monotonic() - age
        row = Row(
            seq=len(self.rows) + 1,
            room_id=room_id,
            output_id=f"out-{room_id}-{n}",
            output_type="purge_room",
            payload=encode_output(PurgeRoom(room_id=f"{room_id}#{n}")),
        )
        self.rows.append(row)
        return row

    async def fetch_unsent(
        self, limit: int, room_id: str | None = None, *, min_age: float = 0.0
    ) -> list[Row]:
        rows = [r for r in self.rows if r.seq not in self.sent]
        if room_id is not None:
            rows = [r for r in rows if r.room_id == room_id]
        else:
            now = time.monotonic()
            stale = {r.room_id for r in rows if now - self.created[r.seq] >= min_age}
            rows = [r for r in rows if r.room_id in stale]
        return rows[:limit]

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        if self.fail_mark:
            raise RetryableError("db down")
        self.marks.append(list(seqs))
        self.sent.update(seqs)

    def sent_ids(self) -> set[str]:
        return {r.output_id for r in self.rows if r.seq in self.sent}


def output_id(headers: dict[str, str]) -> str:
    """The output id in a `Nats-Msg-Id` (`worker.bus.outbox.msg_id`: id, then `#seq`)."""
    return headers[MSG_ID_HEADER].rpartition("#")[0]


async def read_outputs(nc: NATS, subjects: Subjects) -> list[tuple[str, dict[str, str], bytes]]:
    js = nc.jetstream()
    info = await js.stream_info(subjects.output_stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.output_stream, seq)
        out.append((msg.subject, dict(msg.headers or {}), msg.data or b""))
    return out


async def test_flush_publishes_a_rooms_rows_in_order_with_headers(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox()
    for n in range(3):
        store.add("!a:x", n)
        store.add("!b:x", n)
    relay: OutboxRelay = NatsOutboxRelay(nc, streams, store, batch=2)
    await relay.flush("!a:x")
    published = await read_outputs(nc, streams)
    assert [output_id(h) for _, h, _ in published] == [f"out-!a:x-{n}" for n in range(3)]
    seqs = {r.output_id: r.seq for r in store.rows}
    assert [h[MSG_ID_HEADER] for _, h, _ in published] == [
        f"out-!a:x-{n}#{seqs[f'out-!a:x-{n}']}" for n in range(3)
    ]
    for subject, headers, data in published:
        assert subject == streams.output("!a:x")
        assert headers[ROOM_ID_HEADER] == "!a:x"
        assert headers[OUTPUT_TYPE_HEADER] == "purge_room"
        assert decode_output(data).type == "purge_room"
    assert store.sent_ids() == {f"out-!a:x-{n}" for n in range(3)}


async def test_republish_is_dropped_as_duplicate(nc: NATS, streams: Subjects) -> None:
    store = MemoryOutbox()
    store.add("!a:x", 0)
    store.add("!a:x", 1)
    relay = NatsOutboxRelay(nc, streams, store)
    # A crash after publishing, before marking sent: everything is published again.
    store.fail_mark = True
    with pytest.raises(RetryableError):
        await relay.flush("!a:x")
    store.fail_mark = False
    await relay.flush("!a:x")
    assert store.sent_ids() == {"out-!a:x-0", "out-!a:x-1"}
    published = await read_outputs(nc, streams)
    assert [output_id(h) for _, h, _ in published] == ["out-!a:x-0", "out-!a:x-1"]


async def test_sweep_publishes_every_room_and_races_with_flush_safely(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox.interleaved(5)
    relay = NatsOutboxRelay(nc, streams, store, batch=4)
    await asyncio.gather(relay.sweep(), relay.flush("!b:x"), relay.flush("!c:x"))
    assert store.sent_ids() == {r.output_id for r in store.rows}
    published = await read_outputs(nc, streams)
    assert len(published) == 15  # no duplicates stored
    for room in ("!a:x", "!b:x", "!c:x"):
        ids = [output_id(h) for _, h, _ in published if h[ROOM_ID_HEADER] == room]
        assert ids == [f"out-{room}-{n}" for n in range(5)]
    assert await relay.sweep() == 0


async def test_a_sweep_publishes_its_rooms_side_by_side_and_marks_them_together(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox.interleaved(3)
    relay = NatsOutboxRelay(nc, streams, store)
    assert await relay.sweep() == 9
    assert len(store.marks) == 1 and sorted(store.marks[0]) == [r.seq for r in store.rows]
    published = await read_outputs(nc, streams)
    for room in ("!a:x", "!b:x", "!c:x"):
        ids = [output_id(h) for _, h, _ in published if h[ROOM_ID_HEADER] == room]
        assert ids == [f"out-{room}-{n}" for n in range(3)]


async def test_a_later_sweep_takes_only_rooms_with_an_old_row(
    nc: NATS, streams: Subjects
) -> None:
    """Young rows are being published by whoever committed them; a room with an old row is
    stuck, and all of its rows go, in order (not only the old ones)."""
    store = MemoryOutbox()
    store.add("!a:x", 0, age=60)
    store.add("!b:x", 0)
    store.add("!a:x", 1)
    relay = NatsOutboxRelay(nc, streams, store)
    assert await relay.sweep(min_age=5) == 2
    published = await read_outputs(nc, streams)
    assert [output_id(h) for _, h, _ in published] == ["out-!a:x-0", "out-!a:x-1"]
    assert await relay.sweep() == 1
    assert store.sent_ids() == {r.output_id for r in store.rows}


async def test_publish_failure_is_retryable_and_keeps_rows(nc: NATS, streams: Subjects) -> None:
    store = MemoryOutbox()
    store.add("!a:x", 0)
    relay = NatsOutboxRelay(nc, Subjects(streams.prefix + "nostream"), store, publish_timeout=0.5)
    with pytest.raises(RetryableError) as info:
        await relay.flush("!a:x")
    assert info.value.code == "output_publish_failed"
    assert store.sent == set()


async def test_pg_outbox_store_round_trip(
    nc: NATS, streams: Subjects, database_dsn: str
) -> None:
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        await apply_migrations(pool)
        async with pool.acquire() as conn, conn.transaction():
            await insert_outputs(
                conn,  # type: ignore[arg-type]
                "!a:x",
                [
                    OutputRecord(output_id=f"o{n}", output_type="purge_room",
                                 payload=msgspec.json.encode({"type": "purge_room", "n": n}))
                    for n in range(3)
                ],
            )
        store = PgOutboxStore(pool)
        relay = NatsOutboxRelay(nc, streams, store, stats=store.stats)
        assert (await store.stats())[0] == 3
        await relay.flush("!a:x")
        assert await store.fetch_unsent(10, room_id="!a:x") == []
        assert (await store.stats())[0] == 0
        published = await read_outputs(nc, streams)
        assert [output_id(h) for _, h, _ in published] == ["o0", "o1", "o2"]
    finally:
        await pool.close()


async def test_pg_fetch_unsent_by_age_takes_whole_rooms(database_dsn: str) -> None:
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        await apply_migrations(pool)
        for room, n in (("!old:x", 0), ("!young:x", 0), ("!old:x", 1)):
            async with pool.acquire() as conn, conn.transaction():
                await insert_outputs(
                    conn,  # type: ignore[arg-type]
                    room,
                    [OutputRecord(output_id=f"{room}{n}", output_type="purge_room",
                                  payload=b"{}")],
                )
        await pool.execute(
            "UPDATE outbox SET created_at = now() - interval '1 minute' WHERE output_id = '!old:x0'"
        )
        store = PgOutboxStore(pool)
        assert [r.output_id for r in await store.fetch_unsent(10, min_age=30)] == [
            "!old:x0", "!old:x1",
        ]
        assert [r.output_id for r in await store.fetch_unsent(10)] == [
            "!old:x0", "!young:x0", "!old:x1",
        ]
        assert await store.fetch_unsent(10, min_age=120) == []
    finally:
        await pool.close()
