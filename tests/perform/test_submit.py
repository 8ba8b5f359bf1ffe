"""`StreamSubmitter` against a real NATS: the input reaches the input stream with the wire
contract's headers, the reply on its Reply-Inbox resolves it, and a reply that never comes
times out without leaving the inbox behind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NoStreamResponseError

from worker.bus.streams import StreamLimits, ensure_streams
from worker.bus.subjects import MSG_ID_HEADER, REPLY_INBOX_HEADER, ROOM_ID_HEADER, Subjects
from worker.bus.submit import StreamSubmitter
from worker.messages.input import INPUT_DECODER
from worker.messages.reply import InputReply, encode_reply

ROOM = "!room:hs.test"
PDU = {"type": "m.room.message", "room_id": ROOM, "content": {"body": "hi"}}


@pytest.fixture
async def nc(nats_url: str, prefix: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    await ensure_streams(client.jetstream(), Subjects(prefix), StreamLimits(shards=1))
    try:
        yield client
    finally:
        await client.close()


async def test_an_input_is_stored_and_its_reply_answers_it(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)
    submitter = StreamSubmitter(nc, subjects, "hs.test", reply_timeout=30)
    seen: list[Msg] = []

    async def pipeline(msg: Msg) -> None:
        # As the pipeline does: answer on the input's Reply-Inbox.
        seen.append(msg)
        headers = msg.headers or {}
        reply = InputReply(event_id=headers[MSG_ID_HEADER], outcome="accepted")
        await nc.publish(headers[REPLY_INBOX_HEADER], encode_reply(reply))

    sub = await nc.subscribe(subjects.input(ROOM), cb=pipeline)
    try:
        pending = await submitter.publish(ROOM, "12", PDU, "$one")
        answer = await pending
        assert answer.event_id == "$one" and answer.outcome == "accepted"
        assert (await submitter.submit(ROOM, "12", msgspec.json.encode(PDU), "$two")).event_id \
            == "$two"
    finally:
        await sub.unsubscribe()
        await submitter.close()
    first = seen[0]
    assert first.headers is not None and first.headers[ROOM_ID_HEADER] == ROOM
    message = INPUT_DECODER.decode(first.data)
    assert message.kind == "new" and message.send_as_server == "hs.test"
    assert msgspec.json.decode(message.event) == PDU
    # Both are in the input stream, once each.
    info = await nc.jetstream().stream_info(subjects.input_stream)
    assert info.state.messages == 2


async def test_a_reply_that_never_comes_times_out(nc: NATS, prefix: str) -> None:
    submitter = StreamSubmitter(nc, Subjects(prefix), "hs.test", reply_timeout=0.2)
    try:
        pending = await submitter.publish(ROOM, "12", PDU, "$lost")
        with pytest.raises(TimeoutError):
            await pending
        # The inbox is forgotten: a late reply finds nobody and is dropped.
        assert not submitter._replies._waiting
    finally:
        await submitter.close()


async def test_a_subject_no_stream_takes_is_an_error(nats_url: str) -> None:
    client = await nats.connect(nats_url)
    submitter = StreamSubmitter(client, Subjects("nostream"), "hs.test", reply_timeout=2)
    try:
        with pytest.raises(NoStreamResponseError):
            await submitter.publish(ROOM, "12", PDU, "$x")
        assert not submitter._replies._waiting
    finally:
        await submitter.close()
        await client.close()
