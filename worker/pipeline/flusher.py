"""Step 9 of DESIGN §2 off the critical path: publishing a room's outbox in the background.

The outbox row is committed with the event (step 8), so once the transaction is in nothing
can be lost: publishing is the relay's job, and a relay sweep republishes whatever a crash
left unsent. Waiting for the publish before taking the room's next event would put three
more round trips (read unsent rows, publish, mark sent) on every event's path; instead the
flushes run in the background, and events committed meanwhile are picked up by one more
pass, so under load one pass publishes many events' outputs. Order within a room is kept by
the relay (rows by commit order, one flush per room at a time).

With a relay that flushes many rooms at once (`BatchOutboxRelay`), one loop serves every
room: each pass takes all the rooms kicked since the last one, so with many busy rooms the
outbox costs one read and one update per pass instead of per room and event. Otherwise each
room has at most one flush running.
"""

from __future__ import annotations

import asyncio

import structlog

from worker.observability.metrics import measure
from worker.pipeline.ports import BatchOutboxRelay, OutboxRelay

log = structlog.get_logger(__name__)


class BackgroundFlusher:
    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        # The one loop of a batch relay, and the rooms kicked since its last pass began.
        self._batch: BatchOutboxRelay | None = relay if isinstance(relay, BatchOutboxRelay) else None
        self._loop: asyncio.Task[None] | None = None
        self._kicked: set[str] = set()

    def kick(self, room_id: str) -> None:
        """Make sure the room's committed outputs get published soon."""
        if self._batch is not None:
            self._kicked.add(room_id)
            if self._loop is None:
                self._loop = asyncio.create_task(self._run_batches(self._batch), name="flush")
            return
        if room_id in self._tasks:
            self._again.add(room_id)
            return
        self._tasks[room_id] = asyncio.create_task(self._run(room_id), name=f"flush {room_id}")

    async def _run(self, room_id: str) -> None:
        try:
            while True:
                self._again.discard(room_id)
                try:
                    with measure("publish"):
                        await self.relay.flush(room_id)
                except Exception as exc:
                    log.warning("outbox_flush_failed", room_id=room_id, error=repr(exc))
                    return
                if room_id not in self._again:
                    return
        finally:
            del self._tasks[room_id]

    async def _run_batches(self, relay: BatchOutboxRelay) -> None:
        try:
            while self._kicked:
                rooms, self._kicked = sorted(self._kicked), set()
                try:
                    with measure("publish"):
                        await relay.flush_rooms(rooms)
                except Exception as exc:
                    # What is left unsent is the next pass's, or the relay's sweep's.
                    log.warning("outbox_flush_failed", rooms=len(rooms), error=repr(exc))
        finally:
            self._loop = None

    @property
    def pending(self) -> int:
        return len(self._tasks) + len(self._kicked) + (self._loop is not None)

    async def wait(self) -> None:
        """Until every flush started so far (and the passes they owe) has finished."""
        while self._tasks or self._loop is not None:
            waiting: list[asyncio.Task[None]] = list(self._tasks.values())
            if self._loop is not None:
                waiting.append(self._loop)
            await asyncio.gather(*waiting, return_exceptions=True)
