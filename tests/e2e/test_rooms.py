"""Realistic rooms end to end: publish to NATS, read outputs like a real consumer."""

from __future__ import annotations

from tests.e2e.conftest import Client, WorkerRun, event_id_of
from tests.pipeline.conftest import started


async def test_linear_room_end_to_end(worker: WorkerRun, client: Client) -> None:
    b = started("10")
    b.topic("alice", "hello")
    msg = b.message("bob")
    replies = [await client.send(b, eid) for eid in list(b.events)]
    assert [r.outcome for r in replies] == ["accepted"] * len(b.events)
    outs = await client.outputs(at_least=len(b.events))
    assert [event_id_of(o) for o in outs] == list(b.events)
    assert worker.store is not None
    assert await worker.store.extremities(b.room_id) == [msg]
    current = await worker.store.current_state(b.room_id)
    assert current is not None
    assert await worker.store.materialize(current) == b.state
