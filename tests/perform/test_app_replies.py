"""The Perform API as `worker.app` wires it answers its own inputs in process: the worker
consumes every shard, so no reply to a perform's input is ever published on NATS, and every
perform still gets its verdict (the events are in the room). Its pipeline takes the events
the performs built as they are, instead of validating their inputs again."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.msg import Msg

from tests.perform.conftest import Api, user
from worker.app import Worker
from worker.bus.subjects import REPLY_INBOX_HEADER
from worker.core.events import Event

ALICE = user("alice")
GUARD = 20.0  # seconds; only ever reached when something hangs


class Spy:
    """A connection of its own reading every input's Reply-Inbox and every inbox subject."""

    def __init__(self) -> None:
        self.inboxes: set[str] = set()
        self.published: list[str] = []

    async def on_input(self, msg: Msg) -> None:
        inbox = (msg.headers or {}).get(REPLY_INBOX_HEADER)
        if inbox:
            self.inboxes.add(inbox)

    async def on_inbox(self, msg: Msg) -> None:
        self.published.append(msg.subject)


async def test_performs_are_answered_without_a_reply_on_nats(
    app_worker: Worker, nats_url: str, prefix: str
) -> None:
    worker = app_worker
    spy = Spy()
    taken: list[str] = []
    take = worker.built_events.take

    def spied_take(data: bytes) -> Event | None:
        event = take(data)
        if event is not None:
            taken.append(event.event_id)
        return event

    worker.built_events.take = spied_take  # type: ignore[method-assign]
    watcher = await nats.connect(nats_url)
    client = await nats.connect(nats_url)
    try:
        await watcher.subscribe(f"{prefix}.input.>", cb=spy.on_input)
        await watcher.subscribe("_INBOX.>", cb=spy.on_inbox)
        await watcher.flush()
        api = Api(client, prefix)
        room_id = (await api.perform("create_room", creator=ALICE,
                                     preset="public_chat"))["room_id"]
        ids = [await api.send(room_id, ALICE, f"s{i}") for i in range(3)]
        ids += await asyncio.gather(*(api.send(room_id, ALICE, f"c{i}") for i in range(5)))
        # The worker's connection keeps its messages in order: once the spy reads a marker it
        # published last, it has read any reply it published before.
        assert worker.nc is not None
        marker = worker.nc.new_inbox()
        await worker.nc.publish(marker, b"")
        async with asyncio.timeout(GUARD):
            while marker not in spy.published:
                await asyncio.sleep(0.01)
        latest = await api.query("latest_events_and_state", room_id=room_id, state_tuples=[])
    finally:
        await client.close()
        await watcher.close()
    assert latest["latest_event_ids"] == [ids[-1]]
    # Every send and the room's creation asked for a reply; none went over NATS.
    assert len(spy.inboxes) >= len(ids) + 1
    assert spy.inboxes.isdisjoint(spy.published)
    assert len(worker.local_replies) == 0
    # Every event sent was handed to the pipeline in process, and nothing is left behind.
    assert set(ids) <= set(taken)
    assert len(worker.built_events) == 0
