"""Lifecycle fixtures: a migrated fresh database per test (a second one on demand)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

# The storage tests' fixtures: a migrated fresh database per test and a store over it.
from tests.storage.conftest import pool, store  # noqa: F401
from worker.embedded import EmbeddedPostgres
from worker.storage import apply_migrations


@pytest.fixture
async def other_pool(
    embedded_pg: EmbeddedPostgres,
) -> AsyncIterator[Callable[..., Awaitable[asyncpg.Pool]]]:
    """Makes more migrated databases (dropped at the end)."""
    admin = await asyncpg.connect(embedded_pg.dsn())
    made: list[tuple[str, asyncpg.Pool]] = []

    async def make(template: str | None = None) -> asyncpg.Pool:
        """A new database: migrated and empty, or a copy of database `template` (which
        nobody may be connected to meanwhile)."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
        p = await asyncpg.create_pool(embedded_pg.dsn(name), min_size=1, max_size=4)
        assert p is not None
        await apply_migrations(p)
        made.append((name, p))
        return p

    try:
        yield make
    finally:
        for name, p in made:
            await p.close()
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
