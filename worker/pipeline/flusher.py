"""Step 9 of DESIGN §2 off the critical path: publishing a room's outbox in the background.

The outbox row is committed with the event (step 8), so once the transaction is in nothing
can be lost: publishing is the relay's job, and a relay sweep republishes whatever a crash
left unsent. Waiting for the publish before taking the room's next event would put three
more round trips (read unsent rows, publish, mark sent) on every event's path; instead the
flushes run in the background, and events committed meanwhile are picked up by one more
pass, so under load one pass publishes many events' outputs. Order within a room is kept by
the relay (rows by commit order, one flush per room at a time).

A relay that works in the background itself (`BackgroundOutboxRelay`: many rooms per read
and per update, see `worker.bus.outbox`) is only kicked. Otherwise each room has at most one
flush running.
"""

from __future__ import annotations

import asyncio

import structlog

from worker.observability.metrics import measure
from worker.pipeline.ports import BackgroundOutboxRelay, OutboxRelay

log = structlog.get_logger(__name__)


class BackgroundFlusher:
    def __init__(self, relay: OutboxRelay) -> None:
        self.relay = relay
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._background: BackgroundOutboxRelay | None = (
            relay if isinstance(relay, BackgroundOutboxRelay) else None
        )

    def kick(self, room_id: str) -> None:
        """Make sure the room's committed outputs get published soon."""
        if self._background is not None:
            self._background.kick(room_id)
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

    @property
    def pending(self) -> int:
        background = self._background.pending if self._background is not None else 0
        return len(self._tasks) + background

    async def wait(self) -> None:
        """Until every flush started so far (and the passes they owe) has finished."""
        if self._background is not None:
            await self._background.settle()
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
