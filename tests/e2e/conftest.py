"""End-to-end harness: a real worker (consumer, pipeline, PostgreSQL store, outbox relay) on
the session's embedded NATS and a fresh database, fed and read only through NATS.

`WorkerRun` wires the parts the way `worker.app` does, in-process, so a test can stop a
worker mid-stream and start another on the same streams and database. `OutputReader` reads
the output stream with a durable pull consumer, like sync or the federation sender would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from tests.fixtures.builder import RoomBuilder
from worker.bus import settle
from worker.bus.consumer import ConsumerSettings, InputConsumer
from worker.bus.outbox import NatsOutboxRelay
from worker.bus.producer import publish_input, send_input
from worker.bus.streams import StreamLimits, ensure_streams
from worker.bus.subjects import Subjects
from worker.messages import InputReply, InputRoomEvent, OutputEvent, decode_output
from worker.pipeline import Pipeline
from worker.storage import PostgresStore, apply_migrations
from worker.storage.outbox import PgOutboxStore

SHARDS = 2


@dataclass
class WorkerRun:
    nats_url: str
    dsn: str
    subjects: Subjects
    nc: NATS | None = None
    pool: asyncpg.Pool | None = None
    store: PostgresStore | None = None
    consumer: InputConsumer | None = None
    pipeline: Pipeline | None = None
    sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.nc = await nats.connect(self.nats_url)
        await ensure_streams(self.nc.jetstream(), self.subjects, StreamLimits(shards=SHARDS))
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        await apply_migrations(self.pool)
        self.store = PostgresStore(self.pool)
        relay = NatsOutboxRelay(
            self.nc, self.subjects, PgOutboxStore(self.pool), sweep_interval=0.5
        )
        # The relay's sweep publishes what a crashed predecessor committed but never sent.
        self.sweeper = asyncio.create_task(relay.run())
        self.pipeline = pipeline = Pipeline(self.store, relay)
        cfg = ConsumerSettings(
            shards=SHARDS,
            ack_wait=5.0,
            fetch_timeout=0.2,
            drain_grace=10.0,
            retry=settle.RetryPolicy(max_deliveries=3, base_delay=0.05),
        )
        self.consumer = InputConsumer(self.nc, self.subjects, pipeline, cfg)
        await self.consumer.start()

    async def stop(self, *, graceful: bool = True) -> None:
        if self.consumer is not None:
            await self.consumer.drain(10.0 if graceful else 0.0)
        if self.pipeline is not None and graceful:
            await self.pipeline.drain()
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.pool is not None:
            await self.pool.close()
        self.consumer = self.nc = self.pool = self.store = None
        self.pipeline = self.sweeper = None


@dataclass
class Client:
    """A producer and a consumer of the roomserver, as other services are."""

    nc: NATS
    subjects: Subjects
    seen: list[OutputEvent] = field(default_factory=list)
    _sub: Any = None

    async def send(
        self, b: RoomBuilder, event_id: str, kind: str = "new", msg_id: str = "", **kw: Any
    ) -> InputReply:
        """Publish and wait for the reply; `msg_id` overrides the Nats-Msg-Id (the event ID)."""
        return await send_input(
            self.nc, self.subjects, _input(b, event_id, kind, **kw),
            room_id=b.room_id, event_id=msg_id or event_id, timeout=30.0,
        )

    async def publish(self, b: RoomBuilder, event_id: str, kind: str = "new", **kw: Any) -> None:
        await publish_input(
            self.nc, self.subjects, _input(b, event_id, kind, **kw),
            room_id=b.room_id, event_id=event_id,
        )

    async def outputs(self, at_least: int = 0, timeout: float = 20.0) -> list[OutputEvent]:
        """Everything read so far, reading on until there are `at_least` outputs (or the
        stream stays quiet for a moment once they are there)."""
        if self._sub is None:
            self._sub = await self.nc.jetstream().pull_subscribe(
                self.subjects.output_wildcard, durable="e2e-reader",
                stream=self.subjects.output_stream,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                msgs = await self._sub.fetch(256, timeout=0.3)
            except (TimeoutError, nats.errors.TimeoutError):
                if len(self.seen) >= at_least:
                    break
                continue
            for m in msgs:
                self.seen.append(decode_output(m.data))
                await m.ack()
        return list(self.seen)


def _input(b: RoomBuilder, event_id: str, kind: str, **kw: Any) -> InputRoomEvent:
    raw = msgspec.Raw(msgspec.json.encode(b.events[event_id]))
    return InputRoomEvent(kind=kind, event=raw, **kw)  # type: ignore[arg-type]


def event_id_of(out: OutputEvent) -> str:
    payload = out.new_room_event or out.old_room_event
    assert payload is not None
    value = msgspec.json.decode(payload.event)["event_id"]
    assert isinstance(value, str)
    return value


@pytest.fixture
async def worker(nats_url: str, database_dsn: str, prefix: str) -> AsyncIterator[WorkerRun]:
    run = WorkerRun(nats_url, database_dsn, Subjects(prefix))
    await run.start()
    try:
        yield run
    finally:
        await run.stop()


@pytest.fixture
async def client(nats_url: str, prefix: str, worker: WorkerRun) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url)
    try:
        yield Client(nc, Subjects(prefix))
    finally:
        await nc.close()
