"""`worker.bus.pull.fetch` against a real JetStream pull consumer: same contract as nats-py's
`fetch` (at least one message and at most `batch`, in stream order, or a timeout)."""

from __future__ import annotations

import asyncio
import random

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from worker.bus import pull


async def _consumer(nc: NATS, stream: tuple[str, str]) -> JetStreamContext.PullSubscription:
    name, subject = stream
    return await nc.jetstream().pull_subscribe(
        f"{subject}.>", durable="c", stream=name,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000),
    )


async def _publish(nc: NATS, stream: tuple[str, str], numbers: range) -> None:
    js = nc.jetstream()
    for n in numbers:
        await js.publish(f"{stream[1]}.r{n % 3}", str(n).encode(), stream=stream[0])


def _numbers(msgs: list) -> list[int]:  # type: ignore[type-arg]
    return [int(m.data) for m in msgs]


async def test_a_fetch_returns_what_is_there_in_order_up_to_the_batch(
    nc: NATS, stream: tuple[str, str]
) -> None:
    sub = await _consumer(nc, stream)
    await _publish(nc, stream, range(10))
    # At most the batch, in order; fewer when the batch's messages reach the client in
    # separate reads (the contract: whatever is there once the first one came).
    taken = await pull.fetch(sub, 4, 2.0)
    first = _numbers(taken)
    assert 1 <= len(first) <= 4 and first == list(range(len(first)))
    rest: list[int] = []
    while len(first) + len(rest) < 10:
        rest += _numbers(await pull.fetch(sub, 100, 2.0))
    assert first + rest == list(range(10))
    for m in taken:
        await m.ack()


async def test_an_empty_consumer_times_out(nc: NATS, stream: tuple[str, str]) -> None:
    sub = await _consumer(nc, stream)
    with pytest.raises(nats.errors.TimeoutError):
        await pull.fetch(sub, 10, 0.3)
    # And the consumer still works afterwards.
    await _publish(nc, stream, range(1))
    assert _numbers(await pull.fetch(sub, 10, 2.0)) == [0]


async def test_a_message_published_while_waiting_is_returned(
    nc: NATS, stream: tuple[str, str]
) -> None:
    sub = await _consumer(nc, stream)
    waiting = asyncio.create_task(pull.fetch(sub, 10, 5.0))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await _publish(nc, stream, range(7, 8))
    assert _numbers(await waiting) == [7]


async def test_random_batches_see_every_message_once_in_order(
    nc: NATS, stream: tuple[str, str]
) -> None:
    """Fetches of random sizes, some while publishing, some timing out on an empty
    consumer: together they return the stream in order, each message once."""
    sub = await _consumer(nc, stream)
    rng = random.Random(7)
    publisher = asyncio.create_task(_publish(nc, stream, range(300)))
    got: list[int] = []
    while len(got) < 300:
        try:
            got += _numbers(await pull.fetch(sub, rng.choice([1, 2, 5, 17, 64, 128]), 0.5))
        except nats.errors.TimeoutError:
            assert not publisher.done() or len(got) < 300
    await publisher
    assert got == list(range(300))
    with pytest.raises(nats.errors.TimeoutError):
        await pull.fetch(sub, 10, 0.3)


async def test_the_nats_py_private_attributes_read_are_there(
    nc: NATS, stream: tuple[str, str]
) -> None:
    """Fails when a nats-py release changes what `fetch` reads: then pyproject's pin is to
    be moved only with `worker.bus.pull` updated to match."""
    sub = await _consumer(nc, stream)
    inner, queue = pull.private_parts(sub)
    assert isinstance(queue, asyncio.Queue) and isinstance(inner._pending_size, int)
    assert sub._sub is inner


async def test_a_client_without_them_fails_loudly(nc: NATS, stream: tuple[str, str]) -> None:
    sub = await _consumer(nc, stream)
    inner = sub._sub
    saved = inner._pending_queue
    del inner._pending_queue
    try:
        with pytest.raises(pull.UnsupportedClient, match=r"Subscription\._pending_queue"):
            await pull.fetch(sub, 1, 0.1)
    finally:
        inner._pending_queue = saved
