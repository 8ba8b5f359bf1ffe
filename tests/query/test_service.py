"""The micro service over real NATS: discovery, subjects, error headers, concurrency."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import msgspec
import nats
import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from worker.query.ports import QueryEvent
from worker.query.service import ERROR_REASON_HEADER, HANDLERS, start_query_service
from worker.wiring import start_queries

from .rooms import ROOM, MemoryStore, build_room


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.drain()


async def test_endpoints_answer_on_prefixed_subjects(nc: Client, prefix: str) -> None:
    svc = await start_query_service(nc, build_room(), prefix=prefix)
    try:
        msg = await nc.request(f"{prefix}.query.room_version", b'{"room_id": "%s"}' % ROOM.encode(), timeout=5)
        assert msg.headers is None or "Nats-Service-Error-Code" not in msg.headers
        assert json.loads(msg.data) == {"room_id": ROOM, "room_version": "10"}
        # Discoverable: INFO lists every endpoint with its subject.
        info = await nc.request(f"$SRV.INFO.roomserver.{svc.service.id}", b"", timeout=5)  # type: ignore[union-attr]
        endpoints = {e["name"]: e["subject"] for e in json.loads(info.data)["endpoints"]}
        assert endpoints == {n: f"{prefix}.query.{n}" for n in HANDLERS}
    finally:
        await svc.stop()


def _count(query: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "roomserver_queries_total", {"query": query, "result": result}
    )
    return value or 0.0


async def test_errors_use_micro_headers_and_stable_codes(nc: Client, prefix: str) -> None:
    svc = await start_query_service(nc, build_room(), prefix=prefix)
    before = _count("current_state", "not_found")
    try:
        msg = await nc.request(f"{prefix}.query.current_state", b'{"room_id": "!x:y", "state_tuples": []}', timeout=5)
        assert msg.headers is not None
        assert msg.headers["Nats-Service-Error-Code"] == "404"
        assert msg.headers[ERROR_REASON_HEADER] == "not_found"
        assert json.loads(msg.data)["code"] == "not_found"
        msg = await nc.request(f"{prefix}.query.events_by_id", b'{"event_ids": "nope"}', timeout=5)
        assert msg.headers is not None
        assert msg.headers["Nats-Service-Error-Code"] == "400"
        assert "event_ids" in msg.headers["Nats-Service-Error"]
        assert json.loads(msg.data)["code"] == "bad_request"
        # Counted by query and stable code.
        assert _count("current_state", "not_found") == before + 1
    finally:
        await svc.stop()


class SlowStore(MemoryStore):
    """A store whose reads of one event wait until released: a query that takes long."""

    def __init__(self) -> None:
        base = build_room()
        self.__dict__.update(base.__dict__)
        self.release = asyncio.Event()

    async def events(self, event_ids: Sequence[str]) -> dict[str, QueryEvent]:
        if "$slow" in event_ids:
            await self.release.wait()
        return await super().events(event_ids)


async def test_a_slow_query_does_not_hold_up_others(nc: Client, prefix: str) -> None:
    store = SlowStore()
    svc = await start_query_service(nc, store, prefix=prefix)
    try:
        slow = asyncio.create_task(
            nc.request(f"{prefix}.query.events_by_id", b'{"event_ids": ["$slow"]}', timeout=10)
        )
        await asyncio.sleep(0)
        fast = await nc.request(
            f"{prefix}.query.events_by_id", b'{"event_ids": ["$m2"]}', timeout=5
        )
        assert len(json.loads(fast.data)["events"]) == 1
        assert not slow.done()
        store.release.set()
        done = msgspec.json.decode((await slow).data)
        assert done == {"events": [], "missing_event_ids": ["$slow"]}
    finally:
        await svc.stop()


async def test_cli_prints_the_answer_or_the_error(
    nc: Client, prefix: str, nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    svc = await start_query_service(nc, build_room(), prefix=prefix)
    try:
        base = ["query", "--url", nats_url, "--prefix", prefix]
        code = await asyncio.to_thread(main, [*base, "room_version", json.dumps({"room_id": ROOM})])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert json.loads(out.out) == {"room_id": ROOM, "room_version": "10"}
        code = await asyncio.to_thread(main, [*base, "room_version", '{"room_id": "!x:y"}'])
        assert code == 1
        assert "not_found" in capsys.readouterr().err
        # Checked locally before anything is sent.
        code = await asyncio.to_thread(main, [*base, "current_state", '{"room_id": 1}'])
        assert code == 2
        assert "invalid current_state request" in capsys.readouterr().err
    finally:
        await svc.stop()


async def test_over_a_shared_pool_queries_take_a_quarter_of_it(
    nc: Client, prefix: str, database_dsn: str
) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=8)
    try:
        svc = await start_queries(nc, pool, prefix=prefix)
        try:
            # Each query holds at most one connection at a time: 2 of 8 stay with queries,
            # the rest with the input pipeline.
            assert svc.max_in_flight == 2
        finally:
            await svc.stop()
    finally:
        await pool.close()
