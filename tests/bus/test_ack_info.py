"""`ack_info`: what the consumer reads from a delivery's ack subject, against nats-py's own
reading (`Msg.metadata`) of real deliveries and of both subject formats."""

from __future__ import annotations

import uuid

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from worker.bus.consumer import AckInfo, ack_info


def _nats_py(reply: str) -> AckInfo:
    meta = Msg(None, reply=reply).metadata  # type: ignore[arg-type]
    return AckInfo(
        meta.num_delivered, meta.sequence.stream, meta.sequence.consumer, meta.num_pending
    )


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.INPUT.shard-0.1.42.7.1733400000000000000.5",
        "$JS.ACK._.ACCHASH.INPUT.shard-0.3.42.7.1733400000000000000.0",
        "$JS.ACK.hub.ACCHASH.INPUT.shard-0.2.9.8.1733400000000000000.11.rAnD0m",
    ],
)
def test_both_subject_formats_read_as_nats_py_reads_them(reply: str) -> None:
    assert ack_info(reply) == _nats_py(reply)


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "_INBOX.abc.1",
        "$JS.ACK.INPUT.shard-0.1.42",
        "$JS.NAK.INPUT.shard-0.1.42.7.1733400000000000000.5",
        "$JS.ACK.INPUT.shard-0.one.42.7.1733400000000000000.5",
        "$JS.ACK.x.y.INPUT.shard-0.1.42.7.1733400000000000000",
    ],
)
def test_anything_else_reads_as_none(reply: str | None) -> None:
    assert ack_info(reply) is None


async def test_real_deliveries_and_a_redelivery(nc: NATS) -> None:
    js = nc.jetstream()
    name = f"ACKINFO{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    try:
        for n in range(3):
            await js.publish(f"{name.lower()}.x", str(n).encode())
        sub = await js.pull_subscribe(f"{name.lower()}.>", durable="reader", stream=name)
        first = await sub.fetch(3, timeout=5)
        assert [ack_info(m.reply) for m in first] == [_nats_py(m.reply) for m in first]
        assert [ack_info(m.reply) for m in first] == [
            AckInfo(delivered=1, stream_sequence=n, consumer_sequence=n, pending=3 - n)
            for n in (1, 2, 3)
        ]
        await first[0].nak()
        for m in first[1:]:
            await m.ack()
        again = await sub.fetch(1, timeout=5)
        assert ack_info(again[0].reply) == _nats_py(again[0].reply)
        info = ack_info(again[0].reply)
        assert info is not None and info.delivered == 2 and info.stream_sequence == 1
    finally:
        await js.delete_stream(name)
