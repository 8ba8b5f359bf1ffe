"""The bulk write of a federated join's state and auth chain as outliers (DESIGN §2, §3).

A `send_join` answer is checked whole before anything is stored (`worker.core.joins`:
format, event ID, content hash, auth against each event's own auth events), which is all the
pipeline's outlier path checks. So its events need not cross the input stream one message
each: `PgOutlierStore.store_outliers` writes them in one transaction, under the room's
advisory lock, as exactly the rows the pipeline's run writer stores for outliers
(`worker.storage.run_write`): the room row made if missing, the names' NIDs, then
`INSERT_EVENTS` with kind `outlier`, outcome `outlier`, the auth events' NIDs, no snapshot,
the canonical JSON, the prev references and the write log. The room's current state and
extremities are not touched (an outlier changes neither), so the pipeline's cached view of
the room stays true and its write fence is not tripped.

What the pipeline would store otherwise than a plain insert is left to it: the IDs are
returned, for the caller to submit as `outlier` inputs before the join. That is an event
already stored (its row stays as it is: the duplicate rule), a redaction (paired with its
target when stored), an event a stored redaction waits for (stored redacted), every event
citing one of those (its auth links must name stored rows), and everything when the room is
stored with another version than the answer's.

Idempotent: events stored already are skipped, so a retried join stores only what is
missing. Crash-safe: one transaction, and outliers alone are a consistent store (the room
keeps no state and no extremities until the join is accepted).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from worker.core.events import Event
from worker.core.outcomes import Outcome
from worker.errors import InvariantViolation
from worker.pipeline.events import stored_json
from worker.storage import events as ev_sql
from worker.storage import nids as nid_sql
from worker.storage import rooms as room_sql
from worker.storage.params import nid_array
from worker.storage.transactions import Database, room_lock_key

_REDACTION = "m.room.redaction"
_OUTLIER_KIND = ev_sql.KIND_CODES["outlier"]
_OUTLIER_OUTCOME = ev_sql.OUTCOME_CODES[Outcome.OUTLIER]
# Rows per INSERT_EVENTS: bounds one statement's parameters (a big room's answer is tens of
# megabytes of JSON) while keeping the round trips few.
_CHUNK = 5000
_ATTEMPTS = 3


class OutliersRaced(Exception):
    """An event meant to be inserted was found stored by the insert itself."""


class PgOutlierStore:
    """Implements `worker.perform.remote.OutlierStore` over PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.db = Database(pool)
        # Names are append-only: a mapping once committed is valid forever.
        self.nids = nid_sql.NidCache()

    async def store_outliers(
        self, room_id: str, room_version: str, events: Sequence[Event]
    ) -> list[str]:
        """Store `events` (checked, in auth order: each one's auth events before it) as
        outliers of `room_id`; the IDs of those left to the input stream, in order."""
        if not events:
            return []
        for attempt in range(_ATTEMPTS):
            try:
                left, fresh = await self.db.txn(
                    "store_outliers",
                    lambda c: self._store_txn(c, room_id, room_version, events),
                    locks=[room_lock_key(room_id)],
                )
            except OutliersRaced:
                # Only an event ID shared with another room's event (v1/v2 carry their IDs)
                # gets here: the next attempt reads it as stored.
                if attempt == _ATTEMPTS - 1:
                    raise
                continue
            self.nids.learn(fresh)
            return left
        raise AssertionError("unreachable")

    async def _store_txn(
        self, conn: asyncpg.Connection, room_id: str, room_version: str, events: Sequence[Event]
    ) -> tuple[list[str], nid_sql.Nids]:
        row = await conn.fetchrow(room_sql.UPSERT_ROOM, room_id, room_version)
        if row is None:
            raise InvariantViolation(f"room {room_id} could not be created")
        room = room_sql.room_row(row)
        if room.version != room_version:
            # The pipeline validates against the stored version: let it judge each event.
            return [e.event_id for e in events], nid_sql.Nids()
        ids = [e.event_id for e in events]
        stored = await ev_sql.event_nids(conn, ids)
        unstored = [i for i in ids if i not in stored]
        waiting = await _redaction_targets(conn, unstored)
        left: list[str] = []
        deferred: set[str] = set()
        fresh: list[Event] = []
        for e in events:
            if e.event_id in stored:
                # The pipeline's duplicate: it would leave the stored row as it is.
                continue
            if (
                e.type == _REDACTION
                or e.event_id in waiting
                or any(a in deferred for a in e.auth_event_ids)
            ):
                deferred.add(e.event_id)
                left.append(e.event_id)
            else:
                fresh.append(e)
        if not fresh:
            return left, nid_sql.Nids()
        names, made = await nid_sql.get_or_create_txn(
            conn,
            self.nids,
            {e.type for e in fresh},
            {e.state_key for e in fresh if e.state_key is not None},
        )
        reserved = await ev_sql.reserve_event_nids(conn, len(fresh))
        id_nids = dict(stored)
        for e, nid in zip(fresh, reserved, strict=True):
            id_nids[e.event_id] = nid
        for start in range(0, len(fresh), _CHUNK):
            chunk = fresh[start : start + _CHUNK]
            rows = _rows(room.room_nid, chunk, reserved[start : start + _CHUNK], names, id_nids)
            inserted = await conn.fetchval(ev_sql.INSERT_EVENTS, *rows)
            if inserted != len(chunk):
                raise OutliersRaced(f"{len(chunk) - inserted} events were stored meanwhile")
        return left, made


async def _redaction_targets(conn: asyncpg.Connection, ids: Sequence[str]) -> set[str]:
    """The events among `ids` an accepted stored redaction waits for."""
    if not ids:
        return set()
    rows = await conn.fetch(ev_sql.SELECT_PENDING_REDACTIONS, sorted(set(ids)))
    return {r["target_event_id"] for r in rows}


def _rows(
    room_nid: int,
    events: Sequence[Event],
    nids: Sequence[int],
    names: nid_sql.Nids,
    id_nids: dict[str, int],
) -> tuple[list[object], ...]:
    """INSERT_EVENTS's sixteen arguments for outliers: the columns the run writer gives an
    outlier (`event_fields`, auth NIDs as a literal, no snapshot), then the prev references
    and the JSON."""
    cols: tuple[list[object], ...] = tuple([] for _ in range(16))
    (c_nid, c_id, c_type, c_key, c_depth, c_kind, c_outcome, c_code, c_reason, c_member,
     c_auth, c_before, c_room, c_prev_ids, c_prev_nids, c_json) = cols
    for e, nid in zip(events, nids, strict=True):
        c_nid.append(nid)
        c_id.append(e.event_id)
        c_type.append(names.types[e.type])
        c_key.append(names.keys[e.state_key] if e.state_key is not None else 0)
        c_depth.append(e.depth)
        c_kind.append(_OUTLIER_KIND)
        c_outcome.append(_OUTLIER_OUTCOME)
        c_code.append("")
        c_reason.append("")
        c_member.append(ev_sql.membership_code(e))
        c_auth.append(nid_array(sorted({id_nids[a] for a in e.auth_event_ids if a in id_nids})))
        c_before.append(None)
        c_room.append(room_nid)
        c_json.append(stored_json(e))
        for prev in dict.fromkeys(e.prev_event_ids):
            c_prev_ids.append(prev)
            c_prev_nids.append(nid)
    return cols


__all__ = ["OutliersRaced", "PgOutlierStore"]
