"""Migrations apply to an empty database, are idempotent and safe to race."""

from __future__ import annotations

import asyncio

import asyncpg

from worker.storage import SCHEMA_VERSION, apply_migrations, schema_version
from worker.storage.migrations import load_migrations
from worker.storage.nids import EMPTY_STATE_KEY_NID, FIRST_DYNAMIC_NID, WELL_KNOWN_TYPES


async def test_apply_to_empty_database_then_idempotent(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await schema_version(conn) == 0
        assert await apply_migrations(conn) == len(load_migrations())
        assert await schema_version(conn) == SCHEMA_VERSION
        assert await apply_migrations(conn) == 0
        assert await schema_version(conn) == SCHEMA_VERSION
        rows = await conn.fetch("SELECT type_nid, event_type FROM event_types")
        assert {r["event_type"]: r["type_nid"] for r in rows} == dict(WELL_KNOWN_TYPES)
        assert await conn.fetchval("SELECT state_key_nid FROM state_keys WHERE state_key = ''") == (
            EMPTY_STATE_KEY_NID
        )
        nid = await conn.fetchval(
            "INSERT INTO event_types (event_type) VALUES ('x.custom') RETURNING type_nid"
        )
        assert nid >= FIRST_DYNAMIC_NID
    finally:
        await conn.close()


async def test_every_column_is_commented(database_dsn: str) -> None:
    conn = await asyncpg.connect(database_dsn)
    try:
        await apply_migrations(conn)
        missing = await conn.fetch(
            """
            SELECT c.table_name, c.column_name FROM information_schema.columns c
            JOIN pg_class t ON t.relname = c.table_name AND t.relkind = 'r'
            JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
            WHERE c.table_schema = 'public' AND c.table_name <> 'schema_migrations'
              AND col_description(t.oid, c.ordinal_position) IS NULL
            """
        )
        assert [tuple(r) for r in missing] == []
    finally:
        await conn.close()


async def test_concurrent_starts_apply_once(database_dsn: str) -> None:
    conns = [await asyncpg.connect(database_dsn) for _ in range(3)]
    try:
        counts = await asyncio.gather(*(apply_migrations(c) for c in conns))
        assert sorted(counts) == [0, 0, len(load_migrations())]
    finally:
        for c in conns:
            await c.close()


def test_changelog_lists_every_migration() -> None:
    from worker.storage import migrations

    assert migrations.__doc__ is not None
    for mig in load_migrations():
        assert f"{mig.version}  {mig.name}" in migrations.__doc__
    assert load_migrations()[-1].version == SCHEMA_VERSION
