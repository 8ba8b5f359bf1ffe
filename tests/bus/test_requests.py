"""`worker.bus.requests.Requester` against a real NATS server: the same answers and errors as
nats-py's `request` and `JetStreamContext.publish`, for many requests in flight at once."""

from __future__ import annotations

import asyncio
import uuid

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError, NoStreamResponseError

from worker.bus.requests import Requester


async def test_replies_reach_their_own_request_when_many_are_in_flight(nc: NATS) -> None:
    subject = f"echo.{uuid.uuid4().hex}"

    async def echo(msg: Msg) -> None:
        # Answer out of order: later requests are answered first.
        await asyncio.sleep(0.001 * (300 - int(msg.data)) / 100)
        await msg.respond(b"re:" + msg.data)

    sub = await nc.subscribe(subject, cb=echo)
    requests = Requester(nc)
    try:
        answers = await asyncio.gather(
            *(requests.request(subject, str(i).encode(), timeout=5) for i in range(300))
        )
        assert [a.data for a in answers] == [f"re:{i}".encode() for i in range(300)]
        assert requests._waiting == {}
    finally:
        await sub.unsubscribe()
        await requests.close()


async def test_no_listener_and_no_answer_raise_as_nats_py_does(nc: NATS) -> None:
    requests = Requester(nc)
    try:
        with pytest.raises(nats.errors.NoRespondersError):
            await requests.request(f"nobody.{uuid.uuid4().hex}", b"x", timeout=5)
        subject = f"silent.{uuid.uuid4().hex}"
        sub = await nc.subscribe(subject)  # listens, never answers
        with pytest.raises(nats.errors.TimeoutError):
            await requests.request(subject, b"x", timeout=0.2)
        assert requests._waiting == {}
        await sub.unsubscribe()
    finally:
        await requests.close()


async def test_jetstream_publish_acks_duplicates_and_refusals(
    nc: NATS, stream: tuple[str, str]
) -> None:
    name, subject = stream
    requests = Requester(nc)
    try:
        acks = await asyncio.gather(
            *(
                requests.publish(f"{subject}.a", str(i).encode(), timeout=5, stream=name,
                                 headers={"Nats-Msg-Id": f"m{i}"})
                for i in range(50)
            )
        )
        assert all(a.stream == name and not a.duplicate for a in acks)
        assert sorted(a.seq for a in acks) == list(range(1, 51))
        again = await requests.publish(
            f"{subject}.a", b"0", timeout=5, stream=name, headers={"Nats-Msg-Id": "m0"}
        )
        assert again.duplicate and again.seq == acks[0].seq
        # The wrong expected stream: the server's refusal, as an APIError with its code.
        with pytest.raises(APIError) as refused:
            await requests.publish(f"{subject}.a", b"x", timeout=5, stream="NOT_THIS_ONE")
        assert refused.value.err_code == 10060
        with pytest.raises(NoStreamResponseError):
            await requests.publish(f"nostream.{uuid.uuid4().hex}", b"x", timeout=5)
    finally:
        await requests.close()


async def test_an_ack_confirmed_through_it_is_applied(nc: NATS, stream: tuple[str, str]) -> None:
    name, subject = stream
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        f"{subject}.>", durable="c", stream=name,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
    )
    await js.publish(f"{subject}.a", b"one", stream=name)
    requests = Requester(nc)
    try:
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.reply
        await requests.request(msg.reply, b"+ACK", timeout=5)
        info = await js.consumer_info(name, "c")
        assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1
    finally:
        await requests.close()
