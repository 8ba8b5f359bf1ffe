"""Trimming the input stream (worker.bus.trim) against the embedded NATS: settled inputs go,
inputs not settled stay, whatever the order rooms finish in; a reset delivers only what was
not settled below the floor; a work-queue stream of an earlier version is left to itself."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.js.api import RetentionPolicy
from nats.js.errors import NotFoundError

from tests.bus.conftest import SHARDS
from tests.bus.test_consumer import (
    FAST,
    GUARD,
    FakeHandler,
    accept,
    event,
    input_left,
    running,
)
from worker.bus.consumer import InputConsumer
from worker.bus.producer import publish_input
from worker.bus.shards import shard_of
from worker.bus.streams import StreamLimits, ensure_streams, stream_configs
from worker.bus.subjects import MSG_ID_HEADER, Subjects
from worker.bus.trim import InputTrimmer
from worker.messages import InputRoomEvent
from worker.messages.reply import HandleResult

TRIMMING = dataclasses.replace(FAST, trim_interval=0.05)


async def _stored(nc: NATS, subjects: Subjects, seq: int) -> bool:
    try:
        await nc.jetstream().get_msg(subjects.input_stream, seq)
    except NotFoundError:
        return False
    return True


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(GUARD):
        while not await condition():
            await asyncio.sleep(0.02)


async def test_settled_inputs_are_trimmed_while_a_held_one_stays(
    nc: NATS, streams: Subjects
) -> None:
    # Two rooms of one shard: the first input of `slow` is held while `fast` finishes all of
    # its own, later in the stream. Only what the floor covers goes; the held input, and
    # everything after it, stays until it is settled.
    rooms = [f"!t{i}:x" for i in range(40)]
    slow = rooms[0]
    fast = next(r for r in rooms[1:] if shard_of(r, SHARDS) == shard_of(slow, SHARDS))
    release = asyncio.Event()

    async def behaviour(room_id: str, message: InputRoomEvent, delivery: int) -> HandleResult:
        if room_id == slow:
            await release.wait()
        return await accept(room_id, message, delivery)

    handler = FakeHandler(behaviour)
    seqs: dict[str, list[int]] = {fast: [], slow: []}
    for n in range(3):
        seqs[fast].append((await publish_input(nc, streams, event(fast, n))).seq)
    seqs[slow].append((await publish_input(nc, streams, event(slow, 10))).seq)
    for n in range(3, 8):
        seqs[fast].append((await publish_input(nc, streams, event(fast, n))).seq)
    async with running(nc, streams, handler, TRIMMING):

        async def fast_trimmed() -> bool:
            done = {e for r, e, _ in handler.calls if r == fast}
            return len(done) == 8 and not await _stored(nc, streams, seqs[fast][2])

        await _until(fast_trimmed)
        # Held, and what came after it, are still stored.
        assert await _stored(nc, streams, seqs[slow][0])
        assert all([await _stored(nc, streams, s) for s in seqs[fast][3:]])
        release.set()

        async def all_trimmed() -> bool:
            return await input_left(nc, streams) == 0

        await _until(all_trimmed)


async def test_settled_inputs_stay_until_trimmed_and_a_drain_trims_them(
    nc: NATS, streams: Subjects
) -> None:
    # An interval longer than the test: only the trim of the drain runs.
    handler = FakeHandler()
    consumer = InputConsumer(nc, streams, handler, dataclasses.replace(FAST, trim_interval=3600.0))
    await consumer.start()
    for n in range(10):
        await publish_input(nc, streams, event(f"!s{n}:x", n))
    async with asyncio.timeout(GUARD):
        while len(handler.calls) < 10:
            await asyncio.sleep(0.01)
    assert await consumer.wait_idle(GUARD)
    # Acked, and still stored: an ack moves the consumer's floor only.
    assert await input_left(nc, streams) == 10
    assert await consumer.drain(grace=GUARD)
    assert await input_left(nc, streams) == 0


async def test_a_reset_consumer_delivers_what_was_not_settled_first(
    nc: NATS, streams: Subjects
) -> None:
    room = "!reset:x"
    shard = shard_of(room, SHARDS)
    settled = [event(room, n) for n in range(5)]
    for message in settled:
        await publish_input(nc, streams, message)
    handler = FakeHandler()
    async with running(nc, streams, handler, dataclasses.replace(FAST, trim_interval=3600.0)):
        async with asyncio.timeout(GUARD):
            while len(handler.calls) < 5:
                await asyncio.sleep(0.01)
    # Taken by a consumer that dies before settling it (it stays pending there).
    await publish_input(nc, streams, event(room, 5))
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(streams.input_consumer(shard), streams.input_stream)
    [taken] = await sub.fetch(1, timeout=GUARD)
    await sub.unsubscribe()
    assert (taken.headers or {}).get(MSG_ID_HEADER) == "$e5"
    after = FakeHandler()
    consumer = InputConsumer(nc, streams, after, FAST)
    await consumer.start_shard(shard, fresh=True)
    try:
        async with asyncio.timeout(GUARD):
            while not after.calls or consumer.in_flight:
                await asyncio.sleep(0.01)
    finally:
        await consumer.drain(grace=GUARD)
    # The settled five were trimmed before the reset, so only the unsettled one came again.
    assert [e for _, e, _ in after.calls] == ["$e5"]
    assert await input_left(nc, streams) == 0


async def test_the_trimmer_leaves_a_work_queue_stream_alone(nc: NATS, subjects: Subjects) -> None:
    js = nc.jetstream()
    limits = StreamLimits(shards=SHARDS)
    old = dataclasses.replace(
        stream_configs(subjects, limits)[0], retention=RetentionPolicy.WORK_QUEUE
    )
    await js.add_stream(old)
    await ensure_streams(js, subjects, limits)
    try:
        handler = FakeHandler()
        async with running(nc, subjects, handler, TRIMMING):
            for n in range(6):
                await publish_input(nc, subjects, event(f"!w{n}:x", n))
            async with asyncio.timeout(GUARD):
                while len(handler.calls) < 6:
                    await asyncio.sleep(0.01)
        # Deleted on ack by JetStream itself.
        assert await input_left(nc, subjects) == 0
        trimmer = InputTrimmer(js, subjects, 1.0, lambda: range(SHARDS))
        assert await trimmer.trim(0) == 0
    finally:
        for name in (subjects.input_stream, subjects.output_stream, subjects.deadletter_stream):
            await js.delete_stream(name)
