"""`Coalescer`: concurrent small requests merged into shared round trips.

Many rooms are handled at once, and each waits on its own small read or write. Each one
alone pays a round trip whose fixed cost (a pool checkout, BEGIN and COMMIT, a WAL flush,
the send itself, the statement's overhead in PostgreSQL) is most of its cost. A `Coalescer`
runs at most `concurrency` calls of `run` at a time; requests that arrive while every slot
is busy wait, and go together in the next call (group commit). Under no load a request runs
at once, so nothing waits for a batch to fill; under load, batches grow by themselves.

A request may carry a key: requests with the same key never share a call nor run at the
same time, and run in the order they were submitted (a room's writes commit in order).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(slots=True, eq=False)
class _Pending(Generic[Req, Resp]):
    request: Req
    key: Hashable | None
    future: asyncio.Future[Resp]


class Coalescer(Generic[Req, Resp]):
    """`await submit(request)` answers with `run`'s answer for that request.

    `run(requests)` returns one answer per request, in order; an exception in that list is
    raised to that request's submitter alone. If `run` itself raises, every request of the
    call gets the exception.
    """

    def __init__(
        self,
        run: Callable[[list[Req]], Awaitable[Sequence[Resp | BaseException]]],
        *,
        concurrency: int,
        max_batch: int,
    ) -> None:
        if concurrency < 1 or max_batch < 1:
            raise ValueError("concurrency and max_batch must be at least 1")
        self._run = run
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._pending: deque[_Pending[Req, Resp]] = deque()
        self._busy_keys: set[Hashable] = set()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.requests = 0

    async def submit(self, request: Req, key: Hashable | None = None) -> Resp:
        future: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(request, key, future))
        self._start()
        # A submitter cancelled before its request was taken simply drops it (`_take` skips
        # done futures); one cancelled while its call runs leaves the call to finish.
        return await future

    def _start(self) -> None:
        while self._running < self._concurrency and self._pending:
            batch = self._take()
            if not batch:
                return
            self._running += 1
            # A fresh context: the call serves many submitters and must not run with the
            # context variables of whichever one happened to start it.
            task = asyncio.create_task(self._call(batch), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Pending[Req, Resp]]:
        batch: list[_Pending[Req, Resp]] = []
        left: deque[_Pending[Req, Resp]] = deque()
        # Keys that may not join this call: busy in another, already in this one, or behind
        # an earlier request of theirs that had to wait (order per key).
        blocked: set[Hashable] = set(self._busy_keys)
        while self._pending:
            p = self._pending.popleft()
            if p.future.done():
                continue
            if len(batch) >= self._max_batch or (p.key is not None and p.key in blocked):
                left.append(p)
                if p.key is not None:
                    blocked.add(p.key)
                continue
            batch.append(p)
            if p.key is not None:
                blocked.add(p.key)
                self._busy_keys.add(p.key)
        self._pending = left
        return batch

    async def _call(self, batch: list[_Pending[Req, Resp]]) -> None:
        self.calls += 1
        self.requests += len(batch)
        try:
            try:
                answers: Sequence[Resp | BaseException] = await self._run(
                    [p.request for p in batch]
                )
                if len(answers) != len(batch):
                    raise RuntimeError(f"{len(answers)} answers to {len(batch)} requests")
            except asyncio.CancelledError:
                for p in batch:
                    p.future.cancel()
                raise
            except Exception as e:
                # One instance each: an exception raised in several tasks would have its
                # traceback and context rewritten by each of them.
                answers = [e, *(_copy_exception(e) for _ in batch[1:])]
            for p, answer in zip(batch, answers, strict=True):
                if p.future.done():
                    continue
                if isinstance(answer, BaseException):
                    p.future.set_exception(answer)
                else:
                    p.future.set_result(answer)
        finally:
            self._running -= 1
            for p in batch:
                if p.key is not None:
                    self._busy_keys.discard(p.key)
            self._start()

    async def close(self) -> None:
        """Wait for the calls under way (requests not yet taken are left to their waiters)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _copy_exception(e: Exception) -> Exception:
    try:
        twin = copy.copy(e)
    except Exception:
        return RuntimeError(f"a shared call failed: {e!r}")
    twin.__cause__ = e.__cause__
    return twin.with_traceback(e.__traceback__)


__all__ = ["Coalescer"]
