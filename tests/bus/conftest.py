"""Bus fixtures: a NATS connection and this test's own streams (from the `prefix` fixture)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig

from worker.bus.streams import StreamLimits, ensure_streams
from worker.bus.subjects import Subjects

SHARDS = 2


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def subjects(prefix: str) -> Subjects:
    return Subjects(prefix)


@pytest.fixture
async def streams(nc: NATS, subjects: Subjects) -> AsyncIterator[Subjects]:
    """The three streams of this test's prefix, removed afterwards (the server is shared)."""
    await ensure_streams(nc.jetstream(), subjects, StreamLimits(shards=SHARDS))
    try:
        yield subjects
    finally:
        js = nc.jetstream()
        for name in (subjects.input_stream, subjects.output_stream, subjects.deadletter_stream):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)


@pytest.fixture
async def stream(nc: NATS) -> AsyncIterator[tuple[str, str]]:
    """A plain stream of this test's own: (its name, its subject prefix `<prefix>.>`)."""
    name = f"T_{uuid.uuid4().hex[:8].upper()}"
    subject = f"t.{name.lower()}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{subject}.>"]))
    try:
        yield name, subject
    finally:
        await js.delete_stream(name)
