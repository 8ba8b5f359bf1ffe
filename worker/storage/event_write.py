"""The one-event write, and the pieces every write path shares.

`EventWriter.persist_txn` stores one event inside a write transaction: its room row (made if
missing, checked against the write's fence), the NIDs of the names it uses, the snapshots of
its state before and after (at most one new row each, `worker.core.stateblocks.plan_snapshot`),
the event row, then the room's end state, memberships and outbox rows (`FINISH_EVENT`), and
any redactions it applies. What it made is recorded in the transaction's `WriteEffects`, for
the transaction's later writes and, once it commits, for the caches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import asyncpg

from worker.core import stateblocks as sb
from worker.core.canonical import encode_canonical
from worker.core.events import StateKey
from worker.core.outcomes import Outcome
from worker.core.redaction import redact
from worker.core.versions import rules_for
from worker.errors import InvariantViolation
from worker.pipeline.ports import EventWrite
from worker.storage import events as ev_sql
from worker.storage import finish as finish_sql
from worker.storage import nids as nid_sql
from worker.storage import rooms as room_sql
from worker.storage import snapshots as snap_sql
from worker.storage.caches import StoreCaches, WriteEffects
from worker.storage.fence import RoomView, check_view
from worker.storage.handles import PgState, own, rebase, rebase_on_stored
from worker.storage.state_reads import StateReads

# Membership changes between two current states: (new member event NIDs, removed targets,
# changed targets), as `FINISH_EVENT` takes them.
MembershipChanges = tuple[list[int], list[int], list[int]]
# What `WriteEffects.derived` knows a snapshot by: (the snapshot under it, its delta).
_DerivedKey = tuple[int, frozenset[tuple[sb.NidKey, int]]]


class EventWriter:
    """Writes inside a transaction, building on what the transaction wrote before."""

    def __init__(self, caches: StoreCaches, states: StateReads) -> None:
        self.caches = caches
        self.states = states

    async def persist_txn(
        self, conn: asyncpg.Connection, w: EventWrite, fx: WriteEffects, fence: RoomView | None
    ) -> None:
        """Store one write (an event new or already stored: its row is upserted)."""
        e = w.event
        room, _ = await self.room_txn(conn, w, fx, 0, fence)
        before = own(w.state_before) if w.state_before is not None else None
        current = own(w.current_state) if w.current_state is not None else None
        handles = [h for h in (before, current) if h is not None]

        types = {e.type} | {k[0] for h in handles for k in h.delta}
        keys = {k[1] for h in handles for k in h.delta}
        if e.state_key is not None:
            keys.add(e.state_key)
        nids = await self.nids_txn(conn, types, keys, fx)
        ref_ids = {v for h in handles for v in h.delta.values() if v and v != e.event_id}
        id_nids = fx.id_nids
        id_nids.update(await self.ref_nids(conn, ref_ids - id_nids.keys()))

        before_nid = None
        if before is not None:
            before_nid = await self.store_state_txn(conn, room.room_nid, before, nids, id_nids, fx)
        event_nid = await conn.fetchval(
            ev_sql.UPSERT_EVENT,
            e.event_id,
            room.room_nid,
            *event_fields(w, nids),
            list(e.auth_event_ids),
            before_nid,
            w.event_json,
            list(e.prev_event_ids),
        )
        id_nids[e.event_id] = event_nid
        remember_after(fx, w, before_nid)
        fx.stale_events.add(e.event_id)

        new_current = room.current_snapshot_nid
        if current is not None and before is not None and before_nid is not None:
            current = rebase(current, before, before_nid)
        changes: MembershipChanges = ([], [], [])
        if current is not None:
            new_current = await self.store_state_txn(
                conn, room.room_nid, current, nids, id_nids, fx
            )
            changes = await self.membership_changes(
                conn, room.current_snapshot_nid, new_current, fx
            )
        pairing = e.type == "m.room.redaction" and e.redacts and e.state_key is None
        await conn.execute(
            finish_sql.FINISH_EVENT,
            room.room_nid,
            current is not None,
            new_current,
            list(w.extremities) if w.extremities is not None else None,
            notes_json(w.notes),
            *changes,
            [o.output_id for o in w.outputs],
            [o.output_type for o in w.outputs],
            [o.payload for o in w.outputs],
            w.room_id,
            e.event_id if pairing else None,
            e.redacts if pairing else None,
        )
        fx.room = room_sql.RoomRow(
            room.room_nid,
            room.room_id,
            room.version,
            new_current,
            list(w.extremities) if w.extremities is not None else room.extremities,
        )
        if w.redactions:
            await self.apply_redactions_txn(conn, w.redactions, fx)

    async def room_txn(
        self,
        conn: asyncpg.Connection,
        w: EventWrite,
        fx: WriteEffects,
        reserve: int,
        fence: RoomView | None,
    ) -> tuple[room_sql.RoomRow, list[int]]:
        """The room row as this transaction sees it (made if missing, checked against the
        write's `fence`), and `reserve` fresh event NIDs read with it; none when an
        earlier write of the transaction already has the row."""
        if fx.room is not None and fx.room.room_id == w.room_id:
            return fx.room, []
        # The room's lock is held already: every write transaction takes the locks of its
        # rooms with BEGIN (`worker.storage.group_commit`).
        if reserve:
            r = await conn.fetchrow(
                room_sql.UPSERT_ROOM_RESERVING, w.room_id, w.room_version, reserve
            )
        else:
            r = await conn.fetchrow(room_sql.UPSERT_ROOM, w.room_id, w.room_version)
        if r is None:
            raise InvariantViolation(f"room {w.room_id} could not be created")
        room = room_sql.room_row(r)
        check_view(room, fence)
        return room, sorted(r["reserved"]) if reserve else []

    async def ref_nids(self, conn: asyncpg.Connection, refs: Iterable[str]) -> dict[str, int]:
        """NIDs of stored events the writes refer to: from the cache, the rest in one read."""
        out: dict[str, int] = {}
        missing: list[str] = []
        for eid in refs:
            known = self.caches.id_nids.get(eid)
            if known is not None:
                out[eid] = known
            else:
                missing.append(eid)
        if missing:
            out.update(await ev_sql.event_nids(conn, missing))
        return out

    async def nids_txn(
        self, conn: asyncpg.Connection, types: set[str], keys: set[str], fx: WriteEffects
    ) -> nid_sql.Nids:
        """NIDs of these names, creating missing ones; names an earlier write of the
        transaction created come from `fx` (not yet in the cache: they exist only if the
        transaction commits)."""
        made = fx.nids
        nids, fresh = await nid_sql.get_or_create_txn(
            conn, self.caches.nids, types - made.types.keys(), keys - made.keys.keys()
        )
        for t in types & made.types.keys():
            nids.types[t] = made.types[t]
        for k in keys & made.keys.keys():
            nids.keys[k] = made.keys[k]
        made.types.update(fresh.types)
        made.keys.update(fresh.keys)
        return nids

    async def store_state_txn(
        self,
        conn: asyncpg.Connection,
        room_nid: int,
        h: PgState,
        nids: nid_sql.Nids,
        id_nids: Mapping[str, int],
        fx: WriteEffects,
    ) -> int:
        """The snapshot NID of a handle, writing at most one snapshot (or one new root)."""
        if not h.delta:
            return h.snapshot_nid
        original = h
        h = rebase_on_stored(h, fx.stored)
        if not h.delta:
            fx.stored.append((original, h.snapshot_nid))
            return h.snapshot_nid
        delta = nid_delta(h, nids, id_nids)
        dkey = (h.snapshot_nid, frozenset(delta.items()))
        known = fx.derived.get(dkey) or self.caches.derived.get(dkey)
        if known is not None:
            fx.stored.append((original, known))
            return known
        chain = await self.states.chain(conn, h.snapshot_nid, fx.layers)
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

    async def store_first_roots_txn(
        self,
        conn: asyncpg.Connection,
        firsts: Sequence[tuple[int, EventWrite, nid_sql.Nids, Mapping[str, int], WriteEffects]],
    ) -> None:
        """The first snapshots of new rooms, several rooms' in two round trips (their blocks,
        then their roots) where `store_state_txn` takes two per room (for a first state that
        fits in one block, as a new room's does).

        `firsts` holds, per room of a group commit, its room NID, its first write, the names'
        NIDs, the events' NIDs and the room's effects. A write whose state after is a state
        over no snapshot (the create event's: a new room) has its root stored here and
        recorded in the effects as `store_state_txn` records what it stores, which then finds
        it there instead of writing it. Any other write is left to `store_state_txn`.
        """
        roots: list[tuple[int, sb.NidState, bytes, _DerivedKey, WriteEffects]] = []
        for room_nid, w, nids, id_nids, fx in firsts:
            before = own(w.state_before) if w.state_before is not None else None
            if w.current_state is None or (before is not None and before.delta):
                continue
            h = own(w.current_state)
            if h.snapshot_nid or not h.delta:
                continue
            delta = nid_delta(h, nids, id_nids)
            dkey = (0, frozenset(delta.items()))
            if dkey in fx.derived or dkey in self.caches.derived:
                continue
            plan = sb.plan_snapshot((), delta)
            if not isinstance(plan, sb.NewRoot) or not plan.state:
                continue
            blocks = sb.split_root(plan.state)
            if len(blocks) == 1:  # a new room's first state is small; a big one goes alone
                roots.append((room_nid, plan.state, blocks[0], dkey, fx))
        if len(roots) < 2:
            return  # one root costs store_state_txn no more
        stored = await snap_sql.write_roots_txn(conn, [(r, st, b) for r, st, b, _, _ in roots])
        for (_, _, _, dkey, fx), layer in zip(roots, stored, strict=True):
            fx.layers[layer.nid] = layer
            fx.derived[dkey] = layer.nid

    async def membership_changes(
        self, conn: asyncpg.Connection, old: int | None, new: int, fx: WriteEffects
    ) -> MembershipChanges:
        """(new member event NIDs, removed targets, changed targets) between two current
        states, for `memberships`/`invites` (FINISH_EVENT)."""
        if old == new:
            return [], [], []
        co = await self.states.chain(conn, old or 0, fx.layers)
        cn = await self.states.chain(conn, new, fx.layers)
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

    async def apply_redactions_txn(
        self, conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]], fx: WriteEffects
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


def nid_delta(h: PgState, nids: nid_sql.Nids, id_nids: Mapping[str, int]) -> sb.NidState:
    """A handle's delta in NIDs (a removal is 0)."""
    delta: sb.NidState = {}
    for (t, s), eid in h.delta.items():
        if eid and eid not in id_nids:
            raise InvariantViolation(f"state refers to event {eid}, which is not stored")
        delta[(nids.types[t], nids.keys[s])] = id_nids[eid] if eid else 0
    return delta


def event_fields(w: EventWrite, nids: nid_sql.Nids) -> tuple[object, ...]:
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


def remember_after(fx: WriteEffects, w: EventWrite, before_nid: int | None) -> None:
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


def notes_json(notes: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(notes.items())))


__all__ = [
    "EventWriter",
    "MembershipChanges",
    "event_fields",
    "nid_delta",
    "notes_json",
    "remember_after",
]
