"""The Perform API as `worker.app` wires it: its writer checks the head it knows against the
input pipeline's own view of the rooms this worker consumes. Sends one after another and at
once still make one chain, with the room's extremity as each one's prev event."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import nats
import pytest

from tests.perform.conftest import Api, user
from worker.app import Worker
from worker.storage.query_reads import PostgresQueryReads

ALICE = user("alice")


@pytest.fixture
async def app_api(app_worker: Worker, nats_url: str, prefix: str) -> AsyncIterator[Api]:
    nc = await nats.connect(nats_url)
    try:
        yield Api(nc, prefix)
    finally:
        await nc.close()


async def test_sends_make_one_chain(app_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = app_api
    room_id = (await api.perform("create_room", creator=ALICE, preset="public_chat"))["room_id"]
    reads: list[str] = []
    read = PostgresQueryReads.extremities

    async def counted(self: PostgresQueryReads, room: str) -> list[str]:
        reads.append(room)
        return await read(self, room)

    monkeypatch.setattr(PostgresQueryReads, "extremities", counted)
    ids = [await api.send(room_id, ALICE, f"s{i}") for i in range(10)]
    # Each send after the first found the room where its writer left it, in the pipeline's
    # view: the database was not asked.
    assert len(reads) <= 1, reads
    ids += await asyncio.gather(*(api.send(room_id, ALICE, f"c{i}") for i in range(20)))
    ids.append(await api.send(room_id, ALICE, "last"))
    latest = await api.query("latest_events_and_state", room_id=room_id, state_tuples=[])
    assert latest["latest_event_ids"] == [ids[-1]]
    events = {e["event_id"]: e for e in
              (await api.query("events_by_id", event_ids=ids))["events"]}
    assert len(events) == len(ids)
    assert all(len(e["prev_events"]) == 1 for e in events.values())
    # The sequential ones each build on the one before.
    for before, after in itertools.pairwise(ids[:10]):
        assert events[after]["prev_events"] == [before]
