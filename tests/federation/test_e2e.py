"""Gap filling end to end: a real worker (consumer, pipeline, PostgreSQL store, outbox relay)
with the NATS federation client, a fake federation service on the same NATS, inputs and
outputs only through NATS. Checks the PostgreSQL store's side of the state path (outliers as
a state, a merge with the other extremity) and the bus's side of the failure path (nak with
back-off, then a refusal at the retry limit)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from tests.e2e import conftest as e2e
from tests.e2e.conftest import Client, WorkerRun, event_id_of
from tests.federation.conftest import FakeFederation
from tests.pipeline.conftest import started
from worker.bus.subjects import Subjects
from worker.federation import NatsFederationClient
from worker.pipeline import Pipeline
from worker.pipeline.fetch_missing import GapSettings


@pytest.fixture
async def fed(nats_url: str, prefix: str) -> AsyncIterator[FakeFederation]:
    nc = await nats.connect(nats_url)
    service = FakeFederation(nc, f"{prefix}.federation.request")
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await nc.close()


@pytest.fixture
async def gap_worker(
    nats_url: str, database_dsn: str, prefix: str, fed: FakeFederation,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[WorkerRun]:
    nc = await nats.connect(nats_url)
    fed_client = NatsFederationClient(nc, fed.prefix, timeout=0.5, state_timeout=2.0)
    # The e2e harness builds `Pipeline(store, relay)`; give it the federation client. The
    # harness's consumer delivers at most 3 times: refuse on the third.
    settings = GapSettings(max_attempts=3)
    made: Any = functools.partial(_pipeline, fed_client=fed_client, settings=settings)
    monkeypatch.setattr(e2e, "Pipeline", made)
    run = WorkerRun(nats_url, database_dsn, Subjects(prefix))
    await run.start()
    try:
        yield run
    finally:
        await run.stop()
        await nc.close()


def _pipeline(
    store: Any, relay: Any, *, fed_client: NatsFederationClient, settings: GapSettings
) -> Pipeline:
    return Pipeline(store, relay, fed_client, gap_settings=settings)


@pytest.fixture
async def producer(nats_url: str, prefix: str, gap_worker: WorkerRun) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url)
    try:
        yield Client(nc, Subjects(prefix))
    finally:
        await nc.close()


async def test_big_gap_end_to_end(
    gap_worker: WorkerRun, producer: Client, fed: FakeFederation
) -> None:
    b = started("10")
    base = list(b.events)
    for i in range(25):
        b.message("bob", f"missed {i}")
    topic = b.topic("alice", "set in the gap")
    join = b.join("carol")
    state = dict(b.state)
    latest = b.message("carol")
    fed.serve(b)
    fed.remember_state(b, latest, state)
    for eid in base:
        assert (await producer.send(b, eid)).outcome == "accepted"

    reply = await producer.send(b, latest)

    assert reply.outcome == "accepted", reply
    outs = await producer.outputs(at_least=len(base) + 1)
    assert [event_id_of(o) for o in outs] == [*base, latest]
    store = gap_worker.store
    assert store is not None
    assert await store.extremities(b.room_id) == sorted([base[-1], latest])
    current = await store.current_state(b.room_id)
    assert current is not None and await store.materialize(current) == state
    stored = await store.events([topic, join])
    assert {e: s.kind for e, s in stored.items()} == {topic: "outlier", join: "outlier"}


async def test_unreachable_service_end_to_end(
    gap_worker: WorkerRun, producer: Client, fed: FakeFederation
) -> None:
    b = started("10")
    base = list(b.events)
    b.message("bob", "missed")
    latest = b.message("alice")
    for eid in base:
        assert (await producer.send(b, eid)).outcome == "accepted"
    await fed.stop()

    # Retried with back-off by the bus, then refused on the last delivery, not dead-lettered.
    reply = await producer.send(b, latest)

    assert (reply.outcome, reply.reason_code) == ("rejected", "missing_prev_events")
    store = gap_worker.store
    assert store is not None
    assert latest not in await store.events([latest])
    other = b.message("bob", prev=[base[-1]])
    assert (await producer.send(b, other)).outcome == "accepted"
    outs = await producer.outputs(at_least=len(base) + 1)
    assert [event_id_of(o) for o in outs] == [*base, other]
