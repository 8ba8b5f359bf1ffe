"""Purges end to end: over the perform endpoints of the micro service, against a worker fed
and read through NATS; the room is received again afterwards and its outputs published again."""

from __future__ import annotations

import asyncio

import msgspec

from tests.e2e.conftest import Client, WorkerRun, event_id_of
from tests.pipeline.conftest import started
from worker.messages.admin import PurgeHistoryResponse, PurgeRoomRequest, PurgeRoomResponse
from worker.messages.query import QueryError
from worker.purges import serve_purges
from worker.query.service import ERROR_REASON_HEADER
from worker.storage import PostgresStore
from worker.wiring import start_queries


async def _ask(client: Client, subject: str, body: dict[str, object]) -> tuple[bytes, str]:
    msg = await client.nc.request(subject, msgspec.json.encode(body), timeout=30)
    return msg.data, (msg.headers or {}).get(ERROR_REASON_HEADER, "")


async def test_purge_room_over_nats_then_receive_it_again(
    worker: WorkerRun, client: Client, prefix: str
) -> None:
    assert worker.nc is not None and worker.pool is not None and worker.store is not None
    admin, unsubscribe = await serve_purges(worker.nc, prefix, worker.store, None)
    service = await start_queries(worker.nc, worker.pool, prefix=prefix, performs=admin)
    try:
        b = started("10")
        b.topic("alice", "before")
        for i in range(5):
            b.message("bob", f"m{i}")
        events = list(b.events)
        first = [await client.send(b, e) for e in events]
        assert {r.outcome for r in first} == {"accepted"}
        await client.outputs(at_least=len(events))

        data, error = await _ask(client, f"{prefix}.perform.purge_room", {"room_id": b.room_id})
        assert error == ""
        answer = msgspec.json.decode(data, type=PurgeRoomResponse)
        assert answer.removed["events"] == len(events) and answer.removed["rooms"] == 1
        outs = await client.outputs(at_least=len(events) + 1)
        assert outs[-1].type == "purge_room" and outs[-1].purge_room is not None
        assert outs[-1].purge_room.room_id == b.room_id

        # Unknown to the queries, at once.
        data, error = await _ask(client, f"{prefix}.query.room_version", {"room_id": b.room_id})
        assert error == "not_found"
        assert msgspec.json.decode(data, type=QueryError).code == "not_found"

        # Received again: the input stream would drop the same Nats-Msg-Id within its
        # duplicate window, so the producer sends them under new ones.
        again = [await client.send(b, e, msg_id=f"{e}#again") for e in events]
        assert [(r.outcome, r.duplicate) for r in again] == [(r.outcome, False) for r in first]
        outs = await client.outputs(at_least=2 * len(events) + 1)
        new = [event_id_of(o) for o in outs if o.type == "new_room_event"]
        assert new == events + events

        # purge_history's answers and refusals.
        data, error = await _ask(client, f"{prefix}.perform.purge_history",
                                 {"room_id": b.room_id, "before_event_id": events[-2]})
        assert error == ""
        history = msgspec.json.decode(data, type=PurgeHistoryResponse)
        assert history.remaining == 0 and history.removed["events"] > 0
        _, error = await _ask(client, f"{prefix}.perform.purge_history", {"room_id": b.room_id})
        assert error == "bad_request"
        _, error = await _ask(client, f"{prefix}.perform.purge_history",
                              {"room_id": "!nope:test", "before_ts": 1})
        assert error == "not_found"
        _, error = await _ask(client, f"{prefix}.perform.purge_history",
                              {"room_id": b.room_id, "before_event_id": "$nope"})
        assert error == "not_found"
    finally:
        await service.stop()
        await unsubscribe()


async def test_every_worker_forgets_a_purged_room(
    worker: WorkerRun, client: Client, prefix: str
) -> None:
    """The worker that purges tells the others: another worker's store, which cached the
    room's row, forgets it."""
    assert worker.nc is not None and worker.pool is not None and worker.store is not None
    b = started("10")
    for e in list(b.events):
        await client.send(b, e)
    other = PostgresStore(worker.pool)
    assert await other.room(b.room_id) is not None  # cached now
    admin, undo = await serve_purges(worker.nc, prefix, worker.store, None)
    _, undo_other = await serve_purges(worker.nc, prefix, other, None)
    try:
        await admin.purge_room(PurgeRoomRequest(room_id=b.room_id))
        for _ in range(100):
            if await other.room(b.room_id) is None:
                break
            await asyncio.sleep(0.05)
        assert await other.room(b.room_id) is None
    finally:
        await undo()
        await undo_other()
