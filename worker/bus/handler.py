"""The input handler as the consumer calls it: the port the pipeline implements.

`InputConsumer` hands each decoded input to an `InputHandler` (one at a time per room) and,
when the handler can, a room's queued inputs together to a `BatchInputHandler`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from worker.messages.input import InputRoomEvent
from worker.messages.reply import HandleResult


class InputHandler(Protocol):
    """The pipeline, as the consumer calls it (implemented in `worker.pipeline`).

    Returns the outcome for every event it could judge (rejections are values). Raises
    `worker.errors.RetryableError` for transient infrastructure failures (the input is retried
    with back-off) and `PermanentError` when retrying cannot help (dead-lettered). `delivery`
    is JetStream's delivery count (1 on first delivery); `in_progress` tells JetStream the
    message is still being worked on (the consumer also does so periodically on its own).
    """

    async def handle(
        self,
        room_id: str,
        input: InputRoomEvent,
        *,
        delivery: int,
        in_progress: Callable[[], Awaitable[None]],
    ) -> HandleResult: ...


# One queued input handed to `BatchInputHandler.handle_batch`: (input, delivery count,
# `in_progress` callable).
QueuedInput = tuple[InputRoomEvent, int, Callable[[], Awaitable[None]] | None]


@runtime_checkable
class BatchInputHandler(InputHandler, Protocol):
    """A handler that can take a room's queued inputs together (one transaction for all).

    Returns one result per input, in order, once all are committed. If it raises, none of
    them is settled: the consumer hands them to `handle` one by one (which retries,
    dead-letters and answers each on its own), so a batch never changes an outcome.
    """

    async def handle_batch(
        self, room_id: str, items: Sequence[QueuedInput]
    ) -> list[HandleResult]: ...


__all__ = ["BatchInputHandler", "InputHandler", "QueuedInput"]
