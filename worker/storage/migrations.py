"""Numbered SQL migrations from `schemas/sql/`, applied at start-up (DESIGN §3, STYLE R8).

Every file `NNNN_name.sql` is applied once, in number order, inside one transaction together
with its row in `schema_migrations`; a transaction-scoped advisory lock makes concurrent
start-ups of several workers take turns, so exactly one of them applies a given file.
Shipped files are never edited: a change is a new file and a new changelog line below.

Changelog (SCHEMA_VERSION = the highest file number):

    1  0001_initial.sql   rooms, NID dictionaries (preassigned well-known types and the empty
                          state key), events + JSON + prev references, state blocks and layered
                          snapshots, memberships, invites, redactions, outbox.
    2  0002_write_log.sql the write log: which worker (application_name) first wrote each
                          event, when, from a trigger in the event's transaction.
    3  0003_lean_writes.sql less work per event: no foreign keys on the event tables, the
                          write log written by the event's own upsert (trigger and its room
                          index dropped), the outbox keyed by output_id (seq index dropped).
    4  0004_autovacuum_thresholds.sql the big tables are first analyzed (and vacuumed) after
                          10,000 changed rows, not 50: no plan is built on a tiny table's
                          statistics and then kept while the table grows.
    5  0005_perform.sql   the Perform API's tables: room aliases, the room directory,
                          send_event transaction IDs (with the signed event), forgotten rooms.
    6  0006_query_indexes.sql memberships by (user, membership) and by (room, membership)
                          (the first replaces memberships_target_idx), and room_joined_counts
                          kept by row triggers on memberships: the homeserver queries.
    7  0007_joined_counts_per_statement.sql room_joined_counts kept by statement triggers
                          (transition tables): a statement writing thousands of memberships
                          (a federated join's first state) changes each count row once.
    8  0008_outlier_member_index.sql the outlier member events of a user across rooms, as one
                          index range: rooms_for_user lists invites to rooms we are not in.
    9  0009_outbox_fillfactor.sql outbox pages filled to half: marking a row sent rewrites it
                          on its own page, and the WAL carries sent_at, not the payload again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import asyncpg

SCHEMA_VERSION = 9

SQL_DIR = Path(__file__).resolve().parents[2] / "schemas" / "sql"

# Any constant distinct from the per-room lock keys (those are hashes of room IDs: a clash
# would only make a start-up wait for one room write).
_MIGRATION_LOCK_KEY = 0x726F6F6D73727631  # "roomsrv1"

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
_SELECT_APPLIED = "SELECT version FROM schema_migrations"
_INSERT_APPLIED = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


class MigrationError(Exception):
    """The migration files are inconsistent (a gap, a duplicate number, a bad name)."""

    code = "migration_files_invalid"


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """The migration files in version order; a gap or duplicate number is an error."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_NAME.match(path.name)
        if m is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lowercase.sql")
        found.append(Migration(int(m.group(1)), path.name, path.read_text(encoding="utf-8")))
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise MigrationError(f"{mig.name}: expected migration number {expected:04d}")
    return found


async def apply_migrations(pool_or_conn: asyncpg.Pool | asyncpg.Connection) -> int:
    """Apply every migration not yet applied; return how many were applied (0 when current)."""
    migrations = load_migrations()
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as conn:
            return await _apply(cast(asyncpg.Connection, conn), migrations)
    return await _apply(pool_or_conn, migrations)


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> int:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_VERSION_TABLE)
        applied = {r["version"] for r in await conn.fetch(_SELECT_APPLIED)}
        count = 0
        for mig in migrations:
            if mig.version in applied:
                continue
            await conn.execute(mig.sql)
            await conn.execute(_INSERT_APPLIED, mig.version, mig.name)
            count += 1
        return count


async def schema_version(conn: asyncpg.Connection) -> int:
    """The highest applied migration (0 on an empty database), for readiness checks."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    v = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(v)
