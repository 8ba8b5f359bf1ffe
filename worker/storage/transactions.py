"""Transactions and locks: how every statement of the store reaches PostgreSQL.

`Database.txn` runs a function in one transaction, holding the advisory locks of the rooms it
writes from its first statement, retries deadlocks and serialization failures, and reports an
unreachable database as retryable (STYLE R5, R8). `Database.read` runs a function on a pooled
connection outside any explicit transaction. A room's lock key is `room_lock_key(room_id)`:
every writer of a room takes it, so even a stale owner of a room's shard cannot interleave
its writes with the live owner's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, cast

import asyncpg

from worker.errors import RetryableError
from worker.observability.metrics import DB_TRANSACTION_DURATION, DB_TRANSACTION_RETRIES
from worker.storage.errors import is_database_down

T = TypeVar("T")

_RETRIES = 5


@functools.lru_cache(maxsize=65536)
def room_lock_key(room_id: str) -> int:
    """The advisory lock key of a room: 64 bits of a hash of its ID (asked for several
    times per write, hence remembered for the rooms in use)."""
    d = hashlib.blake2b(room_id.encode(), digest_size=8, person=b"rs-lock").digest()
    return int.from_bytes(d, "big", signed=True)


class Database:
    """The store's connection pool, with its transaction and read disciplines."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def txn(
        self,
        desc: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        locks: Sequence[int] = (),
    ) -> T:
        """Run `fn` in one transaction labelled `desc`, holding the advisory `locks` from its
        start; retry deadlocks and serialization failures; report an unreachable database as
        retryable (STYLE R5, R8)."""
        for attempt in range(_RETRIES):
            start = time.perf_counter()
            try:
                async with self.pool.acquire() as c:
                    conn = cast(asyncpg.Connection, c)
                    if not locks:
                        async with conn.transaction():
                            return await fn(conn)
                    return await locked_txn(conn, locks, fn)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                DB_TRANSACTION_RETRIES.labels(desc).inc()
                if attempt == _RETRIES - 1:
                    raise RetryableError(f"{desc}: kept conflicting", code="db_conflict") from None
            except Exception as e:
                if is_database_down(e):
                    raise RetryableError(f"{desc}: {e!r}", code="database_unavailable") from e
                raise
            finally:
                DB_TRANSACTION_DURATION.labels(desc).observe(time.perf_counter() - start)
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` on a pooled connection; an unreachable database is retryable."""
        try:
            async with self.pool.acquire() as conn:
                return await fn(cast(asyncpg.Connection, conn))
        except Exception as e:
            if is_database_down(e):
                raise RetryableError(f"read: {e!r}", code="database_unavailable") from e
            raise

    async def read_lazily(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`read` for a function that the caches usually answer without a query: the
        connection it is given is taken from the pool at its first query only. Under load the
        pool's connections are all busy now and then, and waiting for one that is then not
        used would cost as much as a read."""
        conn = LazyConnection(self.pool)
        try:
            return await fn(cast(asyncpg.Connection, conn))
        except Exception as e:
            if is_database_down(e):
                raise RetryableError(f"read: {e!r}", code="database_unavailable") from e
            raise
        finally:
            await conn.release()


class LazyConnection:
    """Stands for a pooled connection (its `fetch`, the one query method the lazy reads
    use), taken at the first query and held until `release`. Taken and given back as
    `async with pool.acquire()` does, by the context manager's own protocol."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._taking: asyncpg.pool.PoolAcquireContext[asyncpg.Record] | None = None
        self._conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record] | None = None

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        if self._conn is None:
            taking = self._pool.acquire()
            self._conn = await taking.__aenter__()
            self._taking = taking
        return await self._conn.fetch(query, *args)

    async def release(self) -> None:
        taking, self._taking, self._conn = self._taking, None, None
        if taking is not None:
            await taking.__aexit__(None, None, None)


async def locked_txn(
    conn: asyncpg.Connection, locks: Sequence[int], fn: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """`fn` in a transaction begun together with the advisory `locks`: one round trip for
    all (the simple query protocol takes several statements; the keys are ints), and one
    statement for all the locks, whatever their number (a group commit takes dozens). Taken
    in ascending order (a scan of an array yields its elements in order), as every
    transaction that takes several does, so two cannot deadlock."""
    keys = ",".join(str(int(k)) for k in sorted(set(locks)))
    await conn.execute(
        f"BEGIN; SELECT pg_advisory_xact_lock(k) FROM unnest('{{{keys}}}'::bigint[]) AS k"
    )
    try:
        result = await fn(conn)
    except BaseException:
        # A broken connection cannot roll back; the pool closes it on release anyway.
        with contextlib.suppress(Exception):
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return result


__all__ = ["Database", "LazyConnection", "locked_txn", "room_lock_key"]
