"""Shard arithmetic, and the store guard that makes a moved room safe (DESIGN §5).

- `shard_of(room_id, shards)`: the shard NATS puts a room in. The input stream's subject
  transform `{{partition(K,1)}}` hashes the room token with 32-bit FNV-1a, modulo K
  (nats-server `subject_transform.go`); computed here so a worker that gains a shard knows
  which of its cached rooms moved to it.
- `fair_share(shards, workers)`: ceil(K / live workers), what each worker aims to own.
- `ShardAwareStore`: `PostgresStore` plus a fence on its one write. The pipeline computes a
  new event's extremities and current state from the room row the store cached; a worker that
  owned the room before, lost it and got it back holds a stale row, and so does a stale owner
  still finishing an event. Under the room's advisory lock the write first compares the row
  in the database with the one the computation started from; a difference raises a
  `RetryableError` (code `stale_room_view`) after forgetting the cached row, and the consumer
  retries the event in place with a fresh view (usually finding it already done). The
  advisory lock alone only serialises writers; this comparison is what makes a stale writer
  harmless.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence

import asyncpg

from worker.bus.subjects import room_token
from worker.core.outcomes import Outcome
from worker.errors import RetryableError
from worker.pipeline.ports import EventWrite
from worker.storage.errors import is_database_down
from worker.storage.events import RoomRow
from worker.storage.store import PostgresStore

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193

# The room row as the pipeline saw it: (current snapshot NID or None, sorted extremities).
_View = tuple[int | None, tuple[str, ...]]
# Set by `ShardAwareStore.persist` for the duration of its transaction.
_EXPECTED: contextvars.ContextVar[tuple[str, _View] | None] = contextvars.ContextVar(
    "roomserver_expected_room_view", default=None
)

def fnv1a_32(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def shard_of(room_id: str, shards: int) -> int:
    """The input shard of a room, as the stream's `partition(shards,1)` transform picks it."""
    return fnv1a_32(room_token(room_id).encode()) % shards


def fair_share(shards: int, workers: int) -> int:
    """How many shards each of `workers` live workers should own: ceil(shards / workers)."""
    return -(-shards // max(workers, 1))


class StaleRoomView(RetryableError):
    """The room changed in the database since this worker read it: recompute and retry."""

    code = "stale_room_view"


def _reads_room_row(w: EventWrite) -> bool:
    """Whether the write was computed from the room's row: new extremities or current
    state, or a soft-fail (decided against the current state)."""
    return (
        w.extremities is not None
        or w.current_state is not None
        or w.outcome is Outcome.SOFT_FAILED
    )


class ShardAwareStore(PostgresStore):
    """`PostgresStore` whose event writes are fenced against a stale view of the room."""

    def __init__(self, pool: asyncpg.Pool, *, shards: int, **kwargs: int) -> None:
        super().__init__(pool, **kwargs)
        self.shards = shards
        # Rooms whose row this process may have cached, so a gained shard can forget them.
        self._touched: set[str] = set()
        self.stale_views = 0

    def forget_shard(self, shard: int) -> int:
        """Forget the cached rows of every room of `shard`; returns how many were dropped."""
        moved = [r for r in self._touched if shard_of(r, self.shards) == shard]
        for room_id in moved:
            self.forget_room(room_id)
            self._touched.discard(room_id)
        return len(moved)

    async def persist_many(self, writes: Sequence[EventWrite]) -> None:
        if not writes:
            return
        room_id = writes[0].room_id
        self._touched.add(room_id)
        # Only the first write that derives something from the room row is fenced: the ones
        # after it in the same transaction build on it, under the same lock.
        first = next((w for w in writes if _reads_room_row(w)), None)
        if first is None:
            # Outliers, old events and refusals do not derive anything from the room row.
            await super().persist_many(writes)
            return
        # The extremities the pipeline computed from, as it saw them: reading them again here
        # could see a row refreshed since (a gained shard forgets its rooms), and pass a
        # write computed from the stale one.
        current = await self.current_state(room_id)
        extremities = (
            first.extremities_seen
            if first.extremities_seen is not None
            else await self.extremities(room_id)
        )
        view: _View = (
            current.snapshot_nid if current is not None else None,
            tuple(sorted(extremities)),
        )
        token = _EXPECTED.set((room_id, view))
        try:
            await super().persist_many(writes)
        except StaleRoomView:
            self.forget_room(room_id)
            self.stale_views += 1
            raise
        finally:
            _EXPECTED.reset(token)

    def check_room_row(self, room: RoomRow) -> None:
        # Read by the write's own first statement (UPSERT_ROOM) under the room's lock, so
        # the comparison and the write see the room as one; no extra round trip.
        expected = _EXPECTED.get()
        if expected is None or expected[0] != room.room_id:
            return
        have: _View = (room.current_snapshot_nid, tuple(sorted(room.extremities)))
        if have != expected[1]:
            raise StaleRoomView(
                f"room {room.room_id} changed since it was read (another worker wrote it)",
                delay=0.05,
            )


__all__ = [
    "ShardAwareStore",
    "StaleRoomView",
    "fair_share",
    "fnv1a_32",
    "is_database_down",
    "shard_of",
]
