"""Stored events read by ID, decoded into the pipeline's `StoredEvent` through the caches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from worker.core.events import Event
from worker.pipeline.ports import StoredEvent
from worker.storage import events as ev_sql
from worker.storage.caches import StoreCaches


def stored_row(
    caches: StoreCaches, r: asyncpg.Record, held: Mapping[str, Event] | None = None
) -> StoredEvent:
    """One row of the events table (with its JSON) as a `StoredEvent`; its NID is learned.

    An event's JSON changes only when it is redacted: unless the row says so, the cached
    event is what decoding the JSON would give (and costs no decoding). `held`: the events
    the read said it had, for which an unredacted row carries no JSON.
    """
    event = None
    if r["redacted_by"] is None:
        event = held.get(r["event_id"]) if held else None
        if event is None:
            event = caches.events.get(r["event_id"])
    if event is None:
        event = ev_sql.decode_event(r["event_id"], r["json"], r["room_version"])
    caches.nid_ids.put(r["event_nid"], r["event_id"])
    caches.id_nids.put(r["event_id"], r["event_nid"])
    return StoredEvent(
        event=event,
        outcome=ev_sql.OUTCOME_NAMES[r["outcome"]],
        reason_code=r["reason_code"],
        reason=r["reason"],
        kind=ev_sql.KIND_NAMES[r["kind"]],
        has_state=r["before_snapshot_nid"] is not None,
        redacted=r["redacted_by"] is not None,
    )


async def stored_events(
    conn: asyncpg.Connection, caches: StoreCaches, event_ids: Sequence[str]
) -> dict[str, tuple[StoredEvent, int | None]]:
    """(stored event, snapshot before it) per known ID; one query."""
    if not event_ids:
        return {}
    rows = await conn.fetch(ev_sql.SELECT_EVENTS_BY_ID, sorted(set(event_ids)))
    out: dict[str, tuple[StoredEvent, int | None]] = {}
    for r in rows:
        out[r["event_id"]] = (stored_row(caches, r), r["before_snapshot_nid"])
    return out


__all__ = ["stored_events", "stored_row"]
