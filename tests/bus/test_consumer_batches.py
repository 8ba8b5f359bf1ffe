"""The consumer hands a room's queued inputs to a batch-capable handler together, settles
each only after the batch returns, and falls back to one-by-one handling when it raises.

Waits use generous timeouts only as hang guards; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from tests.bus.test_consumer import GUARD, FakeHandler, event, event_id_of, running
from worker.bus.consumer import QueuedInput
from worker.bus.producer import publish_input
from worker.bus.subjects import ROOM_ID_HEADER, Subjects
from worker.core.outcomes import Outcome
from worker.errors import RetryableError
from worker.messages.reply import HandleResult


@dataclass
class BatchHandler(FakeHandler):
    batches: list[list[str]] = field(default_factory=list)
    fail_batches: int = 0

    async def handle_batch(
        self, room_id: str, items: Sequence[QueuedInput]
    ) -> list[HandleResult]:
        ids = [event_id_of(inp) for inp, _, _ in items]
        self.batches.append(ids)
        if self.fail_batches:
            self.fail_batches -= 1
            raise RetryableError("the database went away", code="database_unavailable")
        return [HandleResult(event_id=i, outcome=Outcome.ACCEPTED) for i in ids]


async def _publish_room(nc: NATS, streams: Subjects, room: str, n: int) -> list[str]:
    for i in range(n):
        await publish_input(nc, streams, event(room, i))
    return [f"$e{i}" for i in range(n)]


async def test_a_rooms_backlog_is_handled_in_batches_in_order(
    nc: NATS, streams: Subjects
) -> None:
    room = "!backlog:example.org"
    sent = await _publish_room(nc, streams, room, 40)
    acks_before = _acks()
    handler = BatchHandler()
    async with running(nc, streams, handler) as consumer:
        async with asyncio.timeout(GUARD):
            while sum(len(b) for b in handler.batches) + len(handler.calls) < len(sent):
                await asyncio.sleep(0.01)
        assert await consumer.wait_idle(GUARD)
    handled = [i for b in handler.batches for i in b] + [c[1] for c in handler.calls]
    assert sorted(handled) == sorted(sent)
    assert [i for b in handler.batches for i in b] == [
        i for i in sent if i in {x for b in handler.batches for x in b}
    ]
    assert any(len(b) > 1 for b in handler.batches)
    left = (await nc.jetstream().stream_info(streams.input_stream)).state.messages
    assert left == 0  # every message acked
    assert _acks() - acks_before == len(sent)  # and counted, a batch at a time


def _acks() -> float:
    value = REGISTRY.get_sample_value("roomserver_messages_settled_total", {"action": "ack"})
    return value or 0.0


async def test_a_failed_batch_is_handled_again_one_by_one(nc: NATS, streams: Subjects) -> None:
    room = "!flaky:example.org"
    sent = await _publish_room(nc, streams, room, 20)
    handler = BatchHandler(fail_batches=1)
    async with running(nc, streams, handler) as consumer:
        async with asyncio.timeout(GUARD):
            while not handler.batches:
                await asyncio.sleep(0.01)
            failed = list(handler.batches[0])
            while not set(failed) <= {c[1] for c in handler.calls}:
                await asyncio.sleep(0.01)
        assert await consumer.wait_idle(GUARD)
    assert len(failed) > 1
    # The failed batch's inputs went through `handle`, one by one, in order.
    singles = [c[1] for c in handler.calls]
    assert [i for i in singles if i in failed] == failed
    handled = set(singles) | {i for b in handler.batches[1:] for i in b}
    assert handled == set(sent)
    left = (await nc.jetstream().stream_info(streams.input_stream)).state.messages
    assert left == 0


async def test_undecodable_input_in_a_backlog_is_settled_on_its_own(
    nc: NATS, streams: Subjects
) -> None:
    room = "!mixed:example.org"
    js = nc.jetstream()
    await _publish_room(nc, streams, room, 5)
    await js.publish(streams.input(room), b"not json", headers={ROOM_ID_HEADER: room})
    for i in range(5, 10):
        await publish_input(nc, streams, event(room, i))
    handler = BatchHandler()
    async with running(nc, streams, handler) as consumer:
        async with asyncio.timeout(GUARD):
            while sum(len(b) for b in handler.batches) + len(handler.calls) < 10:
                await asyncio.sleep(0.01)
        assert await consumer.wait_idle(GUARD)
    handled = [i for b in handler.batches for i in b] + [c[1] for c in handler.calls]
    assert sorted(handled) == sorted(f"$e{i}" for i in range(10))
    # No batch spans the bad message: everything before it is handled before everything after.
    for b in handler.batches:
        assert all(int(i[2:]) < 5 for i in b) or all(int(i[2:]) >= 5 for i in b)
