"""Replies handed over in process (`LocalReplies`): the registry alone, then a submitter and
the input consumer of one process against the embedded NATS, where the reply must reach the
perform without being published, and a submitter of another connection, answered over NATS.

Waits use generous timeouts only as hang guards; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.bus.test_consumer import FAST, GUARD, FakeHandler
from worker.bus.consumer import InputConsumer
from worker.bus.local_replies import LocalReplies
from worker.bus.producer import send_input
from worker.bus.subjects import REPLY_INBOX_HEADER, Subjects
from worker.bus.submit import InputBatchSubmitter, StreamSubmitter
from worker.messages import InputReply, InputRoomEvent

ROOM = "!local:example.org"


def pdu(n: int) -> dict[str, object]:
    return {"room_id": ROOM, "event_id": f"$e{n}", "type": "m.test"}


def message(n: int) -> InputRoomEvent:
    return InputRoomEvent(kind="new", event=msgspec.Raw(msgspec.json.encode(pdu(n))),
                          origin="test")


# --- the registry --------------------------------------------------------------------------


async def test_a_registered_future_is_resolved_and_the_reply_is_taken() -> None:
    local = LocalReplies()
    future: asyncio.Future[InputReply] = asyncio.get_running_loop().create_future()
    local.register("_INBOX.a.1", future)
    reply = InputReply(event_id="$e", outcome="accepted")
    assert local.deliver("_INBOX.a.1", reply)
    assert future.result() is reply


async def test_an_unknown_or_forgotten_inbox_is_left_to_nats() -> None:
    local = LocalReplies()
    future: asyncio.Future[InputReply] = asyncio.get_running_loop().create_future()
    local.register("_INBOX.a.1", future)
    reply = InputReply(event_id="$e", outcome="accepted")
    assert not local.deliver("_INBOX.a.2", reply)
    local.forget("_INBOX.a.1")
    local.forget("_INBOX.a.1")  # forgetting twice is harmless
    assert not local.deliver("_INBOX.a.1", reply)
    assert not future.done() and len(local) == 0


async def test_a_second_reply_to_a_resolved_future_is_taken_and_changes_nothing() -> None:
    # A redelivered input is answered again; the waiter keeps the first answer, as its
    # subscription would drop the second.
    local = LocalReplies()
    future: asyncio.Future[InputReply] = asyncio.get_running_loop().create_future()
    local.register("_INBOX.a.1", future)
    first = InputReply(event_id="$e", outcome="accepted")
    assert local.deliver("_INBOX.a.1", first)
    assert local.deliver("_INBOX.a.1", InputReply(event_id="$e", outcome="accepted",
                                                  duplicate=True))
    assert future.result() is first


async def test_a_future_of_another_event_loop_is_left_to_nats() -> None:
    other = asyncio.new_event_loop()
    try:
        future: asyncio.Future[InputReply] = other.create_future()
        local = LocalReplies()
        local.register("_INBOX.a.1", future)
        assert not local.deliver("_INBOX.a.1", InputReply(event_id="$e", outcome="accepted"))
        assert not future.done()
    finally:
        other.close()


# --- against NATS ------------------------------------------------------------------------


class Spy:
    """A connection of its own watching the room's inputs (for their Reply-Inbox) and every
    inbox subject: what a reply published over NATS would be seen on."""

    def __init__(self) -> None:
        self.inboxes: list[str] = []
        self.published: list[str] = []
        self.arrived = asyncio.Event()

    async def on_input(self, msg: Msg) -> None:
        inbox = (msg.headers or {}).get(REPLY_INBOX_HEADER)
        if inbox:
            self.inboxes.append(inbox)

    async def on_inbox(self, msg: Msg) -> None:
        self.published.append(msg.subject)
        if msg.subject in self.inboxes:
            self.arrived.set()

    async def caught_up(self, nc: NATS) -> None:
        """Wait until the spy has read all `nc` published so far: NATS keeps a connection's
        messages in order, so a marker published last arrives last."""
        marker = nc.new_inbox()
        await nc.publish(marker, b"")
        async with asyncio.timeout(GUARD):
            while marker not in self.published:
                await asyncio.sleep(0.01)

    def replies_seen(self) -> list[str]:
        return [subject for subject in self.published if subject in self.inboxes]


@pytest.fixture
async def spy(nats_url: str, streams: Subjects) -> AsyncIterator[Spy]:
    conn = await nats.connect(nats_url)
    watcher = Spy()
    try:
        await conn.subscribe(streams.input(ROOM), cb=watcher.on_input)
        await conn.subscribe("_INBOX.>", cb=watcher.on_inbox)
        await conn.flush()
        yield watcher
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def consuming(
    nc: NATS, subjects: Subjects, local: LocalReplies
) -> AsyncIterator[FakeHandler]:
    handler = FakeHandler()
    consumer = InputConsumer(nc, subjects, handler, FAST, local_replies=local)
    await consumer.start()
    try:
        yield handler
    finally:
        await consumer.drain(grace=GUARD)


async def test_a_perform_of_the_consuming_process_is_answered_without_a_publish(
    nc: NATS, streams: Subjects, spy: Spy
) -> None:
    local = LocalReplies()
    submitter = StreamSubmitter(nc, streams, "example.org", reply_timeout=GUARD,
                                local_replies=local)
    try:
        async with consuming(nc, streams, local) as handler:
            replies = [await submitter.submit(ROOM, "10", pdu(n), f"$e{n}") for n in range(3)]
            await spy.caught_up(nc)
        assert [(r.event_id, r.outcome) for r in replies] == [
            (f"$e{n}", "accepted") for n in range(3)
        ]
        assert [eid for _, eid, _ in handler.calls] == ["$e0", "$e1", "$e2"]
        # The spy saw the inputs' inboxes and other inbox traffic (the stream's acks), never
        # a reply; and the registry let go of every inbox.
        assert spy.published
        assert spy.replies_seen() == []
        assert len(local) == 0
    finally:
        await submitter.close()


async def test_a_batch_of_the_consuming_process_is_answered_without_a_publish(
    nc: NATS, streams: Subjects, spy: Spy
) -> None:
    local = LocalReplies()
    batch = InputBatchSubmitter(nc, streams, reply_timeout=GUARD, local_replies=local)
    inputs = [(message(n), f"$e{n}") for n in range(4)]
    try:
        async with consuming(nc, streams, local):
            replies = await batch.submit_inputs(ROOM, inputs)
            await spy.caught_up(nc)
        assert [r.event_id for r in replies] == [f"$e{n}" for n in range(4)]
        assert len(spy.inboxes) == 4
        assert spy.replies_seen() == [] and len(local) == 0
    finally:
        await batch.close()


async def test_a_perform_of_another_connection_is_answered_over_nats(
    nc: NATS, nats_url: str, streams: Subjects, spy: Spy
) -> None:
    # The consumer's process has a registry, the submitter (another process, here another
    # connection with no registry) is not in it: the reply goes over NATS as always.
    local = LocalReplies()
    other = await nats.connect(nats_url)
    submitter = StreamSubmitter(other, streams, "example.org", reply_timeout=GUARD)
    try:
        async with consuming(nc, streams, local):
            reply = await submitter.submit(ROOM, "10", pdu(7), "$e7")
            async with asyncio.timeout(GUARD):
                await spy.arrived.wait()
        assert (reply.event_id, reply.outcome) == ("$e7", "accepted")
        assert spy.replies_seen() == spy.inboxes
        assert len(spy.inboxes) == 1
    finally:
        await submitter.close()
        await other.close()


async def test_the_other_process_gets_its_reply_while_this_one_waits_locally(
    nc: NATS, nats_url: str, streams: Subjects, spy: Spy
) -> None:
    # Both kinds of submitter on the same room at once: each reply goes its own way.
    local = LocalReplies()
    other = await nats.connect(nats_url)
    remote = StreamSubmitter(other, streams, "example.org", reply_timeout=GUARD)
    here = StreamSubmitter(nc, streams, "example.org", reply_timeout=GUARD, local_replies=local)
    try:
        async with consuming(nc, streams, local):
            ours, theirs = await asyncio.gather(
                here.submit(ROOM, "10", pdu(1), "$e1"), remote.submit(ROOM, "10", pdu(2), "$e2")
            )
            await spy.caught_up(nc)
        assert (ours.event_id, theirs.event_id) == ("$e1", "$e2")
        published = spy.replies_seen()
        assert len(published) == 1
        assert all(
            inbox not in published for inbox in spy.inboxes if inbox.startswith(
                here._replies._prefix)
        )
    finally:
        await here.close()
        await remote.close()
        await other.close()


async def test_an_input_with_no_waiter_left_is_still_answered_over_nats(
    nc: NATS, streams: Subjects, spy: Spy
) -> None:
    # A producer of this very connection publishing with an inbox nobody registered (a
    # plain producer, not a perform): the registry does not swallow its reply.
    local = LocalReplies()
    async with consuming(nc, streams, local):
        reply = await send_input(nc, streams, message(9), room_id=ROOM, event_id="$e9",
                                 timeout=GUARD)
        async with asyncio.timeout(GUARD):
            await spy.arrived.wait()
    assert reply.event_id == "$e9"
    assert len(spy.inboxes) == 1 and spy.replies_seen() == spy.inboxes
