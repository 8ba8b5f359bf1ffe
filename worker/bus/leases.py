"""Shard ownership: one live worker per input shard, balanced, taken over when a worker dies.

The lease is a PostgreSQL session-level advisory lock, held on a connection of its own:

    lock (namespace(prefix, "member"), backend pid)   held by every live worker: the roster
    lock (namespace(prefix, "shard"),  shard number)  held by the shard's owner

Why PostgreSQL advisory locks rather than NATS KV with a TTL:

- **Death is noticed by the server, at once.** A SIGKILLed or crashed process's socket is
  closed by its kernel; PostgreSQL ends the session and frees its locks immediately, so a
  takeover waits for one poll (`interval`), not for a TTL to run out. A hung process or a
  cut network is covered by `idle_session_timeout` (the lease session is polled every
  `interval`; silent for `session_timeout`, the server ends it) and TCP keepalives.
- **The lease lives where the writes go.** A worker that cannot reach PostgreSQL cannot keep
  a lease, and it could not write anyway; a PostgreSQL restart drops every lease and every
  write at the same moment, and the workers re-balance when it is back. A NATS node restart
  does not touch ownership at all (the workers reconnect to another node).
- **No clock in the protocol.** KV leases need renewals racing a TTL measured by another
  machine; a lock is held or not, and `pg_locks` tells every worker who holds what.

Each `interval` a worker reads the roster and the shard owners from `pg_locks` (this read is
also the heartbeat), computes its fair share ceil(K / live workers), then releases one shard
if it has more (gracefully: the shard's in-flight rooms finish first, then the lock is
unlocked) or tries to lock free shards if it has fewer. A worker whose lease session fails
stops all its shards at once (`on_lost`) before the server can hand them to anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from worker.bus.shards import fair_share
from worker.observability.logging import get_logger
from worker.observability.metrics import LEASE_CHANGES, SHARD_TAKEOVER_SECONDS

_log = get_logger(__name__)

ShardCallback = Callable[[int], Awaitable[None]]

_SNAPSHOT = """
SELECT l.classid::bigint AS ns, l.objid::bigint AS key, l.pid
FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid IN ($1::bigint::oid, $2::bigint::oid)
"""
_TRY_LOCK = "SELECT pg_try_advisory_lock($1::int, $2::int)"
_UNLOCK = "SELECT pg_advisory_unlock($1::int, $2::int)"


def new_worker_id() -> str:
    """A worker's name in logs and in the write log: host, pid and a random tail."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def namespace(prefix: str, kind: str) -> int:
    """The first advisory-lock key of a lease kind: 31 bits of a hash of prefix and kind.

    Non-negative, so it reads back unchanged from `pg_locks.classid` (an unsigned oid).
    """
    d = hashlib.blake2b(f"{prefix}/{kind}".encode(), digest_size=4, person=b"rs-lease").digest()
    return int.from_bytes(d, "big") & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    shards: int
    # Poll (and heartbeat) period; a dead worker's shards move within about one period.
    interval: float = 1.0
    # The server ends a lease session silent for this long (a hung or cut-off worker).
    session_timeout: float = 6.0
    # One poll may take this long before the lease session is given up as broken.
    query_timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Who is alive and who owns what, as `pg_locks` says."""

    members: frozenset[int]
    owners: dict[int, int]


class ShardLeases:
    """Holds this worker's shard leases and calls back as shards are gained and given up.

    `on_gain(k)` starts consuming shard k (if it raises, the lease is returned);
    `on_release(k)` stops it gracefully before the lease is returned; `on_lost(k)` stops it
    at once, the lease being already gone.
    """

    def __init__(
        self,
        dsn: str,
        prefix: str,
        worker_id: str,
        settings: LeaseSettings,
        *,
        on_gain: ShardCallback,
        on_release: ShardCallback,
        on_lost: ShardCallback,
    ) -> None:
        self._dsn = dsn
        self.worker_id = worker_id
        self.settings = settings
        self._ns_shard = namespace(prefix, "shard")
        self._ns_member = namespace(prefix, "member")
        self._on_gain = on_gain
        self._on_release = on_release
        self._on_lost = on_lost
        self._conn: asyncpg.Connection | None = None
        self._pid = 0
        self.owned: set[int] = set()
        self.members = 0
        # When this worker first saw each shard without an owner (takeover time).
        self._free_since: dict[int, float] = {}
        self._stopped = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until `stop()`; survives database restarts (reconnects, re-balances)."""
        while not self._stopped.is_set():
            try:
                await self.tick()
            except Exception as exc:
                # Whatever broke (a restart, a dead socket, asyncpg's own confusion when a
                # connection dies mid-query), the leases can no longer be vouched for.
                await self._lose_all(repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.settings.interval)

    def halt(self) -> None:
        """Stop balancing (the loop returns); the leases are kept until `close()`."""
        self._stopped.set()

    async def stop(self) -> None:
        """Give every shard back gracefully and close the lease session."""
        self._stopped.set()
        for shard in sorted(self.owned):
            with contextlib.suppress(Exception):
                await self._release(shard)
        await self._close()

    async def close(self) -> None:
        """Close the lease session: the server frees every lease this worker held.

        Call it only once the shards are no longer consumed (after the consumer drained).
        """
        self._stopped.set()
        self.owned.clear()
        await self._close()

    # --- one round ----------------------------------------------------------------------------

    async def tick(self) -> None:
        conn = await self._connection()
        snap = await self._snapshot(conn)
        mine = {k for k, pid in snap.owners.items() if pid == self._pid}
        for shard in sorted(self.owned - mine):  # never expected: the session holds them
            await self._lost(shard, "lock not held")
        self.members = len(snap.members)
        share = fair_share(self.settings.shards, self.members)
        now = time.monotonic()
        free = [k for k in range(self.settings.shards) if k not in snap.owners]
        for k in free:
            self._free_since.setdefault(k, now)
        for k in list(self._free_since):
            if k not in free:
                del self._free_since[k]
        if len(self.owned) > share:
            # One at a time: the others re-read the roster before the next goes.
            await self._release(max(self.owned))
            return
        # Start at a place that depends on who we are, so workers contend less.
        rank = sorted(snap.members).index(self._pid) if self._pid in snap.members else 0
        start = (rank * share) % max(self.settings.shards, 1)
        for k in sorted(free, key=lambda s: (s - start) % self.settings.shards):
            if len(self.owned) >= share or self._stopped.is_set():
                break
            await self._acquire(conn, k)

    async def _acquire(self, conn: asyncpg.Connection, shard: int) -> None:
        got = await conn.fetchval(_TRY_LOCK, self._ns_shard, shard,
                                  timeout=self.settings.query_timeout)
        if not got:
            return
        try:
            await self._on_gain(shard)
        except Exception as exc:
            _log.error("shard_start_failed", shard=shard, error=repr(exc))
            await conn.fetchval(_UNLOCK, self._ns_shard, shard)
            return
        self.owned.add(shard)
        LEASE_CHANGES.labels("acquired").inc()
        since = self._free_since.pop(shard, None)
        waited = time.monotonic() - since if since is not None else 0.0
        SHARD_TAKEOVER_SECONDS.observe(waited)
        _log.info("lease_acquired", shard=shard, worker=self.worker_id,
                  free_for_seconds=round(waited, 3), owned=sorted(self.owned))

    async def _release(self, shard: int) -> None:
        try:
            await self._on_release(shard)
        finally:
            self.owned.discard(shard)
            if self._conn is not None and not self._conn.is_closed():
                with contextlib.suppress(Exception):
                    await self._conn.fetchval(_UNLOCK, self._ns_shard, shard,
                                              timeout=self.settings.query_timeout)
            LEASE_CHANGES.labels("released").inc()
            _log.info("lease_released", shard=shard, worker=self.worker_id)

    async def _lost(self, shard: int, why: str) -> None:
        self.owned.discard(shard)
        LEASE_CHANGES.labels("lost").inc()
        _log.warning("lease_lost", shard=shard, worker=self.worker_id, reason=why)
        try:
            await self._on_lost(shard)
        except Exception as exc:
            _log.error("shard_stop_failed", shard=shard, error=repr(exc))

    async def _lose_all(self, why: str) -> None:
        if self._conn is not None or self.owned:
            _log.warning("lease_session_failed", error=why, owned=sorted(self.owned))
        for shard in sorted(self.owned):
            await self._lost(shard, why)
        await self._close()

    # --- the lease session --------------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        timeout_ms = str(int(self.settings.session_timeout * 1000))
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=self.settings.query_timeout,
            server_settings={
                "application_name": f"roomserver-lease {self.worker_id}"[:63],
                "idle_session_timeout": timeout_ms,
                "tcp_keepalives_idle": "2",
                "tcp_keepalives_interval": "1",
                "tcp_keepalives_count": "3",
            },
        )
        pid = int(conn.get_server_pid())
        if not await conn.fetchval(_TRY_LOCK, self._ns_member, pid):
            await conn.close()
            raise OSError("could not take the member lock of a fresh session")
        self._conn, self._pid = conn, pid
        return conn

    async def _snapshot(self, conn: asyncpg.Connection) -> Snapshot:
        rows = await conn.fetch(_SNAPSHOT, self._ns_shard, self._ns_member,
                                timeout=self.settings.query_timeout)
        members = frozenset(int(r["pid"]) for r in rows if r["ns"] == self._ns_member)
        owners = {int(r["key"]): int(r["pid"]) for r in rows if r["ns"] == self._ns_shard}
        return Snapshot(members, owners)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:
                conn.terminate()


__all__ = [
    "LeaseSettings",
    "ShardLeases",
    "Snapshot",
    "namespace",
    "new_worker_id",
]
