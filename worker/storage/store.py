"""`PostgresStore`: the pipeline's `RoomStore` over PostgreSQL (DESIGN §2 step 8, §3).

A facade over the store's parts, each in its own module:

- `transactions`: the pool, one transaction per write with its rooms' advisory locks;
- `caches`: every in-process cache, and what a committed write teaches them;
- `handles` and `state_reads`: state handles (`PgState`) and the reads through one;
- `reads`: the coalesced reads of rooms and events;
- `event_write`, `run_write`: the write of one event, and of a run of new events;
- `group_commit`: the writes of several rooms in one transaction;
- `fence`: the check that refuses a write computed from a stale view of its room;
- `batch`: one room's writes held in memory and committed together.

Nothing is written until `persist`/`persist_many`, which turn each state handle they are given
into one new snapshot row at most. Call `forget_room` when a room's ownership moves to this
process, so that state written elsewhere meanwhile is re-read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import asyncpg

from worker.core.events import Event, StateKey
from worker.errors import InvariantViolation
from worker.pipeline.ports import (
    BatchingStore,
    EventWrite,
    RoomInfo,
    RoomStore,
    StateHandle,
    StoreBatch,
    StoredEvent,
)
from worker.storage import batch as held
from worker.storage import handles
from worker.storage import nids as nid_sql
from worker.storage.caches import StoreCaches
from worker.storage.coalesce import Coalescer
from worker.storage.event_write import EventWriter
from worker.storage.fence import RoomView, StaleRoomView, reads_room_row
from worker.storage.group_commit import Commit, GroupCommit
from worker.storage.handles import PgState
from worker.storage.reads import CoalescedReads
from worker.storage.run_write import RunWriter
from worker.storage.state_reads import StateReads
from worker.storage.transactions import Database

T = TypeVar("T")


class PostgresStore:
    """Implements `worker.pipeline.ports.RoomStore` and `BatchingStore`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        layer_cache_entries: int = 2_000_000,
        event_cache_size: int = 20_000,
        id_cache_size: int = 500_000,
        concurrency: int | None = None,
        fence_writes: bool = False,
    ) -> None:
        """`concurrency`: how many group commits, and separately how many shared reads of
        events and of rooms, run at once (default: a fifth of the pool each, at least 2).
        Fewer calls at once make bigger groups, and a group costs the worker and PostgreSQL
        less per room than several small ones; at least 2, so that one slow transaction (a
        big room's join) leaves the others a slot.

        `fence_writes`: refuse a write computed from a view of its room that the database
        no longer holds (`worker.storage.fence`), as a worker sharing rooms with others must;
        `forget_rooms` then drops the cached rows of rooms this store wrote."""
        self.pool = pool
        if concurrency is None:
            concurrency = max(2, pool.get_max_size() // 5)
        self.db = Database(pool)
        self.caches = StoreCaches(
            layer_cache_entries=layer_cache_entries,
            event_cache_size=event_cache_size,
            id_cache_size=id_cache_size,
        )
        self.nids = self.caches.nids
        self.states = StateReads(self.db, self.caches)
        self.reads = CoalescedReads(self.db, self.caches, concurrency=concurrency)
        writer = EventWriter(self.caches, self.states)
        self.group_commit = GroupCommit(
            self.db, self.caches, writer, RunWriter(writer), concurrency=concurrency
        )
        # Names asked for by `ensure_names` meanwhile are created together, one transaction
        # at a time: rooms handled side by side mostly ask for the same new names.
        self._names: Coalescer[tuple[list[str], list[str]], None] = Coalescer(
            self._create_names, concurrency=1, max_batch=256
        )
        self.fence_writes = fence_writes
        # Rooms whose row this process may have cached (fenced stores only).
        self._touched: set[str] = set()
        # Fenced writes refused because the room changed meanwhile.
        self.stale_views = 0

    @property
    def groups_split(self) -> int:
        """Group transactions that failed and were redone room by room."""
        return self.group_commit.groups_split

    async def txn(
        self,
        desc: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        locks: Sequence[int] = (),
    ) -> T:
        """`fn` in one transaction (`worker.storage.transactions.Database.txn`)."""
        return await self.db.txn(desc, fn, locks=locks)

    def forget_room(self, room_id: str) -> None:
        """Drop what is cached about a room's mutable rows (its current state, extremities)."""
        self.caches.forget_room(room_id)

    def forget_rooms(self, which: Callable[[str], bool]) -> int:
        """Forget the cached rows of every room this fenced store wrote for which `which`
        holds (the rooms of a shard this process gains); returns how many were dropped."""
        moved = [r for r in self._touched if which(r)]
        for room_id in moved:
            self.forget_room(room_id)
            self._touched.discard(room_id)
        return len(moved)

    def forget_purged(self, room_id: str) -> None:
        """Forget what a purge of the room (or of its history) deleted: its row, and every
        cached mapping that can name a deleted event NID or snapshot. Purges are rare, so the
        mappings are cleared whole rather than tracked per room."""
        self.forget_room(room_id)
        self.caches.id_nids.clear()
        self.caches.derived.clear()
        self.caches.recent.clear()

    # --- reads -----------------------------------------------------------------------------

    async def room(self, room_id: str) -> RoomInfo | None:
        return await self.reads.room(room_id)

    async def current_state(self, room_id: str) -> PgState | None:
        return await self.reads.current_state(room_id)

    async def extremities(self, room_id: str) -> list[str]:
        return await self.reads.extremities(room_id)

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        return await self.reads.events(event_ids)

    async def events_and_redactions(
        self, event_ids: Sequence[str], target_ids: Sequence[str]
    ) -> tuple[dict[str, StoredEvent], dict[str, list[str]]]:
        """`events(event_ids)` and `pending_redactions(target_ids)` in one round trip,
        shared with the same reads of other rooms made meanwhile."""
        return await self.reads.events_and_redactions(event_ids, target_ids)

    async def pending_redactions(self, target_ids: Sequence[str]) -> dict[str, list[str]]:
        return await self.reads.pending_redactions(target_ids)

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        return await self.reads.state_after(event_ids)

    async def state_from_ids(self, room_id: str, event_ids: Sequence[str]) -> PgState:
        return await self.states.state_from_ids(room_id, event_ids)

    async def lookup(self, state: StateHandle, keys: Sequence[StateKey]) -> dict[StateKey, Event]:
        return await self.states.lookup(state, keys)

    async def materialize(self, state: StateHandle) -> dict[StateKey, str]:
        return await self.states.materialize(state)

    def apply(self, state: StateHandle, entries: Mapping[StateKey, str]) -> PgState:
        return handles.apply(state, entries)

    async def handle_from_map(self, room_id: str, state: Mapping[StateKey, str]) -> PgState:
        return await self.states.handle_from_map(room_id, state)

    async def diff(self, old: StateHandle | None, new: StateHandle) -> tuple[list[str], list[str]]:
        return await self.states.diff(old, new)

    # --- writes ----------------------------------------------------------------------------

    async def persist(self, write: EventWrite) -> None:
        await self.persist_many([write])

    def batch(self, room_id: str) -> StoreBatch:
        """Hold a room's writes in memory and commit them together (`worker.storage.batch`)."""
        return held.StoreBatch(self, room_id)

    async def persist_many(self, writes: Sequence[EventWrite]) -> None:
        """Several writes of one room, in order, in one transaction (DESIGN §2 step 8: a
        transaction may carry several events; an event is never split across two). Each
        write sees the ones before it, exactly as if they had been persisted one by one.

        Writes of other rooms submitted meanwhile may share the transaction (group commit,
        `worker.storage.group_commit`); a room's own writes commit one call after another,
        in order."""
        if not writes:
            return
        room_id = writes[0].room_id
        if any(w.room_id != room_id for w in writes):
            raise InvariantViolation("persist_many: writes of several rooms in one call")
        if not self.fence_writes:
            await self.group_commit.submit(Commit(room_id, writes, None))
            return
        self._touched.add(room_id)
        # Only the first write that derives something from the room row is fenced: the ones
        # after it in the same transaction build on it, under the same lock.
        first = next((w for w in writes if reads_room_row(w)), None)
        fence = None if first is None else await self._view_of(room_id, first)
        try:
            await self.group_commit.submit(Commit(room_id, writes, fence))
        except StaleRoomView:
            self.forget_room(room_id)
            self.stale_views += 1
            raise

    async def _view_of(self, room_id: str, first: EventWrite) -> RoomView:
        # The extremities the pipeline computed from, as it saw them: reading them again here
        # could see a row refreshed since (a gained shard forgets its rooms), and pass a
        # write computed from the stale one.
        current = await self.current_state(room_id)
        extremities = (
            first.extremities_seen
            if first.extremities_seen is not None
            else await self.extremities(room_id)
        )
        return RoomView(
            current.snapshot_nid if current is not None else None, tuple(sorted(extremities))
        )

    async def ensure_names(self, keys: Iterable[StateKey]) -> None:
        """Give every type and state key of `keys` a NID now, if it has none (one round
        trip, none when all are cached). For the state keys a batch's auth checks will
        look up: a key without a NID cannot be in any state, but only the database can say
        a name has none, so looking up a newcomer's membership would cost a read per event;
        a name created early is harmless (names are never removed, and most of these are
        created by the batch's own writes anyway)."""
        types = {k[0] for k in keys}
        skeys = {k[1] for k in keys}
        _, miss_t, miss_k = self.nids.known(types, skeys)
        if not miss_t and not miss_k:
            return
        await self._names.submit((miss_t, miss_k))

    async def _create_names(self, asked: list[tuple[list[str], list[str]]]) -> list[None]:
        """The names of several `ensure_names` in one transaction; those learned since they
        were asked for (by the call before) are not asked again."""
        types = {t for ts, _ in asked for t in ts}
        keys = {k for _, ks in asked for k in ks}
        _, miss_t, miss_k = self.nids.known(types, keys)
        if miss_t or miss_k:
            fresh = await self.db.txn(
                "ensure_names",
                lambda c: nid_sql.get_or_create_txn(c, self.nids, miss_t, miss_k),
            )
            self.nids.learn(fresh[1])
        return [None] * len(asked)


def _conforms(store: PostgresStore) -> RoomStore:
    """Static proof (checked by mypy --strict) that `PostgresStore` implements `RoomStore`."""
    return store


def _batches(store: PostgresStore) -> BatchingStore:
    """Static proof that `PostgresStore` implements `BatchingStore`."""
    return store


__all__ = ["PgState", "PostgresStore"]
