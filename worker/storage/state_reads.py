"""Reads through a state handle: lookups of a few keys, whole states, and differences.

A handle's snapshot is a chain of layers (`worker.core.stateblocks`); `lookup` reads only the
keys asked for from the chain's layers, answering from the caches alone when it can (the
common case in a busy room: the auth events of the next event are the room's hot state), and
`materialize` names every entry of a state. `handle_from_map` turns a whole state (a
resolution's result) into a small delta over the nearest recently materialized state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import asyncpg

from worker.core import stateblocks as sb
from worker.core.events import Event, StateKey
from worker.errors import InvariantViolation
from worker.pipeline.ports import StateHandle
from worker.storage import events as ev_sql
from worker.storage import nids as nid_sql
from worker.storage import snapshots as snap_sql
from worker.storage.caches import StoreCaches
from worker.storage.event_rows import stored_events
from worker.storage.handles import PgState, own
from worker.storage.transactions import Database


class StateReads:
    """The `RoomStore` methods that read through a state handle."""

    def __init__(self, db: Database, caches: StoreCaches) -> None:
        self.db = db
        self.caches = caches
        self.nids = caches.nids

    async def state_from_ids(self, room_id: str, event_ids: Sequence[str]) -> PgState:
        rows = await self.db.read(
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

    async def chain(
        self,
        conn: asyncpg.Connection,
        top: int,
        pending: Mapping[int, sb.Layer] | None = None,
    ) -> sb.Chain:
        """The layers of snapshot `top`, top first: from `pending` (a transaction's layers
        not yet committed) and the cache, the rest loaded in one query."""
        if not top:
            return ()
        get = self.caches.getter(pending or {})
        try:
            return sb.chain_via(top, get)
        except KeyError:
            pass
        # Hold the cached roots the walk may stop at: the cache can evict them meanwhile.
        known: dict[int, sb.Layer] = {}
        for nid in self.caches.roots.key_list():
            root = self.caches.layers.peek(nid)
            if root is not None:
                known[nid] = root
        loaded = await snap_sql.load_layers(conn, [top], known)
        self.caches.put_layers(loaded)

        def get_loaded(nid: int) -> sb.Layer | None:
            layer = loaded.get(nid) or known.get(nid)
            return layer if layer is not None else get(nid)

        return sb.chain_via(top, get_loaded)

    async def _ids_of(self, conn: asyncpg.Connection, nids: Iterable[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        missing: list[int] = []
        for n in nids:
            eid = self.caches.nid_ids.get(n)
            if eid is None:
                missing.append(n)
            else:
                out[n] = eid
        if missing:
            fetched = await ev_sql.event_ids(conn, missing)
            for n, eid in fetched.items():
                self.caches.nid_ids.put(n, eid)
                self.caches.id_nids.put(eid, n)
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
        chain = await self.chain(conn, h.snapshot_nid)
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
            e = self.caches.events.get(eid)
            if e is None:
                missing.append(eid)
            else:
                out[eid] = e
        if missing:
            for eid, (stored, _) in (await stored_events(conn, self.caches, missing)).items():
                self.caches.events.put(eid, stored.event)
                out[eid] = stored.event
        return out

    async def lookup(self, state: StateHandle, keys: Sequence[StateKey]) -> dict[StateKey, Event]:
        h = own(state)
        cached = self._lookup_cached(h, keys)
        if cached is not None:
            return cached

        async def go(conn: asyncpg.Connection) -> dict[StateKey, Event]:
            ids = await self._lookup_ids(conn, h, keys)
            events = await self._events_by_id(conn, ids.values())
            return {k: events[eid] for k, eid in ids.items() if eid in events}

        return await self.db.read_lazily(go)

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
                chain = sb.chain_via(h.snapshot_nid, self.caches.layers.peek)
            except KeyError:
                return None
            for k in rest:
                t = types.get(k[0])
                s = skeys.get(k[1])
                if t is None or s is None:
                    return None
                ev = sb.value_at(chain, (t, s))
                if ev:
                    eid = self.caches.nid_ids.peek(ev)
                    if eid is None:
                        return None
                    ids[k] = eid
        out: dict[StateKey, Event] = {}
        for k, eid in ids.items():
            event = self.caches.events.get(eid)
            if event is None:
                return None
            out[k] = event
        return out

    async def _materialize_nids(self, conn: asyncpg.Connection, snapshot_nid: int) -> sb.NidState:
        return sb.materialize(await self.chain(conn, snapshot_nid))

    async def materialize_txn(self, conn: asyncpg.Connection, h: PgState) -> dict[StateKey, str]:
        """`materialize` on `conn`; the answer is remembered for `handle_from_map`."""
        for cand, result in self.caches.recent:
            if cand is h:
                return dict(result)
        nstate = await self._materialize_nids(conn, h.snapshot_nid)
        out = await self._name_entries(conn, nstate)
        for k, v in h.delta.items():
            if v:
                out[k] = v
            else:
                out.pop(k, None)
        self.caches.recent.append((h, out))
        return dict(out)

    async def _name_entries(
        self, conn: asyncpg.Connection, nstate: sb.NidState
    ) -> dict[StateKey, str]:
        """A NID state as (type, state_key) -> event ID: from the caches, and one query for
        the entries they cannot name."""
        tn, kn, ids = self.nids.type_names, self.nids.key_names, self.caches.nid_ids
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
        h = own(state)
        return await self.db.read_lazily(lambda c: self.materialize_txn(c, h))

    async def handle_from_map(self, room_id: str, state: Mapping[StateKey, str]) -> PgState:
        """The state as a delta over the nearest recently materialized state of the room.

        The pipeline materializes the states it resolves, so the parents of a merge are
        among the candidates: a merge is stored as a small delta over one of them.
        """
        best = PgState(room_id, 0, dict(state))
        best_size = len(state)
        for cand, cmap in self.caches.recent:
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
        n = own(new)
        o = own(old) if old is not None else None
        if o is not None and o.snapshot_nid == n.snapshot_nid and o.delta == n.delta:
            # One state in two handles (a branch through a rejected event): nothing to read.
            return [], []

        async def go(conn: asyncpg.Connection) -> tuple[list[str], list[str]]:
            if o is None:
                return sorted(set((await self.materialize_txn(conn, n)).values())), []
            co = await self.chain(conn, o.snapshot_nid)
            cn = await self.chain(conn, n.snapshot_nid)
            if o.snapshot_nid == n.snapshot_nid:
                nid_keys: set[sb.NidKey] | None = set()
            else:
                nid_keys = sb.touched_keys(co, {}, cn, {})
            if nid_keys is None:
                a = await self.materialize_txn(conn, o)
                b = await self.materialize_txn(conn, n)
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

        return await self.db.read_lazily(go)
