"""The relay's atomic batches (ADR-50) against the embedded NATS: one round trip per room's
pass, nothing stored of a failed batch, and no duplicate or reordering after a crash."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.client import ServerVersion
from nats.js.api import PubAck
from structlog.testing import capture_logs

from tests.bus.test_outbox import MemoryOutbox, Row, output_id, read_outputs
from worker.bus.outbox import MIN_AUTO_BATCH, NatsOutboxRelay, worth_batching
from worker.bus.outbox_batching import BATCH_ID_HEADER, BATCH_SEQUENCE_HEADER
from worker.bus.streams import StreamLimits, ensure_stream, ensure_streams, stream_configs
from worker.bus.subjects import ROOM_ID_HEADER, Subjects
from worker.errors import RetryableError
from worker.messages import PurgeRoom, encode_output
from worker.observability.metrics import OUTPUTS_PUBLISHED

Published = list[tuple[str, dict[str, str], bytes]]


def published_count() -> float:
    return float(OUTPUTS_PUBLISHED.labels("purge_room")._value.get())


def ids(published: Published, room: str | None = None) -> list[str]:
    return [output_id(h) for _, h, _ in published if room is None or h[ROOM_ID_HEADER] == room]


def batches(published: Published) -> list[tuple[str | None, str | None]]:
    """(batch id, batch sequence) of each stored message; (None, None) for a lone publish."""
    return [(h.get(BATCH_ID_HEADER), h.get(BATCH_SEQUENCE_HEADER)) for _, h, _ in published]


@contextlib.asynccontextmanager
async def own_streams(nc: NATS, subjects: Subjects, **output: Any) -> AsyncIterator[Subjects]:
    """This test's streams with the output stream's settings changed by `output`."""
    js = nc.jetstream()
    for config in stream_configs(subjects, StreamLimits(shards=1)):
        if config.name == subjects.output_stream:
            config = dataclasses.replace(config, **output)
        await ensure_stream(js, config)
    try:
        yield subjects
    finally:
        for name in (subjects.input_stream, subjects.output_stream, subjects.deadletter_stream):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)


async def test_a_rooms_rows_arrive_in_order_as_one_batch(nc: NATS, streams: Subjects) -> None:
    store = MemoryOutbox()
    for n in range(5):
        store.add("!a:x", n)
        store.add("!b:x", n)
    relay = NatsOutboxRelay(nc, streams, store, min_batch_rows=2)
    before = published_count()
    await relay.flush("!a:x")
    published = await read_outputs(nc, streams)
    assert ids(published) == [f"out-!a:x-{n}" for n in range(5)]
    (batch_id,) = {b for b, _ in batches(published)}
    assert batch_id is not None
    assert [s for _, s in batches(published)] == ["1", "2", "3", "4", "5"]
    assert store.sent_ids() == {f"out-!a:x-{n}" for n in range(5)}
    assert published_count() - before == 5


async def test_a_pass_beyond_the_batch_limits_goes_out_as_consecutive_batches(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox()
    for n in range(7):
        store.add("!a:x", n)
    relay = NatsOutboxRelay(nc, streams, store, max_batch_messages=3, min_batch_rows=2)
    await relay.flush("!a:x")
    # The payloads are alike, so a byte limit of two and a half of them cuts after two.
    size = len(store.rows[0].payload)
    for n in range(7, 12):
        store.add("!a:x", n)
    relay = NatsOutboxRelay(nc, streams, store, max_batch_bytes=size * 5 // 2, min_batch_rows=2)
    await relay.flush("!a:x")

    published = await read_outputs(nc, streams)
    assert ids(published) == [f"out-!a:x-{n}" for n in range(12)]
    found = batches(published)
    # 3 + 3 + 1 (a lone row is published alone), then 2 + 2 + 1.
    assert [s for _, s in found] == ["1", "2", "3", "1", "2", "3", None, "1", "2", "1", "2", None]
    first = [b for b, _ in found]
    assert len({first[0], first[3], first[7], first[9]}) == 4
    assert first[0:3] == [first[0]] * 3 and first[3:6] == [first[3]] * 3
    assert store.sent_ids() == {r.output_id for r in store.rows}


async def test_rows_stored_before_a_crash_are_not_stored_again_and_order_holds(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox()
    store.add("!a:x", 0)
    store.add("!a:x", 1)
    relay = NatsOutboxRelay(nc, streams, store, min_batch_rows=2)
    before = published_count()
    # Published as a batch, then the crash: the rows are never marked sent.
    store.fail_mark = True
    with pytest.raises(RetryableError):
        await relay.flush("!a:x")
    store.fail_mark = False
    for n in range(2, 6):
        store.add("!a:x", n)
    # The restarted relay's batch holds two stored ids: JetStream refuses it whole, the
    # relay goes one by one past them and batches the rest again.
    with capture_logs() as logs:
        await NatsOutboxRelay(nc, streams, store, min_batch_rows=2).flush("!a:x")
    assert [e["event"] for e in logs if e["event"].startswith("outbox_batch")] == [
        "outbox_batch_duplicate"
    ]
    published = await read_outputs(nc, streams)
    assert ids(published) == [f"out-!a:x-{n}" for n in range(6)]
    assert [s for _, s in batches(published)] == ["1", "2", None, "1", "2", "3"]
    assert store.sent_ids() == {r.output_id for r in store.rows}
    # Counted once each, duplicates not at all.
    assert published_count() - before == 6


async def test_a_batch_the_stream_refuses_stores_nothing_of_it(nc: NATS, prefix: str) -> None:
    async with own_streams(nc, Subjects(prefix + "small"), max_msg_size=4096) as subjects:
        store = MemoryOutbox()
        for n in range(5):
            store.add("!a:x", n)
        # The third output is beyond the stream's message size.
        big = Row(
            3, "!a:x", "out-!a:x-2", "purge_room", encode_output(PurgeRoom(room_id="!" * 8000))
        )
        store.rows[2] = big
        relay = NatsOutboxRelay(nc, subjects, store, min_batch_rows=2)
        with pytest.raises(RetryableError) as info:
            await relay.flush("!a:x")
        assert info.value.code == "output_publish_failed"
        # The batch stored nothing (rows 3 and 4 would be there otherwise); the serial
        # fallback stored and marked the rows before the bad one, and stopped at it.
        published = await read_outputs(nc, subjects)
        assert ids(published) == ["out-!a:x-0", "out-!a:x-1"]
        assert batches(published) == [(None, None), (None, None)]
        assert store.sent_ids() == {"out-!a:x-0", "out-!a:x-1"}


async def test_nats_closing_mid_batch_stores_and_marks_nothing(
    nats_url: str, nc: NATS, streams: Subjects
) -> None:
    conn = await nats.connect(nats_url, allow_reconnect=False)
    store = MemoryOutbox()
    for n in range(5):
        store.add("!a:x", n)
    publish: Callable[..., Awaitable[None]] = conn.publish
    calls = 0

    async def publish_then_close(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            await conn.close()
        await publish(*args, **kwargs)

    conn.publish = publish_then_close  # type: ignore[method-assign]
    relay = NatsOutboxRelay(conn, streams, store, min_batch_rows=2)
    try:
        with pytest.raises(RetryableError):
            await relay.flush("!a:x")
    finally:
        await conn.close()
    assert calls == 3
    assert store.sent == set()
    assert (await nc.jetstream().stream_info(streams.output_stream)).state.messages == 0


async def test_a_stream_without_atomic_publish_gets_the_rows_one_by_one(
    nc: NATS, prefix: str
) -> None:
    async with own_streams(nc, Subjects(prefix + "plain"), allow_atomic=None) as subjects:
        store = MemoryOutbox()
        for n in range(4):
            store.add("!a:x", n)
        relay = NatsOutboxRelay(nc, subjects, store, min_batch_rows=2)
        with capture_logs() as logs:
            await relay.flush("!a:x")
            for n in range(4, 8):
                store.add("!a:x", n)
            await relay.flush("!a:x")
        # Refused once (atomic publish disabled); the next pass does not try again.
        refused = [e for e in logs if e["event"] == "outbox_batch_refused"]
        assert [e["err_code"] for e in refused] == [10174]
        published = await read_outputs(nc, subjects)
        assert ids(published) == [f"out-!a:x-{n}" for n in range(8)]
        assert set(batches(published)) == {(None, None)}
        assert store.sent_ids() == {r.output_id for r in store.rows}


async def test_many_rooms_with_few_batch_slots_keep_each_rooms_order(
    nc: NATS, streams: Subjects
) -> None:
    store = MemoryOutbox()
    rooms = [f"!r{i}:x" for i in range(6)]
    for n in range(10):
        for room in rooms:
            store.add(room, n)
    relay = NatsOutboxRelay(
        nc, streams, store, max_batch_messages=4, batch_slots=2, min_batch_rows=2
    )
    for room in rooms:
        relay.kick(room)
    await relay.settle()
    published = await read_outputs(nc, streams)
    assert len(published) == 60
    for room in rooms:
        assert ids(published, room) == [f"out-{room}-{n}" for n in range(10)]
    assert store.sent_ids() == {r.output_id for r in store.rows}


async def test_ensure_streams_turns_atomic_publish_on_in_place(nc: NATS, prefix: str) -> None:
    async with own_streams(nc, Subjects(prefix + "old"), allow_atomic=None) as subjects:
        js = nc.jetstream()
        assert not (await js.stream_info(subjects.output_stream)).config.allow_atomic
        done = await ensure_streams(js, subjects, StreamLimits(shards=1))
        assert done[subjects.output_stream] == "updated"
        assert (await js.stream_info(subjects.output_stream)).config.allow_atomic
        assert set((await ensure_streams(js, subjects, StreamLimits(shards=1))).values()) == {
            "unchanged"
        }


async def test_a_server_older_than_atomic_batches_gets_rows_one_by_one(
    nc: NATS, streams: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 2.11 server would take the batch headers as plain headers and store each message.
    monkeypatch.setattr(
        NATS, "connected_server_version", property(lambda _: ServerVersion("2.11.9"))
    )
    store = MemoryOutbox()
    for n in range(4):
        store.add("!a:x", n)
    with capture_logs() as logs:
        await NatsOutboxRelay(nc, streams, store, min_batch_rows=2).flush("!a:x")
    assert not [e for e in logs if e["event"].startswith("outbox_batch")]
    published = await read_outputs(nc, streams)
    assert ids(published) == [f"out-!a:x-{n}" for n in range(4)]
    assert set(batches(published)) == {(None, None)}


async def test_a_commit_answered_without_its_batch_stops_batches(
    nc: NATS, streams: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryOutbox()
    for n in range(3):
        store.add("!a:x", n)
    relay = NatsOutboxRelay(nc, streams, store, min_batch_rows=2)
    requests = relay._requests
    publish = requests.publish

    async def forgetful(*args: Any, **kwargs: Any) -> PubAck:
        # What a server that ignores the batch headers answers: a plain PubAck.
        ack = await publish(*args, **kwargs)
        return dataclasses.replace(ack, batch_id=None, batch_size=None)

    monkeypatch.setattr(requests, "publish", forgetful)
    await relay.flush("!a:x")
    for n in range(3, 6):
        store.add("!a:x", n)
    await relay.flush("!a:x")
    published = await read_outputs(nc, streams)
    # The first batch was stored (the serial retry found duplicates); then no more batches.
    assert ids(published) == [f"out-!a:x-{n}" for n in range(6)]
    assert [s for _, s in batches(published)] == ["1", "2", "3", None, None, None]
    assert store.sent_ids() == {r.output_id for r in store.rows}


async def test_by_default_only_runs_worth_a_batch_are_batched(nc: NATS, streams: Subjects) -> None:
    store = MemoryOutbox()
    short = MIN_AUTO_BATCH - 1
    for n in range(short):
        store.add("!a:x", n)
    relay = NatsOutboxRelay(nc, streams, store)
    # Nothing measured yet: a run one short of MIN_AUTO_BATCH goes one by one, a run of
    # MIN_AUTO_BATCH as a batch.
    await relay.flush("!a:x")
    for n in range(short, short + MIN_AUTO_BATCH):
        store.add("!a:x", n)
    await relay.flush("!a:x")
    published = await read_outputs(nc, streams)
    assert ids(published) == [f"out-!a:x-{n}" for n in range(short + MIN_AUTO_BATCH)]
    assert [s for _, s in batches(published)] == [None] * short + [
        str(i) for i in range(1, MIN_AUTO_BATCH + 1)
    ]


def test_worth_batching_compares_a_batch_with_the_publishes_it_replaces() -> None:
    n = MIN_AUTO_BATCH
    assert worth_batching(n, None, None)
    assert worth_batching(n, None, 0.001)
    # A batch costing 15 ms against 0.4 ms a publish: 38 rows are worth it, 37 are not.
    assert worth_batching(38, 0.015, 0.0004)
    assert not worth_batching(37, 0.015, 0.0004)


def test_runs_too_short_to_save_the_servers_cpu_are_never_batched() -> None:
    # However slow single publishes look (a busy loop makes each PubAck wait long), a run
    # below MIN_AUTO_BATCH rows costs the server more as a batch than as single publishes.
    assert not worth_batching(MIN_AUTO_BATCH - 1, None, None)
    assert not worth_batching(MIN_AUTO_BATCH - 1, 0.0001, 0.05)
    assert not worth_batching(2, 0.0006, 0.0004)


async def test_kicked_rooms_rows_go_out_together_each_room_in_order(
    nc: NATS, streams: Subjects
) -> None:
    rooms = ("!a:x", "!b:x", "!c:x")
    store = MemoryOutbox.interleaved(4, rooms)
    relay = NatsOutboxRelay(nc, streams, store, min_batch_rows=2)
    before = published_count()
    for room in rooms:
        relay.kick(room)
    await relay.settle()
    published = await read_outputs(nc, streams)
    for room in rooms:
        assert ids(published, room) == [f"out-{room}-{n}" for n in range(4)]
    # One batch across the rooms, each message on its own room's subject.
    assert len({b for b, _ in batches(published)}) == 1
    assert [s for _, s in batches(published)] == [str(n) for n in range(1, 13)]
    assert all(subject == streams.output(h[ROOM_ID_HEADER]) for subject, h, _ in published)
    assert store.sent_ids() == {r.output_id for r in store.rows}
    assert published_count() - before == 12


async def test_rooms_batch_refused_for_a_stored_row_goes_room_by_room_without_doubles(
    nc: NATS, streams: Subjects
) -> None:
    rooms = ("!a:x", "!b:x", "!c:x")
    store = MemoryOutbox.interleaved(3, rooms)
    relay = NatsOutboxRelay(nc, streams, store, min_batch_rows=2)
    # Room b's first two rows were published, then the crash: never marked sent.
    store.fail_mark = True
    with pytest.raises(RetryableError):
        await relay.flush("!b:x")
    store.fail_mark = False
    stored_before = len(await read_outputs(nc, streams))
    assert stored_before == 3
    before = published_count()
    with capture_logs() as logs:
        restarted = NatsOutboxRelay(nc, streams, store, min_batch_rows=2)
        for room in rooms:
            restarted.kick(room)
        await restarted.settle()
    # The batch across the rooms held b's stored ids: refused whole, then room by room.
    assert "outbox_batch_duplicate" in [e["event"] for e in logs]
    published = await read_outputs(nc, streams)
    for room in rooms:
        assert ids(published, room) == [f"out-{room}-{n}" for n in range(3)]
    assert len(published) == 9  # nothing twice
    assert store.sent_ids() == {r.output_id for r in store.rows}
    assert published_count() - before == 6


async def test_a_rooms_row_the_stream_refuses_holds_back_only_that_room(
    nc: NATS, prefix: str
) -> None:
    async with own_streams(nc, Subjects(prefix + "big"), max_msg_size=4096) as subjects:
        store = MemoryOutbox()
        for n in range(3):
            for room in ("!a:x", "!b:x"):
                row = store.add(room, n)
                if room == "!b:x" and n == 1:
                    # Too big for the stream: the batch across the rooms is refused whole.
                    store.rows[-1] = dataclasses.replace(row, payload=b"x" * 8192)
        relay = NatsOutboxRelay(nc, subjects, store, min_batch_rows=2)
        relay.kick("!a:x")
        relay.kick("!b:x")
        await relay.settle()
        published = await read_outputs(nc, subjects)
        # a got through whole; b up to the refused row, and nothing after it (its order).
        assert ids(published, "!a:x") == [f"out-!a:x-{n}" for n in range(3)]
        assert ids(published, "!b:x") == ["out-!b:x-0"]
        assert store.sent_ids() == {f"out-!a:x-{n}" for n in range(3)} | {"out-!b:x-0"}
