"""The Perform API's tables (schemas/sql/0005_perform.sql): aliases, the room directory,
send_event transaction IDs and forgotten rooms.

`PgPerformStore` implements `worker.perform.ports.PerformStore`. Each method is one statement
on a pool connection of its own: these rows are written by performs, never by the input
pipeline, so they need no room lock.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from worker.perform.ports import TxnRecord

SELECT_ALIAS = "SELECT room_id, creator FROM room_aliases WHERE alias = $1"
SELECT_ROOM_ALIASES = "SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias"
INSERT_ALIAS = """
INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)
ON CONFLICT (alias) DO NOTHING RETURNING alias
"""
DELETE_ALIAS = "DELETE FROM room_aliases WHERE alias = $1 RETURNING alias"
MOVE_ALIASES = "UPDATE room_aliases SET room_id = $2 WHERE room_id = $1 RETURNING alias"

PUBLISH = "INSERT INTO room_directory (room_id) VALUES ($1) ON CONFLICT (room_id) DO NOTHING"
UNPUBLISH = "DELETE FROM room_directory WHERE room_id = $1"
SELECT_PUBLISHED = "SELECT 1 FROM room_directory WHERE room_id = $1"
# One page after `seq` $1, and the size of the whole directory.
SELECT_DIRECTORY_PAGE = """
SELECT room_id, seq, (SELECT count(*) FROM room_directory) AS total
FROM room_directory WHERE seq > $1 ORDER BY seq LIMIT $2
"""
SELECT_DIRECTORY_TOTAL = "SELECT count(*) FROM room_directory"

SELECT_TXN = """
SELECT room_id, room_version, event_id, pdu FROM perform_txns WHERE sender = $1 AND txn_id = $2
"""
INSERT_TXN = """
INSERT INTO perform_txns (sender, txn_id, room_id, room_version, event_id, pdu)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sender, txn_id) DO NOTHING RETURNING event_id
"""
DELETE_TXN = "DELETE FROM perform_txns WHERE sender = $1 AND txn_id = $2 AND event_id = $3"

FORGET = """
INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2)
ON CONFLICT (user_id, room_id) DO NOTHING
"""
# Joining again brings a forgotten room back.
UNFORGET = "DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2"
SELECT_FORGOTTEN = "SELECT 1 FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2"


class PgPerformStore:
    """The Perform API's rows in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    # -- aliases --

    async def alias(self, alias: str) -> tuple[str, str] | None:
        """(room ID, creator) of an alias, or None."""
        row = await self._pool.fetchrow(SELECT_ALIAS, alias)
        return None if row is None else (row["room_id"], row["creator"])

    async def aliases_for_room(self, room_id: str) -> list[str]:
        return [r["alias"] for r in await self._pool.fetch(SELECT_ROOM_ALIASES, room_id)]

    async def add_alias(self, alias: str, room_id: str, creator: str) -> bool:
        """False when the alias exists already (whatever room it names)."""
        return await self._pool.fetchval(INSERT_ALIAS, alias, room_id, creator) is not None

    async def remove_alias(self, alias: str) -> bool:
        return await self._pool.fetchval(DELETE_ALIAS, alias) is not None

    async def move_aliases(self, old_room_id: str, new_room_id: str) -> list[str]:
        rows = await self._pool.fetch(MOVE_ALIASES, old_room_id, new_room_id)
        return sorted(r["alias"] for r in rows)

    # -- the directory --

    async def set_published(self, room_id: str, published: bool) -> None:
        await self._pool.execute(PUBLISH if published else UNPUBLISH, room_id)

    async def is_published(self, room_id: str) -> bool:
        return await self._pool.fetchval(SELECT_PUBLISHED, room_id) is not None

    async def published_page(self, after: int, limit: int) -> tuple[list[str], int, int]:
        """(room IDs, the last seq of the page or 0 when it is the last, total)."""
        rows = await self._pool.fetch(SELECT_DIRECTORY_PAGE, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        total = rows[0]["total"] if rows else await self._pool.fetchval(SELECT_DIRECTORY_TOTAL)
        last = rows[-1]["seq"] if rows and more else 0
        return [r["room_id"] for r in rows], last, int(total)

    # -- transaction IDs --

    async def txn(self, sender: str, txn_id: str) -> TxnRecord | None:
        row = await self._pool.fetchrow(SELECT_TXN, sender, txn_id)
        if row is None:
            return None
        return TxnRecord(
            room_id=row["room_id"],
            room_version=row["room_version"],
            event_id=row["event_id"],
            pdu=bytes(row["pdu"]),
        )

    async def add_txn(self, sender: str, txn_id: str, record: TxnRecord) -> bool:
        """False when the (sender, txn_id) has an event already."""
        inserted = await self._pool.fetchval(
            INSERT_TXN, sender, txn_id, record.room_id, record.room_version, record.event_id,
            record.pdu,
        )
        return inserted is not None

    async def drop_txn(self, sender: str, txn_id: str, event_id: str) -> None:
        await self._pool.execute(DELETE_TXN, sender, txn_id, event_id)

    # -- forgotten rooms --

    async def set_forgotten(self, user_id: str, room_id: str, forgotten: bool) -> None:
        await self._pool.execute(FORGET if forgotten else UNFORGET, user_id, room_id)

    async def is_forgotten(self, user_id: str, room_id: str) -> bool:
        return await self._pool.fetchval(SELECT_FORGOTTEN, user_id, room_id) is not None


__all__ = ["PgPerformStore"]
