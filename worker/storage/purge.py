"""Purging a room, and a room's older history (DESIGN §3 "Lifecycle").

Both run in one transaction under the room's advisory lock, the lock every write of the room
takes (`room_lock_key`), so the room's inputs wait for the purge and then see the room as it
left it; a crash (or a kill) before the commit leaves the room whole.

`purge_room` deletes every row `purge_sql.ROOM_ROWS` names and commits a `purge_room` output
with it. The room is then unknown: an input for it creates it afresh (a new room NID), its
events can be received again, and their outputs are published again (the relay's
`Nats-Msg-Id` carries the outbox row's sequence number, new for every row).

`purge_history` deletes a room's events from before a point, except those still needed, and
then the state no longer referenced, by mark and sweep within the room:

1. mark the anchors: events after the point and the forward extremities; they keep their
   state (their snapshot), and so does the room's current state;
2. keep every event those snapshots name (state at a kept event must still be nameable) and
   the auth chains of everything kept;
3. the old events kept only by step 2 lose their state before (they become like outliers, as
   Synapse does): their snapshots would otherwise keep all of history's state alive;
4. delete the rest, oldest first, at most `limit` of them;
5. sweep the room's snapshots no live snapshot chain reaches, and the blocks no live root
   lists.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from worker.core import stateblocks as sb
from worker.messages.output import PurgeRoom, encode_output
from worker.observability.logging import get_logger
from worker.observability.metrics import PURGED_BYTES, PURGED_ROWS
from worker.perform.admin import PurgeRefused
from worker.storage import purge_sql as q
from worker.storage.outbox import INSERT_OUTPUTS
from worker.storage.store import PostgresStore
from worker.storage.transactions import room_lock_key

_log = get_logger(__name__)
# Any constant apart from the room lock keys (hashes: a clash only makes a run wait a turn).
_RETENTION_KEY = 0x726574656E74696F  # "retentio"


@dataclass
class Removed:
    """What a purge deleted: rows and their bytes, per table."""

    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)

    def add(self, records: Iterable[Any]) -> None:
        for table, n, size in records:
            self.rows[table] = self.rows.get(table, 0) + int(n)
            self.bytes[table] = self.bytes.get(table, 0) + int(size)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def count(self, op: str) -> None:
        for table, n in self.rows.items():
            PURGED_ROWS.labels(op, table).inc(n)
            PURGED_BYTES.labels(op, table).inc(self.bytes.get(table, 0))


@dataclass
class HistoryPurged:
    """`purge_history`'s answer: what it deleted, and how many old events are left to delete
    (non-zero when `limit` stopped it)."""

    removed: Removed
    remaining: int
    kept_for_state: int


def purge_output_id(room_id: str, room_nid: int) -> str:
    return f"{room_id}:purge_room:{room_nid}"


class PostgresPurger:
    """Purges over the store's pool, forgetting in the store's caches what they deleted
    (implements `worker.perform.admin.Purger`)."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def purge_room(self, room_id: str) -> Removed:
        async def go(conn: asyncpg.Connection) -> Removed:
            room = await conn.fetchrow(q.SELECT_ROOM, room_id)
            if room is None:
                raise PurgeRefused("unknown_room", f"room {room_id} is not known")
            removed = Removed()
            removed.add(await conn.fetch(q.PURGE_ROOM, room["room_nid"], room_id))
            envelope = encode_output(PurgeRoom(room_id=room_id))
            await conn.execute(INSERT_OUTPUTS, room_id,
                               [purge_output_id(room_id, room["room_nid"])], ["purge_room"],
                               [envelope])
            return removed

        try:
            removed = await self._store.txn("purge_room", go, locks=[room_lock_key(room_id)])
        finally:
            self._store.forget_purged(room_id)
        removed.count("room")
        _log.info("room_purged", room_id=room_id, rows=removed.total_rows,
                  bytes=removed.total_bytes)
        return removed

    async def rooms_after(self, after: str, limit: int) -> list[str]:
        """Up to `limit` room IDs after `after`, in order (to visit every room by pages)."""
        rows = await self._store.pool.fetch(q.SELECT_ROOMS_PAGE, after, limit)
        return [r["room_id"] for r in rows]

    @contextlib.asynccontextmanager
    async def retention_turn(self) -> AsyncIterator[bool]:
        """Whether this process may run the retention job now: one worker at a time, by a
        session advisory lock held on a connection of its own for the run."""
        async with self._store.pool.acquire() as conn:
            mine = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RETENTION_KEY))
            try:
                yield mine
            finally:
                if mine:
                    await conn.execute("SELECT pg_advisory_unlock($1)", _RETENTION_KEY)

    async def purge_history(
        self,
        room_id: str,
        *,
        before_ts: int | None = None,
        before_event_id: str | None = None,
        limit: int | None = None,
        op: str = "history",
    ) -> HistoryPurged:
        """Events of `room_id` before `before_event_id` (by depth) or sent before
        `before_ts` (ms since the epoch); exactly one of the two."""
        if (before_ts is None) == (before_event_id is None):
            raise ValueError("give exactly one of before_ts and before_event_id")

        async def go(conn: asyncpg.Connection) -> HistoryPurged:
            return await _purge_history_txn(conn, room_id, before_ts, before_event_id, limit)

        try:
            done = await self._store.txn("purge_history", go, locks=[room_lock_key(room_id)])
        finally:
            self._store.forget_purged(room_id)
        done.removed.count(op)
        _log.info("history_purged", room_id=room_id, rows=done.removed.total_rows,
                  bytes=done.removed.total_bytes, remaining=done.remaining,
                  kept_for_state=done.kept_for_state)
        return done


@dataclass(frozen=True, slots=True)
class _Ev:
    event_id: str
    auth: tuple[int, ...]
    before: int | None
    old: bool
    depth: int


async def _purge_history_txn(
    conn: asyncpg.Connection,
    room_id: str,
    before_ts: int | None,
    before_event_id: str | None,
    limit: int | None,
) -> HistoryPurged:
    room = await conn.fetchrow(q.SELECT_ROOM, room_id)
    if room is None:
        raise PurgeRefused("unknown_room", f"room {room_id} is not known")
    room_nid: int = room["room_nid"]
    cut_depth = None
    if before_event_id is not None:
        cut_depth = await conn.fetchval(q.SELECT_EVENT_DEPTH, before_event_id, room_nid)
        if cut_depth is None:
            raise PurgeRefused("unknown_event", f"event {before_event_id} is not in {room_id}")
    events = {
        r["event_nid"]: _Ev(r["event_id"], tuple(r["auth_event_nids"]),
                            r["before_snapshot_nid"], bool(r["old"]), r["depth"])
        for r in await conn.fetch(q.SELECT_ROOM_EVENTS, room_nid, cut_depth, before_ts)
    }
    by_id = {e.event_id: nid for nid, e in events.items()}
    anchors = {nid for nid, e in events.items() if not e.old}
    anchors.update(by_id[x] for x in room["extremities"] if x in by_id)
    old = [nid for nid, e in events.items() if e.old and nid not in anchors]
    if not old:
        return HistoryPurged(Removed(), 0, 0)

    snapshots = {r["snapshot_nid"]: r for r in await conn.fetch(q.SELECT_SNAPSHOTS, room_nid)}
    current = room["current_snapshot_nid"] or 0
    live = _reach([current, *(events[n].before or 0 for n in anchors)], snapshots)
    named = await _named_events_txn(conn, room_nid, live, snapshots)
    keep = _auth_closure(anchors | (named & events.keys()), events)
    doomed = sorted((n for n in old if n not in keep), key=lambda n: (events[n].depth, n))
    remaining = 0
    if limit is not None and len(doomed) > limit:
        remaining = len(doomed) - limit
        doomed = doomed[:limit]
    demoted = [n for n in keep - anchors if events[n].before is not None]
    removed = Removed()
    if demoted:
        await conn.execute(q.FORGET_STATE_BEFORE, demoted)
    if doomed:
        removed.add(await conn.fetch(q.PURGE_EVENTS, doomed,
                                     [events[n].event_id for n in doomed]))
    # What is still referenced: the current state, and the state before every event left
    # with one (the anchors, and old events a `limit` left for a later run).
    gone = set(doomed) | set(demoted)
    still = _reach([current, *(e.before or 0 for n, e in events.items() if n not in gone)],
                   snapshots)
    dead_snapshots = [n for n in snapshots if n not in still]
    live_blocks = {b for n in still for b in (snapshots[n]["block_nids"] or ())}
    all_blocks = [r["block_nid"] for r in await conn.fetch(q.SELECT_BLOCK_NIDS, room_nid)]
    dead_blocks = [b for b in all_blocks if b not in live_blocks]
    if dead_snapshots or dead_blocks:
        removed.add(await conn.fetch(q.SWEEP, room_nid, dead_snapshots, dead_blocks))
    return HistoryPurged(removed, remaining, len(keep - anchors))


def _reach(tops: Iterable[int], snapshots: Mapping[int, Any]) -> set[int]:
    """The snapshots on the chains of `tops` (each down to its root)."""
    seen: set[int] = set()
    for top in tops:
        nid = top
        while nid and nid not in seen:
            seen.add(nid)
            row = snapshots.get(nid)
            nid = row["parent_nid"] if row is not None else 0
    return seen


async def _named_events_txn(
    conn: asyncpg.Connection, room_nid: int, live: set[int], snapshots: Mapping[int, Any]
) -> set[int]:
    """Event NIDs the live snapshots name: the layers' deltas and the roots' blocks."""
    named: set[int] = set()
    blocks: set[int] = set()
    for nid in live:
        row = snapshots.get(nid)
        if row is None:
            continue
        if row["block_nids"] is not None:
            blocks.update(row["block_nids"])
        else:
            named.update(sb.unpack(row["delta"]).values())
    for r in await conn.fetch(q.SELECT_BLOCKS, room_nid, sorted(blocks)):
        named.update(sb.unpack(r["entries"]).values())
    named.discard(0)
    return named


def _auth_closure(start: set[int], events: Mapping[int, _Ev]) -> set[int]:
    """`start` and the auth chains of its events (within the room's stored events)."""
    keep = set(start)
    todo = list(start)
    while todo:
        e = events.get(todo.pop())
        if e is None:
            continue
        for a in e.auth:
            if a not in keep and a in events:
                keep.add(a)
                todo.append(a)
    return keep


__all__ = ["HistoryPurged", "PostgresPurger", "PurgeRefused", "Removed", "purge_output_id"]
