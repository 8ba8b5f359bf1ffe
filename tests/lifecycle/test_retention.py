"""The retention job: every room's old history purged over bounded runs, with metrics and
progress in the log."""

from __future__ import annotations

import asyncpg
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tests.lifecycle.rooms import feed, long_room, pipeline_over
from worker.perform.retention import Retention, RetentionSettings
from worker.storage import PostgresStore
from worker.storage.purge import PostgresPurger

DAY_MS = 86_400_000


def _purged(table: str) -> float:
    value = REGISTRY.get_sample_value(
        "roomserver_purged_rows_total", {"op": "retention", "table": table}
    )
    return value or 0.0


async def test_retention_purges_every_room_in_bounded_runs(
    pool: asyncpg.Pool, store: PostgresStore
) -> None:
    rooms = [long_room(f"!r{i}:test", 200) for i in range(3)]
    for b in rooms:
        await feed(pipeline_over(store), b)
    cutoff = rooms[0].events[list(rooms[0].events)[150]]["origin_server_ts"]
    job = Retention(PostgresPurger(store), RetentionSettings(days=2, events_per_run=120,
                                                             interval=1.0))
    counted = _purged("events")
    reports = []
    with capture_logs() as logs:
        for _ in range(20):
            report = await job.run_once(now_ms=cutoff + 2 * DAY_MS)
            reports.append(report)
            if report.finished and report.events == 0:
                break
    assert all(r.events <= 120 for r in reports)
    assert sum(r.events for r in reports) > 300
    assert len([r for r in reports if r.events]) >= 3
    # Every room keeps its newer events and nothing older than the cutoff but what state
    # and auth chains need.
    for b in rooms:
        newer = [e for e, pdu in b.events.items() if pdu["origin_server_ts"] >= cutoff]
        left = {r["event_id"] for r in await pool.fetch(
            "SELECT e.event_id FROM events e JOIN rooms r USING (room_nid) WHERE r.room_id = $1",
            b.room_id)}
        assert set(newer) <= left
        assert len(left) < 120
    assert _purged("events") - counted == sum(r.events for r in reports)
    assert any(e["event"] == "retention_progress" for e in logs)
    # Nothing left to do: a further run deletes nothing.
    again = await job.run_once(now_ms=cutoff + 2 * DAY_MS)
    assert again.events == 0


async def test_one_worker_at_a_time(store: PostgresStore) -> None:
    a, b = PostgresPurger(store), PostgresPurger(store)
    async with a.retention_turn() as first, b.retention_turn() as second:
        assert first and not second
    async with b.retention_turn() as later:
        assert later
