"""The write of a run of new events with a fixed number of round trips.

Events not stored yet, with no redactions to apply and not redactions themselves, are most of
what a busy room writes (`new_event_run` finds them). Their NIDs are reserved up front, their
snapshots planned (and new ones written) in order, then every row of the run is inserted by
one statement (`INSERT_EVENTS`) and the room's end state, memberships and outbox rows by one
more (`FINISH_EVENT`, or `FINISH_ROOMS` for several rooms of a group commit). A run stores
exactly what `EventWriter.persist_txn` would, write by write.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg

from worker.errors import InvariantViolation, RetryableError
from worker.pipeline.ports import EventWrite, OutputRecord
from worker.storage import events as ev_sql
from worker.storage import finish as finish_sql
from worker.storage import nids as nid_sql
from worker.storage import rooms as room_sql
from worker.storage.caches import WriteEffects
from worker.storage.event_write import (
    EventWriter,
    MembershipChanges,
    event_fields,
    notes_json,
    remember_after,
)
from worker.storage.fence import RoomView
from worker.storage.handles import own, rebase
from worker.storage.params import nid_array


class StaleWrite(RetryableError):
    """A write meant to insert an event found it already stored: recompute and retry."""

    code = "stale_write"


class RunWriter:
    """Runs of new events, written with the shared pieces of `EventWriter`."""

    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer

    async def persist_run_txn(
        self,
        conn: asyncpg.Connection,
        run: Sequence[EventWrite],
        fx: WriteEffects,
        fence: RoomView | None,
    ) -> None:
        """A run of new events of one room (`new_event_run`), as the module says."""
        room, reserved = await self.writer.room_txn(conn, run[0], fx, len(run), fence)
        types, keys, refs = run_names(run)
        nids = await self.writer.nids_txn(conn, types, keys, fx)
        if not reserved:
            reserved = await ev_sql.reserve_event_nids(conn, len(run))
        id_nids = fx.id_nids
        for w, nid in zip(run, reserved, strict=True):
            id_nids[w.event.event_id] = nid
        id_nids.update(await self.writer.ref_nids(conn, refs - id_nids.keys()))
        rows = RunRows()
        await self.plan_run(conn, room, run, reserved, nids, id_nids, fx, rows)
        await write_rows(conn, rows)
        for w in run:
            fx.inserted[w.event.event_id] = w.event

    async def plan_run(
        self,
        conn: asyncpg.Connection,
        room: room_sql.RoomRow,
        run: Sequence[EventWrite],
        reserved: Sequence[int],
        nids: nid_sql.Nids,
        id_nids: Mapping[str, int],
        fx: WriteEffects,
        rows: RunRows,
    ) -> None:
        """Store the snapshots a run needs, in order, and add its rows and its room's end
        state to `rows`; `fx.room` becomes the room as the run leaves it."""
        current_nid = room.current_snapshot_nid
        current_changed = False
        extremities = room.extremities
        notes: dict[str, str] = {}
        outputs: list[OutputRecord] = []
        changes: list[MembershipChanges] = []
        for w, nid in zip(run, reserved, strict=True):
            e = w.event
            before = own(w.state_before) if w.state_before is not None else None
            current = own(w.current_state) if w.current_state is not None else None
            before_nid = None
            if before is not None:
                before_nid = await self.writer.store_state_txn(
                    conn, room.room_nid, before, nids, id_nids, fx
                )
                remember_after(fx, w, before_nid)
            fx.stale_events.add(e.event_id)
            if current is not None:
                if before is not None and before_nid is not None:
                    current = rebase(current, before, before_nid)
                new_current = await self.writer.store_state_txn(
                    conn, room.room_nid, current, nids, id_nids, fx
                )
                changes.append(await self.writer.membership_changes(conn, current_nid, new_current, fx))
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
                    *event_fields(w, nids),
                    nid_array(auth),
                    before_nid,
                    room.room_nid,
                    w.event_json,
                ),
                e.prev_event_ids,
            )
        memberships_one_by_one(room.room_nid, changes, rows)
        rows.finishes.append(
            (
                room.room_nid,
                current_changed,
                current_nid,
                extremities if any(w.extremities is not None for w in run) else None,
                notes_json(notes),
                *merged_changes(changes),
                [o.output_id for o in outputs],
                [o.output_type for o in outputs],
                [o.payload for o in outputs],
                room.room_id,
                None,
                None,
            )
        )
        fx.room = room_sql.RoomRow(
            room.room_nid, room.room_id, room.version, current_nid, list(extremities)
        )



@dataclass
class RunRows:
    """What `write_rows` writes: event rows (INSERT_EVENTS columns) and prev references of
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


async def write_rows(conn: asyncpg.Connection, rows: RunRows) -> None:
    """Insert the rows (one statement), then the rooms' end states (one round trip)."""
    expected = len(rows.cols[0])
    inserted = await conn.fetchval(ev_sql.INSERT_EVENTS, *rows.cols[:13], *rows.prevs, rows.cols[13])
    if inserted != expected:
        # Written meanwhile by someone else (a stale owner, despite the fence): let the
        # one-by-one path, which upserts, decide.
        raise StaleWrite(f"{expected - inserted} of {expected} events were already stored")
    if len(rows.finishes) == 1:
        await conn.execute(finish_sql.FINISH_EVENT, *rows.finishes[0])
    elif len({f[0] for f in rows.finishes}) == len(rows.finishes):
        # Several rooms, each finishing once: one statement for all of them.
        await conn.execute(finish_sql.FINISH_ROOMS, *finish_rooms_args(rows.finishes))
    elif rows.finishes:
        # A room finishing more than once (`memberships_one_by_one`): in order, one
        # statement each, in one round trip (asyncpg sends every argument set at once).
        await conn.executemany(finish_sql.FINISH_EVENT, rows.finishes)


def finish_rooms_args(finishes: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
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


def memberships_one_by_one(
    room_nid: int, changes: list[MembershipChanges], rows: RunRows
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


def run_names(run: Sequence[EventWrite]) -> tuple[set[str], set[str], set[str]]:
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
                for (t, k), v in own(h).delta.items():
                    types.add(t)
                    keys.add(k)
                    if v:
                        refs.add(v)
        refs.update(e.auth_event_ids)
    return types, keys, refs


def layers_wanted(writes: Sequence[EventWrite]) -> int:
    """Snapshot NIDs to reserve for a run's new layers: one per state handle it carries
    with changes (an upper bound; when short, a layer is written at once instead)."""
    handles = (h for w in writes for h in (w.state_before, w.current_state) if h is not None)
    return sum(1 for h in handles if own(h).delta)


def is_one_run(writes: Sequence[EventWrite]) -> bool:
    """Whether a room's writes are one run of new events (and may join a group's run)."""
    return len(new_event_run(writes, 0, {})) == len(writes)


def new_event_run(
    writes: Sequence[EventWrite], start: int, written: Container[str]
) -> Sequence[EventWrite]:
    """The longest run of writes from `start` that `persist_run_txn` can take: events
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


def merged_changes(changes: Sequence[MembershipChanges]) -> MembershipChanges:
    """The membership changes of a run whose writes each touch different targets."""
    up: list[int] = []
    gone: list[int] = []
    targets: list[int] = []
    for u, d, t in changes:
        up.extend(u)
        gone.extend(d)
        targets.extend(t)
    return up, gone, targets


__all__ = [
    "RunRows",
    "RunWriter",
    "StaleWrite",
    "is_one_run",
    "layers_wanted",
    "new_event_run",
    "run_names",
    "write_rows",
]
