"""Redelivery is harmless: every input published twice, and the worker stopped abruptly
mid-stream and replaced, give the same outputs as one clean run, without duplicates, and
the same final state."""

from __future__ import annotations

import asyncio

import msgspec
import nats

from tests.e2e.conftest import Client, WorkerRun
from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import Harness, started
from worker.bus.producer import publish_input
from worker.bus.subjects import Subjects
from worker.messages import InputRoomEvent, encode_output


def _room() -> RoomBuilder:
    b = started("10")
    b.power_levels("alice", users={"alice": 100, "bob": 50})
    for i in range(6):
        b.message("bob", f"m{i}")
        b.topic("alice", f"t{i}")
    b.invite("alice", "carol")
    b.join("carol")
    fork = b.fork()
    a = b.state_event("m.room.name", "", {"name": "A"}, "alice")
    c = fork.message("carol", "concurrent")
    b.message("alice", "merge", prev=[a, c])
    msg = b.message("carol", "oops")
    b.redact("alice", msg)
    for i in range(6):
        b.message("carol", f"after {i}")
    return b


async def _reference(b: RoomBuilder) -> list[bytes]:
    """The outputs of one clean run over the in-memory fakes."""
    harness = Harness()
    for eid in b.events:
        await harness.send(b, eid)
    return [r.payload for r in harness.relay.published]


async def _publish_twice(nc: nats.NATS, subjects: Subjects, b: RoomBuilder, ids: list[str]) -> None:
    for eid in ids:
        raw = msgspec.Raw(msgspec.json.encode(b.events[eid]))
        inp = InputRoomEvent(kind="new", event=raw)
        await publish_input(nc, subjects, inp, room_id=b.room_id, event_id=eid)
        # A second copy under another message ID, so JetStream does not drop it and the
        # worker itself must recognise the repeat.
        await publish_input(nc, subjects, inp, room_id=b.room_id, event_id=eid + "#again")


async def test_twice_published_and_restarted_gives_the_clean_run(
    nats_url: str, database_dsn: str, prefix: str
) -> None:
    b = _room()
    ids = list(b.events)
    expected = await _reference(b)
    subjects = Subjects(prefix)
    first = WorkerRun(nats_url, database_dsn, subjects)
    await first.start()
    nc = await nats.connect(nats_url)
    client = Client(nc, subjects)
    try:
        half = len(ids) // 2
        await _publish_twice(nc, subjects, b, ids[:half])
        await client.outputs(at_least=half // 2)
        # Killed mid-stream: no drain, unsettled messages are redelivered to the next one.
        await first.stop(graceful=False)
        await _publish_twice(nc, subjects, b, ids[half:])
        second = WorkerRun(nats_url, database_dsn, subjects)
        await second.start()
        try:
            outs = await client.outputs(at_least=len(expected), timeout=60)
            # Give stragglers (redeliveries) a moment: nothing more may appear.
            await asyncio.sleep(0.5)
            outs = await client.outputs(at_least=len(expected))
            assert [encode_output(o) for o in outs] == expected
            assert second.store is not None
            current = await second.store.current_state(b.room_id)
            assert current is not None
            assert await second.store.materialize(current) == b.state
            assert await second.store.extremities(b.room_id) == b.latest
        finally:
            await second.stop()
    finally:
        await nc.close()
        await first.stop()
