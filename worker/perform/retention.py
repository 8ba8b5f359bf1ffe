"""History retention (`HISTORY_RETENTION_DAYS`, off by default): `purge_history` of every
room, on a schedule, a bounded amount per run.

Each run (every `RETENTION_INTERVAL_SECONDS`) visits the rooms in room ID order from where
the last run stopped, purging each one's events older than the retention period, until it
has deleted `RETENTION_EVENTS_PER_RUN` events or visited every room; the next run goes on
from there, so a big backlog is worked off over several runs without one long pause. One
worker at a time runs it (`retention_turn`). Progress goes to the log (`retention_progress`
per room that lost rows, `retention_run` per run) and to the metrics: rows and bytes by table
under `op="retention"` (`roomserver_purged_rows_total`, `roomserver_purged_bytes_total`) and
`roomserver_retention_runs_total` by result.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from worker.observability.logging import get_logger
from worker.observability.metrics import RETENTION_RUNS
from worker.perform.admin import HistoryPurged, PurgeRefused

_log = get_logger(__name__)
_DAY_MS = 86_400_000
_PAGE = 100


class RetentionPurger(Protocol):
    async def rooms_after(self, after: str, limit: int) -> list[str]: ...

    def retention_turn(self) -> AbstractAsyncContextManager[bool]: ...

    async def purge_history(
        self, room_id: str, *, before_ts: int | None = None, limit: int | None = None,
        op: str = "history",
    ) -> HistoryPurged: ...


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    days: int
    events_per_run: int
    interval: float

    @classmethod
    def of(cls, settings: Any) -> RetentionSettings:
        return cls(settings.history_retention_days, settings.retention_events_per_run,
                   settings.retention_interval_seconds)


@dataclass
class RunReport:
    rooms: int = 0
    events: int = 0
    rows: int = 0
    bytes: int = 0
    finished: bool = False


class Retention:
    """The job's state between runs: where the last run stopped."""

    def __init__(self, purger: RetentionPurger, settings: RetentionSettings) -> None:
        self._purger = purger
        self._settings = settings
        self._after = ""

    async def run_once(self, now_ms: int | None = None) -> RunReport:
        """One bounded run; `finished` once it has visited the last room."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        before_ts = now - self._settings.days * _DAY_MS
        budget = self._settings.events_per_run
        report = RunReport()
        while budget > 0:
            rooms = await self._purger.rooms_after(self._after, _PAGE)
            if not rooms:
                self._after, report.finished = "", True
                break
            for room_id in rooms:
                try:
                    done = await self._purger.purge_history(
                        room_id, before_ts=before_ts, limit=budget, op="retention")
                except PurgeRefused:
                    done = None  # purged meanwhile
                report.rooms += 1
                if done is not None:
                    n = done.removed.rows.get("events", 0)
                    budget -= n
                    report.events += n
                    report.rows += sum(done.removed.rows.values())
                    report.bytes += sum(done.removed.bytes.values())
                    if n:
                        _log.info("retention_progress", room_id=room_id, events=n,
                                  remaining=done.remaining, run_events=report.events)
                    if done.remaining:
                        break  # the budget ran out inside this room: start there next time
                self._after = room_id
                if budget <= 0:
                    break
        return report


async def run_retention(purger: RetentionPurger, settings: RetentionSettings) -> None:
    """Run `Retention` every `settings.interval` seconds, forever (a background task)."""
    job = Retention(purger, settings)
    while True:
        try:
            async with purger.retention_turn() as mine:
                if mine:
                    report = await job.run_once()
                    RETENTION_RUNS.labels("done" if report.finished else "partial").inc()
                    _log.info("retention_run", rooms=report.rooms, events=report.events,
                              rows=report.rows, bytes=report.bytes, finished=report.finished)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            RETENTION_RUNS.labels("failed").inc()
            _log.warning("retention_failed", error=repr(exc))
        await asyncio.sleep(settings.interval)
