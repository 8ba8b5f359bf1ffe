"""Reads for the room inspector: one room's events, decisions and the states around merges.

Everything goes through the schema of `schemas/sql/` and the store's own snapshot reads
(`PostgresStore`, `PostgresQueryReads`), so the inspector shows exactly what the worker
stored. Meant for operators on one room at a time: it loads the whole room, so `limit` caps
how many events (the most recent by arrival) are read.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import msgspec

from worker.config import Settings
from worker.core.events import Event, StateKey
from worker.core.versions import rules_for
from worker.inspect.model import EventInfo, RoomDump
from worker.messages.errors import ErrorCode
from worker.storage import rooms as room_sql
from worker.storage.events import KIND_NAMES, OUTCOME_NAMES
from worker.storage.query_reads import PostgresQueryReads
from worker.storage.store import PostgresStore

SELECT_ROOM_EVENTS = """
SELECT * FROM (
    SELECT e.event_nid, e.event_id, e.kind, e.outcome, e.reason_code, e.reason, e.redacted_by,
           e.before_snapshot_nid IS NOT NULL AS has_state, j.json
    FROM events e
    JOIN event_json j ON j.event_nid = e.event_nid
    JOIN rooms r ON r.room_nid = e.room_nid
    WHERE r.room_id = $1
    ORDER BY e.event_nid DESC
    LIMIT $2
) recent ORDER BY event_nid
"""

# Merges whose conflicts are worked out (the most recent ones).
MAX_MERGES = 200

_decoder = msgspec.json.Decoder(dict[str, Any])


class InspectError(Exception):
    """The room cannot be inspected; `code` is one of the micro service's error codes."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


async def room_ids(pool: asyncpg.Pool[Any]) -> list[str]:
    return [r["room_id"] for r in await pool.fetch(room_sql.SELECT_ROOM_IDS)]


async def load_room(pool: asyncpg.Pool[Any], room_id: str, limit: int = 5000) -> RoomDump:
    """The room as stored; raises `InspectError("not_found")` if it is not known."""
    room = await pool.fetchrow(room_sql.SELECT_ROOM_SUMMARY, room_id)
    if room is None:
        raise InspectError("not_found", f"the roomserver does not know {room_id}")
    rules = rules_for(room["room_version"])
    if rules is None:
        raise InspectError(
            "internal", f"the room is stored with unknown room version {room['room_version']!r}"
        )
    infos: list[EventInfo] = []
    for row in await pool.fetch(SELECT_ROOM_EVENTS, room_id, limit):
        pdu = _decoder.decode(bytes(row["json"]))
        infos.append(
            EventInfo(
                event=Event(pdu, row["event_id"], rules),
                kind=KIND_NAMES.get(row["kind"], "?"),
                outcome=OUTCOME_NAMES[row["outcome"]].value if row["outcome"] in OUTCOME_NAMES
                else "invalid",
                reason_code=row["reason_code"],
                reason=row["reason"],
                has_state=bool(row["has_state"]),
                redacted_by=row["redacted_by"],
            )
        )
    store = PostgresStore(pool)
    reads = PostgresQueryReads(pool, store)
    current: dict[StateKey, str] = {}
    handle = await store.current_state(room_id)
    if handle is not None:
        current = await store.materialize(handle)
    notes = room["notes"]
    notes = json.loads(notes) if isinstance(notes, str) else dict(notes or {})
    return RoomDump(
        room_id=room_id,
        version=room["room_version"],
        extremities=tuple(room["extremities"] or ()),
        events=tuple(infos),
        current_state=current,
        merge_inputs=await _merge_inputs(store, reads, infos),
        notes={str(k): str(v) for k, v in notes.items()},
    )


async def _merge_inputs(
    store: PostgresStore, reads: PostgresQueryReads, infos: list[EventInfo]
) -> dict[str, tuple[list[dict[StateKey, str]], dict[StateKey, str]]]:
    """For each event with several prev events and a stored state: the state after each prev
    (those that have one) and the state before the event, i.e. what resolution produced."""
    wanted = [i for i in infos if len(i.event.prev_event_ids) > 1 and i.has_state]
    # Each side is a whole state: in a big room with many merges, only the latest are read.
    wanted = wanted[-MAX_MERGES:]
    if not wanted:
        return {}
    prev_ids = sorted({p for i in wanted for p in i.event.prev_event_ids})
    handles = await store.state_after(prev_ids)
    after = {eid: await store.materialize(h) for eid, h in sorted(handles.items())}
    before = await reads.state_before([i.event_id for i in wanted], None)
    out: dict[str, tuple[list[dict[StateKey, str]], dict[StateKey, str]]] = {}
    for info in wanted:
        sides = [after[p] for p in info.event.prev_event_ids if p in after]
        if len(sides) > 1 and info.event_id in before:
            out[info.event_id] = (sides, before[info.event_id])
    return out




def database_dsn(settings: Settings, override: str | None = None) -> str:
    """The DSN to read: `override`, else DATABASE_URL, else the embedded server that
    `roomserver run` starts (its database is `roomserver`)."""
    if override:
        return override
    if settings.database.url:
        return settings.database.url
    return f"postgresql://postgres@127.0.0.1:{settings.database.embedded_port}/roomserver"


async def read_room(dsn: str, room_id: str | None, limit: int = 5000) -> RoomDump | list[str]:
    """The room `room_id`, or when it is None the IDs of every known room."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        if room_id is None:
            return await room_ids(pool)
        return await load_room(pool, room_id, limit)
    finally:
        await pool.close()


__all__ = ["InspectError", "database_dsn", "load_room", "read_room", "room_ids"]
