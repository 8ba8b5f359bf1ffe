"""`PostgresStore`: the `RoomStore` port over PostgreSQL (DESIGN §2 step 8, §3).

A state handle (`PgState`) is (room, snapshot NID, pending delta of string entries): `apply`
only copies the small delta, `lookup` reads the few keys asked for from the snapshot's layers,
and nothing is written until `persist`, which turns each handle it is given into one new
snapshot row at most (`worker.core.stateblocks.plan_snapshot`).

Every write runs through `txn(desc, fn)` under the room's advisory lock, so even a stale owner
of a room's shard cannot interleave with the live one. Caches: NIDs, snapshot layers and event
ID <-> NID mappings are immutable once committed; a room's current snapshot and extremities
are refreshed by `persist` itself, the one writer (call `forget_room` when a room's ownership
moves to this process, so state written elsewhere meanwhile is re-read).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import time
from collections import ChainMap, deque
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping, Sequence
from contextvars import Context, copy_context
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import asyncpg

from worker.core import stateblocks as sb
from worker.core.canonical import encode_canonical
from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome
from worker.core.redaction import redact
from worker.core.versions import rules_for
from worker.errors import InvariantViolation, RetryableError
from worker.observability.logging import get_logger
from worker.observability.metrics import DB_TRANSACTION_DURATION, DB_TRANSACTION_RETRIES
from worker.pipeline.ports import (
    BatchingStore,
    EventWrite,
    OutputRecord,
    RoomInfo,
    RoomStore,
    StateHandle,
    StoreBatch,
    StoredEvent,
)
from worker.storage import bulk as bulk_sql
from worker.storage import events as ev_sql
from worker.storage import nids as nid_sql
from worker.storage import snapshots as snap_sql
from worker.storage.cache import Lru
from worker.storage.coalesce import Coalescer
from worker.storage.errors import is_database_down

T = TypeVar("T")
_log = get_logger(__name__)

_RETRIES = 5
# Rooms whose writes one group commit carries at most (bounds how long it holds their locks).
_GROUP_ROOMS = 64
_RECENT_MATERIALIZED = 8


@dataclass(frozen=True, slots=True, eq=False)
class PgState:
    """The store's `StateHandle`: snapshot `snapshot_nid` (0 = empty) plus `delta`.

    In `delta` an empty event ID removes the key (a resolution may drop entries).
    """

    room_id: str
    snapshot_nid: int
    delta: Mapping[StateKey, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=65536)
def room_lock_key(room_id: str) -> int:
    """The advisory lock key of a room: 64 bits of a hash of its ID (asked for several
    times per write, hence remembered for the rooms in use)."""
    d = hashlib.blake2b(room_id.encode(), digest_size=8, person=b"rs-lock").digest()
    return int.from_bytes(d, "big", signed=True)


def _own(state: StateHandle) -> PgState:
    if not isinstance(state, PgState):
        raise InvariantViolation(f"state handle {state!r} was not made by PostgresStore")
    return state


@dataclass
class _Effects:
    """What a committed transaction lets the caches learn."""

    nids: nid_sql.Nids = field(default_factory=nid_sql.Nids)
    layers: dict[int, sb.Layer] = field(default_factory=dict)
    id_nids: dict[str, int] = field(default_factory=dict)
    room: ev_sql.RoomRow | None = None
    stale_events: set[str] = field(default_factory=set)
    derived: dict[tuple[int, frozenset[tuple[sb.NidKey, int]]], int] = field(default_factory=dict)
    after: dict[str, PgState] = field(default_factory=dict)
    # Handles stored as snapshots by this transaction, newest last (see `_rebase_on_stored`).
    stored: list[tuple[PgState, int]] = field(default_factory=list)
    # Events this transaction inserted (not upserted): stored exactly as given.
    inserted: dict[str, Event] = field(default_factory=dict)
    # Events whose stored JSON this transaction redacted.
    redacted: set[str] = field(default_factory=set)
    # Group commits (`_group_bulk_txn`) write their new state layers together at the end,
    # under snapshot NIDs reserved up front: the NIDs left, and the rows held. None: each
    # snapshot is written when planned.
    layer_nids: list[int] = field(default_factory=list)
    held_layers: list[snap_sql.LayerRow] | None = None


@dataclass(frozen=True, slots=True, eq=False)
class _Commit:
    """One `persist_many` call waiting for a group commit."""

    room_id: str
    writes: Sequence[EventWrite]
    context: Context


# `events_and_redactions`: (event IDs, redaction target IDs) and its answer.
_EventsRead = tuple[Sequence[str], Sequence[str]]
_EventsAnswer = tuple[dict[str, StoredEvent], dict[str, list[str]]]


def _group_of(
    store: PostgresStore, commit: _Commit
) -> Callable[[asyncpg.Connection], Awaitable[list[_Effects]]]:
    return lambda conn: store._group_txn(conn, [commit])


class PostgresStore:
    """Implements `worker.pipeline.ports.RoomStore`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        layer_cache_entries: int = 2_000_000,
        event_cache_size: int = 20_000,
        id_cache_size: int = 500_000,
        concurrency: int | None = None,
    ) -> None:
        """`concurrency`: how many group commits, and separately how many shared reads of
        events and of rooms, run at once (default: a fifth of the pool each, at least 2).
        Fewer calls at once make bigger groups, and a group costs the worker and PostgreSQL
        less per room than several small ones: with the default pool of 10, 2 rather than 3
        gave the many-rooms bench ~8% more events/s and PostgreSQL ~10% less CPU per event.
        At least 2, so that one slow transaction (a big room's join) leaves the others a
        slot."""
        self.pool = pool
        if concurrency is None:
            concurrency = max(2, pool.get_max_size() // 5)
        # Concurrent writes of many rooms share transactions, and their first reads share
        # queries (`worker.storage.coalesce`).
        self._commits: Coalescer[_Commit, None] = Coalescer(
            self._commit_group, concurrency=concurrency, max_batch=_GROUP_ROOMS
        )
        self._room_reads: Coalescer[str, ev_sql.RoomRow | None] = Coalescer(
            self._rooms_read_group, concurrency=concurrency, max_batch=256
        )
        # Group transactions that failed and were redone room by room (`_commit_group`).
        self.groups_split = 0
        self._shared_reads: Coalescer[_EventsRead, _EventsAnswer] = Coalescer(
            self._events_read_group, concurrency=concurrency, max_batch=64
        )
        self.nids = nid_sql.NidCache()
        self._layers: Lru[int, sb.Layer] = Lru(
            layer_cache_entries, lambda layer: len(layer.entries) + 1
        )
        self._roots: Lru[int, bool] = Lru(1024)
        self._rooms: dict[str, ev_sql.RoomRow] = {}
        self._events: Lru[str, Event] = Lru(event_cache_size)
        self._nid_ids: Lru[int, str] = Lru(id_cache_size)
        self._id_nids: Lru[str, int] = Lru(id_cache_size)
        # (base snapshot, NID delta) -> the snapshot already stored for it: the state after an
        # event is written as the room's current state, then read back as the next event's
        # state before; this skips the second (deduplicated) insert.
        self._derived: Lru[tuple[int, frozenset[tuple[sb.NidKey, int]]], int] = Lru(4096)
        self._recent: deque[tuple[PgState, dict[StateKey, str]]] = deque(
            maxlen=_RECENT_MATERIALIZED
        )
        # The state after events this process wrote (with state), for `state_after`: the
        # next event's prev is nearly always the event written just before, which would
        # otherwise be read back right after it was written.
        self._after: Lru[str, PgState] = Lru(event_cache_size)

    # --- transactions --------------------------------------------------------------------

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
                    return await _locked_txn(conn, locks, fn)
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

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            async with self.pool.acquire() as conn:
                return await fn(cast(asyncpg.Connection, conn))
        except Exception as e:
            if is_database_down(e):
                raise RetryableError(f"read: {e!r}", code="database_unavailable") from e
            raise

    def forget_room(self, room_id: str) -> None:
        """Drop what is cached about a room's mutable rows (its current state, extremities)."""
        self._rooms.pop(room_id, None)
        # Another writer may have rewritten events of the room meanwhile; this is rare (a
        # lease change), so forgetting every room's entries keeps it simple.
        self._after.clear()

    def forget_purged(self, room_id: str) -> None:
        """Forget what a purge of the room (or of its history) deleted: its row, and every
        cached mapping that can name a deleted event NID or snapshot. Purges are rare, so the
        mappings are cleared whole rather than tracked per room."""
        self.forget_room(room_id)
        self._id_nids.clear()
        self._derived.clear()
        self._recent.clear()

    # --- rooms ---------------------------------------------------------------------------

    async def _room_row(self, room_id: str) -> ev_sql.RoomRow | None:
        """The room's row: cached, else read together with the other rooms asked for
        meanwhile (rooms being created are asked for by every step until they exist)."""
        row = self._rooms.get(room_id)
        if row is None:
            row = await self._room_reads.submit(room_id)
        return row

    async def _rooms_read_group(self, room_ids: list[str]) -> list[ev_sql.RoomRow | None]:
        wanted = sorted(set(room_ids))
        rows = await self._read(lambda c: c.fetch(ev_sql.SELECT_ROOMS, wanted))
        for r in rows:
            row = ev_sql.room_row(r)
            # A room's reads and writes come from its one task in turn: nothing newer can
            # have been cached meanwhile, but if it were, it would win.
            self._rooms.setdefault(row.room_id, row)
        return [self._rooms.get(room_id) for room_id in room_ids]

    async def room(self, room_id: str) -> RoomInfo | None:
        row = await self._room_row(room_id)
        return RoomInfo(row.room_id, row.version) if row else None

    async def current_state(self, room_id: str) -> PgState | None:
        row = await self._room_row(room_id)
        if row is None or row.current_snapshot_nid is None:
            return None
        return PgState(room_id, row.current_snapshot_nid)

    async def extremities(self, room_id: str) -> list[str]:
        row = await self._room_row(room_id)
        return list(row.extremities) if row else []

    # --- events --------------------------------------------------------------------------

    async def _stored(
        self, conn: asyncpg.Connection, event_ids: Sequence[str]
    ) -> dict[str, tuple[StoredEvent, int | None]]:
        """(stored event, snapshot before it) per known ID; one query."""
        if not event_ids:
            return {}
        rows = await conn.fetch(ev_sql.SELECT_EVENTS_BY_ID, sorted(set(event_ids)))
        out: dict[str, tuple[StoredEvent, int | None]] = {}
        for r in rows:
            out[r["event_id"]] = (self._stored_row(r), r["before_snapshot_nid"])
        return out

    def _stored_row(
        self, r: asyncpg.Record, held: Mapping[str, Event] | None = None
    ) -> StoredEvent:
        # An event's JSON changes only when it is redacted: unless the row says so, the
        # cached event is what decoding the JSON would give (and costs no decoding). `held`:
        # the events the read said it had, for which an unredacted row carries no JSON.
        event = None
        if r["redacted_by"] is None:
            event = held.get(r["event_id"]) if held else None
            if event is None:
                event = self._events.get(r["event_id"])
        if event is None:
            event = ev_sql.decode_event(r["event_id"], r["json"], r["room_version"])
        self._nid_ids.put(r["event_nid"], r["event_id"])
        self._id_nids.put(r["event_id"], r["event_nid"])
        return StoredEvent(
            event=event,
            outcome=ev_sql.OUTCOME_NAMES[r["outcome"]],
            reason_code=r["reason_code"],
            reason=r["reason"],
            kind=ev_sql.KIND_NAMES[r["kind"]],
            has_state=r["before_snapshot_nid"] is not None,
            redacted=r["redacted_by"] is not None,
        )

    async def events_and_redactions(
        self, event_ids: Sequence[str], target_ids: Sequence[str]
    ) -> tuple[dict[str, StoredEvent], dict[str, list[str]]]:
        """`events(event_ids)` and `pending_redactions(target_ids)` in one round trip,
        shared with the same reads of other rooms made meanwhile."""
        return await self._shared_reads.submit((event_ids, target_ids))

    async def _events_read_group(self, reads: list[_EventsRead]) -> list[_EventsAnswer]:
        # One query for every read: the answer to each is its part of the whole.
        all_ids = sorted({i for ids, _ in reads for i in ids})
        all_targets = sorted({t for _, targets in reads for t in targets})
        # The events this process holds are not sent again (their JSON is most of a row);
        # held here, so that the cache evicting one meanwhile does not matter.
        held = {i: ev for i in all_ids if (ev := self._events.get(i)) is not None}

        async def go(conn: asyncpg.Connection) -> list[_EventsAnswer]:
            rows = await conn.fetch(
                ev_sql.SELECT_EVENTS_AND_PENDING_REDACTIONS,
                all_ids,
                all_targets,
                [i in held for i in all_ids],
            )
            events: dict[str, StoredEvent] = {}
            pending: dict[str, list[str]] = {}
            for r in rows:
                if r["redaction_event_id"] is not None:
                    pending.setdefault(r["event_id"], []).append(r["redaction_event_id"])
                else:
                    events[r["event_id"]] = self._stored_row(r, held)
            for redactions in pending.values():
                redactions.sort()
            if len(reads) == 1:
                return [(events, pending)]
            return [
                (
                    {i: events[i] for i in ids if i in events},
                    {t: list(pending[t]) for t in targets if t in pending},
                )
                for ids, targets in reads
            ]

        return await self._read(go)

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        found = await self._read(lambda c: self._stored(c, event_ids))
        return {k: v[0] for k, v in found.items()}

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        out: dict[str, StateHandle] = {}
        missing: list[str] = []
        for eid in event_ids:
            known = self._after.get(eid)
            if known is None:
                missing.append(eid)
            else:
                out[eid] = known
        if not missing:
            return out
        found = await self._read(lambda c: self._stored(c, missing))
        for eid, (stored, before) in found.items():
            if before is None:
                continue
            e = stored.event
            key = e.state_tuple
            delta = {key: eid} if key and stored.outcome is Outcome.ACCEPTED else {}
            out[eid] = PgState(e.room_id, before, delta)
        return out

    async def state_from_ids(self, room_id: str, event_ids: Sequence[str]) -> PgState:
        rows = await self._read(
            lambda c: c.fetch(ev_sql.SELECT_STATE_KEYS_BY_ID, sorted(set(event_ids)))
        )
        keys: dict[str, StateKey | None] = {
            r["event_id"]: (r["event_type"], r["state_key"]) if r["state_key"] is not None else None
            for r in rows
        }
        state: dict[StateKey, str] = {}
        for eid in event_ids:
            if eid not in keys:
                raise InvariantViolation(f"state event {eid} is not stored")
            key = keys[eid]
            if key is not None:
                state.setdefault(key, eid)
        return await self.handle_from_map(room_id, state)

    async def pending_redactions(self, target_ids: Sequence[str]) -> dict[str, list[str]]:
        if not target_ids:
            return {}
        rows = await self._read(
            lambda c: c.fetch(ev_sql.SELECT_PENDING_REDACTIONS, sorted(set(target_ids)))
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r["target_event_id"], []).append(r["redaction_event_id"])
        return out

    # --- state reads ---------------------------------------------------------------------

    async def _chain(
        self,
        conn: asyncpg.Connection,
        top: int,
        pending: Mapping[int, sb.Layer] | None = None,
    ) -> sb.Chain:
        if not top:
            return ()
        get = _getter(pending or {}, self._layers)
        try:
            return sb.chain_via(top, get)
        except KeyError:
            pass
        # Hold the cached roots the walk may stop at: the cache can evict them meanwhile.
        known: dict[int, sb.Layer] = {}
        for nid in self._roots.key_list():
            root = self._layers.peek(nid)
            if root is not None:
                known[nid] = root
        loaded = await snap_sql.load_layers(conn, [top], known)
        for nid, layer in loaded.items():
            self._layers.put(nid, layer)
            if layer.is_root:
                self._roots.put(nid, True)

        def get_loaded(nid: int) -> sb.Layer | None:
            layer = loaded.get(nid) or known.get(nid)
            return layer if layer is not None else get(nid)

        return sb.chain_via(top, get_loaded)

    async def _ids_of(self, conn: asyncpg.Connection, nids: Iterable[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        missing: list[int] = []
        for n in nids:
            eid = self._nid_ids.get(n)
            if eid is None:
                missing.append(n)
            else:
                out[n] = eid
        if missing:
            fetched = await ev_sql.event_ids(conn, missing)
            for n, eid in fetched.items():
                self._nid_ids.put(n, eid)
                self._id_nids.put(eid, n)
            out.update(fetched)
        return out

    async def _lookup_ids(
        self, conn: asyncpg.Connection, h: PgState, keys: Iterable[StateKey]
    ) -> dict[StateKey, str]:
        """Event IDs at `keys` of a state, reading only those keys."""
        out: dict[StateKey, str] = {}
        rest: list[StateKey] = []
        for k in keys:
            if k in h.delta:
                if h.delta[k]:
                    out[k] = h.delta[k]
            else:
                rest.append(k)
        if not rest or not h.snapshot_nid:
            return out
        nids = await nid_sql.select_nids(
            conn, self.nids, {k[0] for k in rest}, {k[1] for k in rest}
        )
        chain = await self._chain(conn, h.snapshot_nid)
        found: dict[StateKey, int] = {}
        for k in rest:
            t = nids.types.get(k[0])
            s = nids.keys.get(k[1])
            if t is None or s is None:
                continue
            ev = sb.value_at(chain, (t, s))
            if ev:
                found[k] = ev
        names = await self._ids_of(conn, found.values())
        for k, ev in found.items():
            out[k] = names[ev]
        return out

    async def _events_by_id(self, conn: asyncpg.Connection, ids: Iterable[str]) -> dict[str, Event]:
        out: dict[str, Event] = {}
        missing: list[str] = []
        for eid in ids:
            e = self._events.get(eid)
            if e is None:
                missing.append(eid)
            else:
                out[eid] = e
        if missing:
            for eid, (stored, _) in (await self._stored(conn, missing)).items():
                self._events.put(eid, stored.event)
                out[eid] = stored.event
        return out

    async def lookup(self, state: StateHandle, keys: Sequence[StateKey]) -> dict[StateKey, Event]:
        h = _own(state)
        cached = self._lookup_cached(h, keys)
        if cached is not None:
            return cached

        async def go(conn: asyncpg.Connection) -> dict[StateKey, Event]:
            ids = await self._lookup_ids(conn, h, keys)
            events = await self._events_by_id(conn, ids.values())
            return {k: events[eid] for k, eid in ids.items() if eid in events}

        return await self._read(go)

    def _lookup_cached(self, h: PgState, keys: Sequence[StateKey]) -> dict[StateKey, Event] | None:
        """`lookup` from the caches alone, or None if anything it needs is not cached (a
        name without a cached NID may still have one: only the database can say it has
        not). The common case in a busy room: the auth events of the next event are the
        room's hot state, read or written moments ago."""
        ids: dict[StateKey, str] = {}
        rest: list[StateKey] = []
        for k in keys:
            if k in h.delta:
                if h.delta[k]:
                    ids[k] = h.delta[k]
            else:
                rest.append(k)
        if rest and h.snapshot_nid:
            types, skeys = self.nids.types, self.nids.keys
            try:
                chain = sb.chain_via(h.snapshot_nid, self._layers.peek)
            except KeyError:
                return None
            for k in rest:
                t = types.get(k[0])
                s = skeys.get(k[1])
                if t is None or s is None:
                    return None
                ev = sb.value_at(chain, (t, s))
                if ev:
                    eid = self._nid_ids.peek(ev)
                    if eid is None:
                        return None
                    ids[k] = eid
        out: dict[StateKey, Event] = {}
        for k, eid in ids.items():
            event = self._events.get(eid)
            if event is None:
                return None
            out[k] = event
        return out

    async def _materialize_nids(self, conn: asyncpg.Connection, snapshot_nid: int) -> sb.NidState:
        return sb.materialize(await self._chain(conn, snapshot_nid))

    async def _materialize(self, conn: asyncpg.Connection, h: PgState) -> dict[StateKey, str]:
        for cand, result in self._recent:
            if cand is h:
                return dict(result)
        nstate = await self._materialize_nids(conn, h.snapshot_nid)
        out = await self._name_entries(conn, nstate)
        for k, v in h.delta.items():
            if v:
                out[k] = v
            else:
                out.pop(k, None)
        self._recent.append((h, out))
        return dict(out)

    async def _name_entries(
        self, conn: asyncpg.Connection, nstate: sb.NidState
    ) -> dict[StateKey, str]:
        """A NID state as (type, state_key) -> event ID: from the caches, and one query for
        the entries they cannot name."""
        tn, kn, ids = self.nids.type_names, self.nids.key_names, self._nid_ids
        out: dict[StateKey, str] = {}
        missing: list[int] = []
        for (t, s), e in nstate.items():
            eid = ids.peek(e)
            tname = tn.get(t)
            kname = kn.get(s)
            if eid is None or tname is None or kname is None:
                missing.append(e)
            else:
                out[(tname, kname)] = eid
        if missing:
            # Columns by position: this loop runs once per entry of a whole state.
            rows = await conn.fetch(ev_sql.SELECT_STATE_NAMES, missing)
            out.update({(r[3], r[5]): r[1] for r in rows})
            ids.put_many({r[0]: r[1] for r in rows})
            self.nids.learn(
                nid_sql.Nids(types={r[3]: r[2] for r in rows}, keys={r[5]: r[4] for r in rows})
            )
        return out

    async def materialize(self, state: StateHandle) -> dict[StateKey, str]:
        h = _own(state)
        return await self._read(lambda c: self._materialize(c, h))

    def apply(self, state: StateHandle, entries: Mapping[StateKey, str]) -> PgState:
        h = _own(state)
        if not entries:
            return h
        delta = dict(h.delta)
        delta.update(entries)
        return PgState(h.room_id, h.snapshot_nid, delta)

    async def handle_from_map(self, room_id: str, state: Mapping[StateKey, str]) -> PgState:
        """The state as a delta over the nearest recently materialized state of the room.

        The pipeline materializes the states it resolves, so the parents of a merge are
        among the candidates: a merge is stored as a small delta over one of them.
        """
        best = PgState(room_id, 0, dict(state))
        best_size = len(state)
        for cand, cmap in self._recent:
            if cand.room_id != room_id:
                continue
            changes: dict[StateKey, str] = {k: v for k, v in state.items() if cmap.get(k) != v}
            for k in cmap:
                if k not in state:
                    changes[k] = ""
            if len(changes) < best_size:
                delta = dict(cand.delta)
                delta.update(changes)
                best = PgState(room_id, cand.snapshot_nid, delta)
                best_size = len(changes)
        return best

    async def diff(self, old: StateHandle | None, new: StateHandle) -> tuple[list[str], list[str]]:
        n = _own(new)
        o = _own(old) if old is not None else None

        async def go(conn: asyncpg.Connection) -> tuple[list[str], list[str]]:
            if o is None:
                return sorted(set((await self._materialize(conn, n)).values())), []
            co = await self._chain(conn, o.snapshot_nid)
            cn = await self._chain(conn, n.snapshot_nid)
            if o.snapshot_nid == n.snapshot_nid:
                nid_keys: set[sb.NidKey] | None = set()
            else:
                nid_keys = sb.touched_keys(co, {}, cn, {})
            if nid_keys is None:
                a = await self._materialize(conn, o)
                b = await self._materialize(conn, n)
                keys: set[StateKey] = a.keys() | b.keys()
            else:
                tn, kn = await nid_sql.select_names(
                    conn, self.nids, {k[0] for k in nid_keys}, {k[1] for k in nid_keys}
                )
                keys = {(tn[t], kn[s]) for t, s in nid_keys} | set(o.delta) | set(n.delta)
                a = await self._lookup_ids(conn, o, keys)
                b = await self._lookup_ids(conn, n, keys)
            added = {b[k] for k in keys if k in b and a.get(k) != b[k]}
            removed = {a[k] for k in keys if k in a and b.get(k) != a[k]}
            return sorted(added), sorted(removed)

        return await self._read(go)

    # --- the write ----------------------------------------------------------------------

    async def persist(self, write: EventWrite) -> None:
        await self.persist_many([write])

    def batch(self, room_id: str) -> StoreBatch:
        """Hold a room's writes in memory and commit them together (`worker.storage.batch`)."""
        from worker.storage.batch import StoreBatch as Held

        return Held(self, room_id)

    async def persist_many(self, writes: Sequence[EventWrite]) -> None:
        """Several writes of one room, in order, in one transaction (DESIGN §2 step 8: a
        transaction may carry several events; an event is never split across two). Each
        write sees the ones before it, exactly as if they had been persisted one by one.

        Writes of other rooms submitted meanwhile may share the transaction (group commit,
        `_commit_group`); a room's own writes commit one call after another, in order."""
        if not writes:
            return
        room_id = writes[0].room_id
        if any(w.room_id != room_id for w in writes):
            raise InvariantViolation("persist_many: writes of several rooms in one call")
        # The writes run in the caller's context (a subclass's fence, the log's bindings).
        await self._commits.submit(_Commit(room_id, writes, copy_context()), key=room_id)

    async def _commit_group(self, commits: list[_Commit]) -> list[BaseException | None]:
        """Commit the writes of several rooms in one transaction; if it fails, commit each
        room's alone, so that one room's refusal (a fence, a conflict) is its own."""
        if len(commits) > 1:
            try:
                effects = await self.txn(
                    "persist_group",
                    lambda c: self._group_txn(c, commits),
                    locks=[room_lock_key(x.room_id) for x in commits],
                )
            except Exception as e:
                # Expected now and then (a fenced room); anything else is a bug that the
                # room-by-room retry below would otherwise hide.
                self.groups_split += 1
                _log.info("group_commit_split", rooms=len(commits), error=repr(e))
            else:
                for fx in effects:
                    self._learn(fx)
                return [None] * len(commits)
        answers: list[BaseException | None] = []
        for x in commits:
            desc = "persist_event" if len(x.writes) == 1 else "persist_events"
            try:
                alone = await self.txn(desc, _group_of(self, x), locks=[room_lock_key(x.room_id)])
            except Exception as e:
                answers.append(e)
            else:
                self._learn(alone[0])
                answers.append(None)
        return answers

    async def _group_txn(
        self, conn: asyncpg.Connection, commits: Sequence[_Commit]
    ) -> list[_Effects]:
        if len(commits) > 1 and all(_groupable(x.writes) for x in commits):
            return await self._group_bulk_txn(conn, commits)
        # Each room's writes run as a task in their submitter's context (see `persist_many`),
        # one after another on the transaction's connection.
        return [
            await asyncio.create_task(self._persist_all_txn(conn, x.writes), context=x.context)
            for x in commits
        ]

    async def _persist_all_txn(
        self, conn: asyncpg.Connection, writes: Sequence[EventWrite]
    ) -> _Effects:
        # One set of effects for the whole transaction: what an earlier write created (NIDs,
        # snapshots, event NIDs, the room row) is what the later ones build on.
        fx = _Effects()
        i = 0
        while i < len(writes):
            run = _bulk_run(writes, i, fx.id_nids)
            if len(run) > 1:
                await self._persist_bulk_txn(conn, run, fx)
                i += len(run)
            else:
                await self._persist_txn(conn, writes[i], fx)
                i += 1
        return fx

    def _learn(self, fx: _Effects) -> None:
        self.nids.learn(fx.nids)
        for nid, layer in fx.layers.items():
            self._layers.put(nid, layer)
            if layer.is_root:
                self._roots.put(nid, True)
        for eid, nid in fx.id_nids.items():
            self._nid_ids.put(nid, eid)
            self._id_nids.put(eid, nid)
        for dkey, nid in fx.derived.items():
            self._derived.put(dkey, nid)
        for eid in fx.stale_events:
            self._events.pop(eid)
        for eid, event in fx.inserted.items():
            # The next events' auth lookups name these (a sender's join, a new power level).
            if eid not in fx.redacted:
                self._events.put(eid, event)
        for eid, after in fx.after.items():
            self._after.put(eid, after)
        if fx.room is not None:
            self._rooms[fx.room.room_id] = fx.room

    async def _persist_txn(self, conn: asyncpg.Connection, w: EventWrite, fx: _Effects) -> None:
        e = w.event
        room, _ = await self._room_txn(conn, w, fx, 0)
        before = _own(w.state_before) if w.state_before is not None else None
        current = _own(w.current_state) if w.current_state is not None else None
        handles = [h for h in (before, current) if h is not None]

        types = {e.type} | {k[0] for h in handles for k in h.delta}
        keys = {k[1] for h in handles for k in h.delta}
        if e.state_key is not None:
            keys.add(e.state_key)
        nids = await self._nids_txn(conn, types, keys, fx)
        ref_ids = {v for h in handles for v in h.delta.values() if v and v != e.event_id}
        id_nids = fx.id_nids
        id_nids.update(await self._ref_nids(conn, ref_ids - id_nids.keys()))

        before_nid = None
        if before is not None:
            before_nid = await self._store_state_txn(conn, room.room_nid, before, nids, id_nids, fx)
        event_nid = await conn.fetchval(
            ev_sql.UPSERT_EVENT,
            e.event_id,
            room.room_nid,
            *_event_fields(w, nids),
            list(e.auth_event_ids),
            before_nid,
            w.event_json,
            list(e.prev_event_ids),
        )
        id_nids[e.event_id] = event_nid
        _remember_after(fx, w, before_nid)
        fx.stale_events.add(e.event_id)

        new_current = room.current_snapshot_nid
        if current is not None and before is not None and before_nid is not None:
            current = _rebase(current, before, before_nid)
        changes: tuple[list[int], list[int], list[int]] = ([], [], [])
        if current is not None:
            new_current = await self._store_state_txn(
                conn, room.room_nid, current, nids, id_nids, fx
            )
            changes = await self._membership_changes(
                conn, room.current_snapshot_nid, new_current, fx
            )
        pairing = e.type == "m.room.redaction" and e.redacts and e.state_key is None
        await conn.execute(
            ev_sql.FINISH_EVENT,
            room.room_nid,
            current is not None,
            new_current,
            list(w.extremities) if w.extremities is not None else None,
            _notes_json(w.notes),
            *changes,
            [o.output_id for o in w.outputs],
            [o.output_type for o in w.outputs],
            [o.payload for o in w.outputs],
            w.room_id,
            e.event_id if pairing else None,
            e.redacts if pairing else None,
        )
        fx.room = ev_sql.RoomRow(
            room.room_nid,
            room.room_id,
            room.version,
            new_current,
            list(w.extremities) if w.extremities is not None else room.extremities,
        )
        if w.redactions:
            await self._apply_redactions_txn(conn, w.redactions, fx)

    async def _room_txn(
        self, conn: asyncpg.Connection, w: EventWrite, fx: _Effects, reserve: int
    ) -> tuple[ev_sql.RoomRow, list[int]]:
        """The room row as this transaction sees it (made if missing, checked by
        `check_room_row`), and `reserve` fresh event NIDs read with it; none when an
        earlier write of the transaction already has the row."""
        if fx.room is not None and fx.room.room_id == w.room_id:
            return fx.room, []
        # The room's lock is held already: every write transaction takes the locks of its
        # rooms with BEGIN (`_commit_group`).
        if reserve:
            r = await conn.fetchrow(
                bulk_sql.UPSERT_ROOM_RESERVING, w.room_id, w.room_version, reserve
            )
        else:
            r = await conn.fetchrow(ev_sql.UPSERT_ROOM, w.room_id, w.room_version)
        if r is None:
            raise InvariantViolation(f"room {w.room_id} could not be created")
        room = ev_sql.room_row(r)
        self.check_room_row(room)
        return room, sorted(r["reserved"]) if reserve else []

    async def _persist_bulk_txn(
        self, conn: asyncpg.Connection, run: Sequence[EventWrite], fx: _Effects
    ) -> None:
        """A run of new events (see `_bulk_run`) with a fixed number of round trips: their
        NIDs are reserved, their snapshots planned (and new ones written) in order, then
        every row is inserted by one statement and the room's end state, memberships and
        outbox rows by one more. Stores exactly what `_persist_txn` per write would."""
        room, reserved = await self._room_txn(conn, run[0], fx, len(run))
        types, keys, refs = _run_names(run)
        nids = await self._nids_txn(conn, types, keys, fx)
        if not reserved:
            reserved = await bulk_sql.reserve_event_nids(conn, len(run))
        id_nids = fx.id_nids
        for w, nid in zip(run, reserved, strict=True):
            id_nids[w.event.event_id] = nid
        id_nids.update(await self._ref_nids(conn, refs - id_nids.keys()))
        rows = _BulkRows()
        await self._plan_run(conn, room, run, reserved, nids, id_nids, fx, rows)
        await _write_rows(conn, rows)
        for w in run:
            fx.inserted[w.event.event_id] = w.event

    async def _group_bulk_txn(
        self, conn: asyncpg.Connection, commits: Sequence[_Commit]
    ) -> list[_Effects]:
        """`_persist_bulk_txn` for several rooms at once, each with one run of new events
        (`_groupable`): the rooms' rows, names, references, events and end states each take
        one round trip for all of them, not one per room. Snapshots are still written room
        by room, where a run needs new ones."""
        reserve = [len(x.writes) for x in commits]
        found = {
            r["room_id"]: r
            for r in await conn.fetch(
                bulk_sql.UPSERT_ROOMS_RESERVING,
                [x.room_id for x in commits],
                [x.writes[0].room_version for x in commits],
                reserve,
                [_layers_wanted(x.writes) for x in commits],
            )
        }
        effects = [_Effects(held_layers=[]) for _ in commits]
        types: set[str] = set()
        keys: set[str] = set()
        refs: set[str] = set()
        rooms: list[tuple[ev_sql.RoomRow, list[int]]] = []
        own: set[str] = set()
        for x, fx in zip(commits, effects, strict=True):
            r = found.get(x.room_id)
            if r is None:
                raise InvariantViolation(f"room {x.room_id} could not be created")
            room = ev_sql.room_row(r)
            # The fence of each room in its own writer's context (see `persist_many`).
            x.context.run(self.check_room_row, room)
            rooms.append((room, sorted(r["reserved"])))
            fx.layer_nids = sorted(r["layers"])
            t, k, refs_of = _run_names(x.writes)
            types |= t
            keys |= k
            refs |= refs_of
            own.update(w.event.event_id for w in x.writes)
        # Names and references are shared: what one room's writes make or look up is
        # learned once, with the first room's effects.
        nids = await self._nids_txn(conn, types, keys, effects[0])
        shared = effects[0].id_nids
        shared.update(await self._ref_nids(conn, refs - own))
        rows = _BulkRows()
        for x, fx, (room, reserved) in zip(commits, effects, rooms, strict=True):
            for w, nid in zip(x.writes, reserved, strict=True):
                fx.id_nids[w.event.event_id] = nid
            id_nids = fx.id_nids if fx is effects[0] else ChainMap(fx.id_nids, shared)
            await self._plan_run(conn, room, x.writes, reserved, nids, id_nids, fx, rows)
        layers = [row for fx in effects for row in fx.held_layers or ()]
        if layers and not await snap_sql.insert_layers_txn(conn, layers):
            # A planned layer is stored already (the same state over the same parent, which
            # only the database remembers): redone room by room, where layers deduplicate.
            raise StaleWrite("a state layer of the group is stored already")
        await _write_rows(conn, rows)
        for x, fx in zip(commits, effects, strict=True):
            for w in x.writes:
                fx.inserted[w.event.event_id] = w.event
        return effects

    async def _ref_nids(self, conn: asyncpg.Connection, refs: Iterable[str]) -> dict[str, int]:
        """NIDs of stored events the writes refer to: from the cache, the rest in one read."""
        out: dict[str, int] = {}
        missing: list[str] = []
        for eid in refs:
            known = self._id_nids.get(eid)
            if known is not None:
                out[eid] = known
            else:
                missing.append(eid)
        if missing:
            out.update(await ev_sql.event_nids(conn, missing))
        return out

    async def _plan_run(
        self,
        conn: asyncpg.Connection,
        room: ev_sql.RoomRow,
        run: Sequence[EventWrite],
        reserved: Sequence[int],
        nids: nid_sql.Nids,
        id_nids: Mapping[str, int],
        fx: _Effects,
        rows: _BulkRows,
    ) -> None:
        """Store the snapshots a run needs, in order, and add its rows and its room's end
        state to `rows`; `fx.room` becomes the room as the run leaves it."""
        current_nid = room.current_snapshot_nid
        current_changed = False
        extremities = room.extremities
        notes: dict[str, str] = {}
        outputs: list[OutputRecord] = []
        changes: list[tuple[list[int], list[int], list[int]]] = []
        for w, nid in zip(run, reserved, strict=True):
            e = w.event
            before = _own(w.state_before) if w.state_before is not None else None
            current = _own(w.current_state) if w.current_state is not None else None
            before_nid = None
            if before is not None:
                before_nid = await self._store_state_txn(
                    conn, room.room_nid, before, nids, id_nids, fx
                )
                _remember_after(fx, w, before_nid)
            fx.stale_events.add(e.event_id)
            if current is not None:
                if before is not None and before_nid is not None:
                    current = _rebase(current, before, before_nid)
                new_current = await self._store_state_txn(
                    conn, room.room_nid, current, nids, id_nids, fx
                )
                changes.append(await self._membership_changes(conn, current_nid, new_current, fx))
                current_nid, current_changed = new_current, True
            if w.extremities is not None:
                extremities = list(w.extremities)
            notes.update(w.notes)
            outputs.extend(w.outputs)
            auth = sorted({id_nids[a] for a in e.auth_event_ids if a in id_nids})
            rows.add(
                (
                    nid,
                    e.event_id,
                    *_event_fields(w, nids),
                    bulk_sql.nid_array(auth),
                    before_nid,
                    room.room_nid,
                    w.event_json,
                ),
                e.prev_event_ids,
            )
        _memberships_one_by_one(room.room_nid, changes, rows)
        rows.finishes.append(
            (
                room.room_nid,
                current_changed,
                current_nid,
                extremities if any(w.extremities is not None for w in run) else None,
                _notes_json(notes),
                *_merged_changes(changes),
                [o.output_id for o in outputs],
                [o.output_type for o in outputs],
                [o.payload for o in outputs],
                room.room_id,
                None,
                None,
            )
        )
        fx.room = ev_sql.RoomRow(
            room.room_nid, room.room_id, room.version, current_nid, list(extremities)
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
        fresh = await self.txn(
            "ensure_names",
            lambda c: nid_sql.get_or_create_txn(c, self.nids, miss_t, miss_k),
        )
        self.nids.learn(fresh[1])

    def check_room_row(self, room: ev_sql.RoomRow) -> None:
        """Called with the room row as a write transaction first reads it, under the room's
        lock, before writing anything: a subclass may refuse the write by raising (a fence
        against a stale view: `worker.bus.shards.ShardAwareStore`)."""

    async def _nids_txn(
        self, conn: asyncpg.Connection, types: set[str], keys: set[str], fx: _Effects
    ) -> nid_sql.Nids:
        """NIDs of these names, creating missing ones; names an earlier write of the
        transaction created come from `fx` (not yet in the cache: they exist only if the
        transaction commits)."""
        made = fx.nids
        nids, fresh = await nid_sql.get_or_create_txn(
            conn, self.nids, types - made.types.keys(), keys - made.keys.keys()
        )
        for t in types & made.types.keys():
            nids.types[t] = made.types[t]
        for k in keys & made.keys.keys():
            nids.keys[k] = made.keys[k]
        made.types.update(fresh.types)
        made.keys.update(fresh.keys)
        return nids

    async def _store_state_txn(
        self,
        conn: asyncpg.Connection,
        room_nid: int,
        h: PgState,
        nids: nid_sql.Nids,
        id_nids: Mapping[str, int],
        fx: _Effects,
    ) -> int:
        """The snapshot NID of a handle, writing at most one snapshot (or one new root)."""
        if not h.delta:
            return h.snapshot_nid
        original = h
        h = _rebase_on_stored(h, fx.stored)
        if not h.delta:
            fx.stored.append((original, h.snapshot_nid))
            return h.snapshot_nid
        delta: sb.NidState = {}
        for (t, s), eid in h.delta.items():
            if eid and eid not in id_nids:
                raise InvariantViolation(f"state refers to event {eid}, which is not stored")
            delta[(nids.types[t], nids.keys[s])] = id_nids[eid] if eid else 0
        dkey = (h.snapshot_nid, frozenset(delta.items()))
        known = fx.derived.get(dkey) or self._derived.get(dkey)
        if known is not None:
            fx.stored.append((original, known))
            return known
        chain = await self._chain(conn, h.snapshot_nid, fx.layers)
        delta = {k: v for k, v in delta.items() if sb.value_at(chain, k) != v}
        if not delta:
            return h.snapshot_nid
        plan = sb.plan_snapshot(chain, delta)
        layer: sb.Layer | None
        if fx.held_layers is not None and fx.layer_nids and isinstance(plan, sb.NewLayer):
            row, layer = snap_sql.layer_row(room_nid, plan, fx.layer_nids.pop(0))
            fx.held_layers.append(row)
            nid = row[0]
        else:
            nid, layer = await snap_sql.write_plan_txn(conn, room_nid, plan)
        if layer is not None:
            fx.layers[nid] = layer
        fx.derived[dkey] = nid
        fx.stored.append((original, nid))
        return nid

    async def _membership_changes(
        self, conn: asyncpg.Connection, old: int | None, new: int, fx: _Effects
    ) -> tuple[list[int], list[int], list[int]]:
        """(new member event NIDs, removed targets, changed targets) between two current
        states, for `memberships`/`invites` (FINISH_EVENT)."""
        if old == new:
            return [], [], []
        co = await self._chain(conn, old or 0, fx.layers)
        cn = await self._chain(conn, new, fx.layers)
        member = nid_sql.MEMBER_TYPE_NID
        keys = sb.touched_keys(co, {}, cn, {})
        if keys is None:
            a = {k: v for k, v in sb.materialize(co).items() if k[0] == member}
            b = {k: v for k, v in sb.materialize(cn).items() if k[0] == member}
            candidates: Iterable[sb.NidKey] = a.keys() | b.keys()
        else:
            candidates = [k for k in keys if k[0] == member]
            a = {k: sb.value_at(co, k) for k in candidates}
            b = {k: sb.value_at(cn, k) for k in candidates}
        upserts: list[int] = []
        deletes: list[int] = []
        targets: list[int] = []
        for k in sorted(candidates):
            was, now = a.get(k, 0), b.get(k, 0)
            if was == now:
                continue
            targets.append(k[1])
            if now:
                upserts.append(now)
            else:
                deletes.append(k[1])
        return upserts, deletes, targets

    async def _apply_redactions_txn(
        self, conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]], fx: _Effects
    ) -> None:
        rows = await conn.fetch(ev_sql.SELECT_REDACTION_TARGETS, sorted({t for _, t in pairs}))
        targets = {r["event_id"]: r for r in rows}
        for redaction_id, target_id in pairs:
            await conn.execute(ev_sql.INSERT_REDACTION_APPLIED, redaction_id, target_id)
            r = targets.get(target_id)
            if r is None or r["redacted_by"] is not None:
                continue
            rules = rules_for(r["room_version"])
            if rules is None:
                raise InvariantViolation(f"stored room version {r['room_version']!r} unknown")
            pdu = ev_sql.decode_event(target_id, r["json"], r["room_version"]).pdu
            redacted = encode_canonical(redact(pdu, rules))
            await conn.execute(ev_sql.APPLY_REDACTION, r["event_nid"], redacted, redaction_id)
            fx.stale_events.add(target_id)
            fx.redacted.add(target_id)


async def _locked_txn(
    conn: asyncpg.Connection, locks: Sequence[int], fn: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """`fn` in a transaction begun together with the advisory `locks`: one round trip for
    all (the simple query protocol takes several statements; the keys are ints). Taken in
    ascending order, as every transaction that takes several does, so two cannot deadlock."""
    taken = "; ".join(f"SELECT pg_advisory_xact_lock({int(k)})" for k in sorted(set(locks)))
    await conn.execute(f"BEGIN; {taken}")
    try:
        result = await fn(conn)
    except BaseException:
        # A broken connection cannot roll back; the pool closes it on release anyway.
        with contextlib.suppress(Exception):
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return result


@dataclass
class _BulkRows:
    """What `_write_rows` writes: event rows (INSERT_EVENTS columns) and prev references of
    one or more runs, then FINISH_EVENT's arguments, in order."""

    cols: tuple[list[object], ...] = field(default_factory=lambda: tuple([] for _ in range(14)))
    prevs: tuple[list[str], list[int]] = field(default_factory=lambda: ([], []))
    finishes: list[tuple[object, ...]] = field(default_factory=list)

    def add(self, row: tuple[object, ...], prev_ids: Iterable[str]) -> None:
        for col, value in zip(self.cols, row, strict=True):
            col.append(value)
        nid = row[0]
        for prev in dict.fromkeys(prev_ids):
            self.prevs[0].append(prev)
            self.prevs[1].append(cast(int, nid))


async def _write_rows(conn: asyncpg.Connection, rows: _BulkRows) -> None:
    """Insert the rows (one statement), then the rooms' end states (one round trip)."""
    expected = len(rows.cols[0])
    inserted = await conn.fetchval(bulk_sql.INSERT_EVENTS, *rows.cols[:13], *rows.prevs, rows.cols[13])
    if inserted != expected:
        # Written meanwhile by someone else (a stale owner, despite the fence): let the
        # one-by-one path, which upserts, decide.
        raise StaleWrite(f"{expected - inserted} of {expected} events were already stored")
    if len(rows.finishes) == 1:
        await conn.execute(ev_sql.FINISH_EVENT, *rows.finishes[0])
    elif len({f[0] for f in rows.finishes}) == len(rows.finishes):
        # Several rooms, each finishing once: one statement for all of them.
        await conn.execute(bulk_sql.FINISH_ROOMS, *_finish_rooms_args(rows.finishes))
    elif rows.finishes:
        # A room finishing more than once (`_memberships_one_by_one`): in order, one
        # statement each, in one round trip (asyncpg sends every argument set at once).
        await conn.executemany(ev_sql.FINISH_EVENT, rows.finishes)


def _finish_rooms_args(finishes: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """FINISH_ROOMS's arguments from FINISH_EVENT's, one tuple per room."""
    args: tuple[list[Any], ...] = tuple([] for _ in range(14))
    (room_nids, changed, current, extremities, notes, upserts, del_rooms, del_targets,
     ret_rooms, ret_targets, out_ids, out_rooms, out_types, payloads) = args
    for (room_nid, changes_current, current_nid, ext, note, up, gone, targets, ids, types,
         bodies, room_id, red_event, _) in finishes:
        if red_event is not None:
            raise InvariantViolation("FINISH_ROOMS carries no redaction pairing")
        room_nids.append(room_nid)
        changed.append(changes_current)
        current.append(current_nid)
        extremities.append(None if ext is None else json.dumps(list(ext)))
        notes.append(note)
        upserts.extend(up)
        del_rooms.extend([room_nid] * len(gone))
        del_targets.extend(gone)
        ret_rooms.extend([room_nid] * len(targets))
        ret_targets.extend(targets)
        out_ids.extend(ids)
        out_rooms.extend([room_id] * len(ids))
        out_types.extend(types)
        payloads.extend(bodies)
    return args


def _memberships_one_by_one(
    room_nid: int, changes: list[tuple[list[int], list[int], list[int]]], rows: _BulkRows
) -> None:
    """Membership changes of a run that touch a target more than once: each write's own
    changes, in order (only the last for a target would be right for `memberships`, but
    invites retired in between must stay retired). Emptied from `changes`."""
    seen: set[int] = set()
    repeated = False
    for _, _, targets in changes:
        if seen.intersection(targets):
            repeated = True
            break
        seen.update(targets)
    if not repeated:
        return
    for upserts, deletes, targets in changes:
        if targets:
            rows.finishes.append(
                (room_nid, False, 0, None, "{}", upserts, deletes, targets, [], [], [], "", None, None)
            )
    changes.clear()


def _run_names(run: Sequence[EventWrite]) -> tuple[set[str], set[str], set[str]]:
    """The types, state keys and referenced event IDs a run's rows and snapshots need."""
    types: set[str] = set()
    keys: set[str] = set()
    refs: set[str] = set()
    for w in run:
        e = w.event
        types.add(e.type)
        if e.state_key is not None:
            keys.add(e.state_key)
        for h in (w.state_before, w.current_state):
            if h is not None:
                for (t, k), v in _own(h).delta.items():
                    types.add(t)
                    keys.add(k)
                    if v:
                        refs.add(v)
        refs.update(e.auth_event_ids)
    return types, keys, refs


def _layers_wanted(writes: Sequence[EventWrite]) -> int:
    """Snapshot NIDs to reserve for a run's new layers: one per state handle it carries
    with changes (an upper bound; when short, a layer is written at once instead)."""
    handles = (h for w in writes for h in (w.state_before, w.current_state) if h is not None)
    return sum(1 for h in handles if _own(h).delta)


def _groupable(writes: Sequence[EventWrite]) -> bool:
    """Whether a room's writes can join `_group_bulk_txn`: one run of new events."""
    return len(_bulk_run(writes, 0, {})) == len(writes)


def _rebase(current: PgState, before: PgState, before_nid: int) -> PgState:
    """`current` over the snapshot just stored for `before`, when it extends `before`.

    The pipeline builds the state after an event as `apply(state_before, {event})`; over the
    snapshot of the state before, that is a one-entry delta, which is exactly the snapshot the
    next event's `state_after(prev)` will ask for, so both share one row.
    """
    if current.snapshot_nid != before.snapshot_nid or current.room_id != before.room_id:
        return current
    if any(current.delta.get(k) != v for k, v in before.delta.items()):
        return current
    rest = {k: v for k, v in current.delta.items() if k not in before.delta}
    return PgState(current.room_id, before_nid, rest)


_REBASE_CANDIDATES = 4


def _event_fields(w: EventWrite, nids: nid_sql.Nids) -> tuple[object, ...]:
    """An event row's columns from type_nid to membership, in table order."""
    e = w.event
    return (
        nids.types[e.type],
        nids.keys[e.state_key] if e.state_key is not None else 0,
        e.depth,
        ev_sql.KIND_CODES[w.kind],
        ev_sql.OUTCOME_CODES[w.outcome],
        w.reason_code,
        w.reason,
        ev_sql.membership_code(e),
    )


def _remember_after(fx: _Effects, w: EventWrite, before_nid: int | None) -> None:
    """What `state_after` will read back for the event: the upsert keeps this kind,
    outcome and snapshot for any write that is not an outlier's."""
    if before_nid is None or w.kind == "outlier":
        return
    e = w.event
    key = e.state_tuple
    delta: dict[StateKey, str] = {}
    if key is not None and w.outcome is Outcome.ACCEPTED:
        delta[key] = e.event_id
    fx.after[e.event_id] = PgState(e.room_id, before_nid, delta)


class StaleWrite(RetryableError):
    """A write meant to insert an event found it already stored: recompute and retry."""

    code = "stale_write"


def _bulk_run(
    writes: Sequence[EventWrite], start: int, written: Container[str]
) -> Sequence[EventWrite]:
    """The longest run of writes from `start` that `_persist_bulk_txn` can take: events
    not stored yet (nor `written` earlier in this transaction, nor twice in the run), with no
    redactions to apply and not redactions themselves (those pair with their target)."""
    seen: set[str] = set()
    end = start
    while end < len(writes):
        w = writes[end]
        e = w.event
        eid = e.event_id
        if w.redactions or e.type == "m.room.redaction" or eid in seen or eid in written:
            break
        seen.add(eid)
        end += 1
    return writes[start:end]


def _merged_changes(
    changes: Sequence[tuple[list[int], list[int], list[int]]],
) -> tuple[list[int], list[int], list[int]]:
    """The membership changes of a run whose writes each touch different targets."""
    up: list[int] = []
    gone: list[int] = []
    targets: list[int] = []
    for u, d, t in changes:
        up.extend(u)
        gone.extend(d)
        targets.extend(t)
    return up, gone, targets


def _rebase_on_stored(h: PgState, stored: Sequence[tuple[PgState, int]]) -> PgState:
    """`h` over a snapshot this transaction already stored for a handle it extends.

    Events persisted together chain their states: each one's state before is the previous
    one's state after, a handle whose delta (over the snapshot the batch started from) grows
    by one entry per state event. Stored as is, every snapshot would repeat the whole delta;
    rebased on the snapshot just stored for the handle it extends, each adds only its own.
    """
    for cand, nid in reversed(stored[-_REBASE_CANDIDATES:]):
        if cand.room_id != h.room_id or cand.snapshot_nid != h.snapshot_nid:
            continue
        if len(cand.delta) > len(h.delta):
            continue
        if all(h.delta.get(k, None) == v for k, v in cand.delta.items()):
            rest = {k: v for k, v in h.delta.items() if k not in cand.delta}
            return PgState(h.room_id, nid, rest)
    return h


def _getter(
    pending: Mapping[int, sb.Layer], cache: Lru[int, sb.Layer]
) -> Callable[[int], sb.Layer | None]:
    """Layers of a transaction not yet committed, then the cache (read without reordering)."""

    def get(nid: int) -> sb.Layer | None:
        layer = pending.get(nid)
        return layer if layer is not None else cache.peek(nid)

    return get


def _notes_json(notes: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(notes.items())))


def _conforms(store: PostgresStore) -> RoomStore:
    """Static proof (checked by mypy --strict) that `PostgresStore` implements `RoomStore`."""
    return store


def _batches(store: PostgresStore) -> BatchingStore:
    """Static proof that `PostgresStore` implements `BatchingStore`."""
    return store
