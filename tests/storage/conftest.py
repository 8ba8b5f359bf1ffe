"""Storage fixtures: a migrated fresh database per test and a store over it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from worker.storage import PostgresStore, apply_migrations


@pytest.fixture
async def pool(database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_dsn, min_size=1, max_size=8)
    assert p is not None
    try:
        await apply_migrations(p)
        yield p
    finally:
        await p.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> PostgresStore:
    return PostgresStore(pool)
