"""The bulk write of a federated join's state and auth chain as outliers (DESIGN §2, §3).

A `send_join` answer is checked whole before anything is stored (`worker.core.joins`:
format, event ID, content hash, auth against each event's own auth events), which is all the
pipeline's outlier path checks. So its events need not cross the input stream one message
each: `PgOutlierStore.store_outliers` writes them in one transaction, under the room's
advisory lock, as exactly the rows the pipeline's run writer stores for outliers
(`worker.storage.run_write`, `events.INSERT_EVENTS`): the room row made if missing, the
names' NIDs, then the event rows with kind `outlier`, outcome `outlier`, the auth events'
NIDs and no snapshot, the canonical JSON, the prev references and the write log, each
table by one COPY (a big room's answer is tens of thousands of rows and megabytes of JSON). The room's current state and
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
from worker.storage.transactions import Database, room_lock_key

_REDACTION = "m.room.redaction"
_OUTLIER_KIND = ev_sql.KIND_CODES["outlier"]
_OUTLIER_OUTCOME = ev_sql.OUTCOME_CODES[Outcome.OUTLIER]
_ATTEMPTS = 3


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
            except asyncpg.UniqueViolationError:
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
        await _copy_rows(conn, room.room_nid, fresh, reserved, names, id_nids)
        return left, made


async def _redaction_targets(conn: asyncpg.Connection, ids: Sequence[str]) -> set[str]:
    """The events among `ids` an accepted stored redaction waits for."""
    if not ids:
        return set()
    rows = await conn.fetch(ev_sql.SELECT_PENDING_REDACTIONS, sorted(set(ids)))
    return {r["target_event_id"] for r in rows}


# The columns `INSERT_EVENTS` writes, in the order the rows below give them.
_EVENT_COLUMNS = (
    "event_nid", "event_id", "room_nid", "type_nid", "state_key_nid", "depth", "kind",
    "outcome", "reason_code", "reason", "membership", "auth_event_nids", "before_snapshot_nid",
)
# What `INSERT_EVENTS` logs per event: the writer and when (the statement's one clock reading
# stands for every row of it).
_WRITER = """
SELECT current_setting('application_name') AS worker, now() AS started,
       clock_timestamp() AS written
"""


async def _copy_rows(
    conn: asyncpg.Connection,
    room_nid: int,
    events: Sequence[Event],
    nids: Sequence[int],
    names: nid_sql.Nids,
    id_nids: dict[str, int],
) -> None:
    """The rows `INSERT_EVENTS` writes for these outliers (`run_write`: the run writer's
    columns for an outlier, `event_fields`), by COPY: events, their JSON, their prev
    references and their write-log rows. An event ID stored meanwhile (only another room's
    v1/v2 event can have it) fails the COPY: `UniqueViolationError`, and the caller retries."""
    writer = await conn.fetchrow(_WRITER)
    if writer is None:
        raise InvariantViolation("the write log's writer and time could not be read")
    rows: list[tuple[object, ...]] = []
    json_rows: list[tuple[int, bytes]] = []
    prev_rows: list[tuple[str, int]] = []
    log_rows: list[tuple[object, ...]] = []
    for e, nid in zip(events, nids, strict=True):
        rows.append((
            nid,
            e.event_id,
            room_nid,
            names.types[e.type],
            names.keys[e.state_key] if e.state_key is not None else 0,
            e.depth,
            _OUTLIER_KIND,
            _OUTLIER_OUTCOME,
            "",
            "",
            ev_sql.membership_code(e),
            sorted({id_nids[a] for a in e.auth_event_ids if a in id_nids}),
            None,
        ))
        json_rows.append((nid, stored_json(e)))
        prev_rows.extend((prev, nid) for prev in dict.fromkeys(e.prev_event_ids))
        log_rows.append((room_nid, nid, writer["worker"], writer["started"], writer["written"]))
    await conn.copy_records_to_table("events", records=rows, columns=_EVENT_COLUMNS)
    await conn.copy_records_to_table("event_json", records=json_rows, columns=("event_nid", "json"))
    await conn.copy_records_to_table(
        "event_prevs", records=prev_rows, columns=("prev_event_id", "event_nid")
    )
    await conn.copy_records_to_table(
        "write_log", records=log_rows,
        columns=("room_nid", "event_nid", "worker", "txn_started", "written"),
    )


__all__ = ["PgOutlierStore"]
