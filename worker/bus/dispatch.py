"""Per-room queues: one item at a time per room, many rooms at once (DESIGN §5).

Every room with work has a FIFO queue and one asyncio task draining it; the task ends when the
queue is empty, so idle rooms cost nothing. The dispatcher counts items (queued + running) so
the consumer can bound how much it fetches, and can wait until everything is done (drain) or
give back what is left (shutdown after the grace period).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from worker.observability.logging import get_logger
from worker.observability.metrics import ROOMS_IN_FLIGHT

T = TypeVar("T")
_log = get_logger(__name__)


class RoomDispatcher(Generic[T]):
    """Runs `process(room_id, item)` for submitted items, in order per room.

    With `process_batch`, a room whose queue holds several items when its task comes round
    hands them over together (up to `max_batch`, in order): `process_batch(room_id, items)`.
    """

    def __init__(
        self,
        process: Callable[[str, T], Awaitable[None]],
        process_batch: Callable[[str, list[T]], Awaitable[None]] | None = None,
        max_batch: int = 1,
    ) -> None:
        self._process = process
        self._process_batch = process_batch
        self._max_batch = max_batch if process_batch is not None else 1
        self._queues: dict[str, deque[T]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running: dict[str, list[T]] = {}
        self._count = 0
        # Replaced on every change; waiters re-check their condition when it fires.
        self._changed = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Items submitted and not finished (queued or running)."""
        return self._count

    @property
    def rooms(self) -> int:
        return len(self._tasks)

    def items(self) -> list[T]:
        """Every unfinished item: the running ones first, then the queued ones."""
        running = [i for items in self._running.values() for i in items]
        return running + [i for q in self._queues.values() for i in q]

    def submit(self, room_id: str, item: T) -> None:
        queue = self._queues.get(room_id)
        if queue is None:
            queue = self._queues[room_id] = deque()
        queue.append(item)
        self._count += 1
        if room_id not in self._tasks:
            self._tasks[room_id] = asyncio.create_task(
                self._drain_room(room_id, queue), name=f"room:{room_id}"
            )
            ROOMS_IN_FLIGHT.inc()

    async def _drain_room(self, room_id: str, queue: deque[T]) -> None:
        try:
            while queue:
                items = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
                self._running[room_id] = items
                try:
                    if len(items) == 1:
                        await self._process(room_id, items[0])
                    else:
                        assert self._process_batch is not None
                        await self._process_batch(room_id, items)
                except Exception:
                    # `process` settles its own failures; reaching here is a bug in it. Keep
                    # the room going: the item stays unacked and JetStream redelivers it.
                    _log.exception("room_item_failed", room_id=room_id)
                finally:
                    del self._running[room_id]
                    self._count -= len(items)
                    self._notify()
        finally:
            # Also on cancellation: forget the room so a later submit starts afresh.
            self._count -= len(queue)
            queue.clear()
            self._queues.pop(room_id, None)
            self._tasks.pop(room_id, None)
            ROOMS_IN_FLIGHT.dec()
            self._notify()

    def notify(self) -> None:
        """Wake the waiters of `wait_for`: for conditions that also depend on outside state."""
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once `condition()` holds; it is re-checked whenever an item finishes."""
        while not condition():
            await self._changed.wait()

    async def wait_below(self, limit: int) -> None:
        """Return once fewer than `limit` items are in flight."""
        await self.wait_for(lambda: self._count < limit)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is in flight; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self.wait_for(lambda: self._count == 0)
        except TimeoutError:
            return False
        return True

    async def cancel(self) -> list[T]:
        """Stop every room now; returns the items that were not finished."""
        left = self.items()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return left


__all__ = ["RoomDispatcher"]
