"""`AckConfirmations`: one confirmed ack per burst of a shard's acks, not one per message.

The settler replies to a producer only once its input's ack has landed (a confirmed ack,
nats-py's `ack_sync`: a request the server answers). JetStream applies the acks of one
consumer in the order they arrive, so a confirmation of the last ack of several says that
all of them have landed. With many rooms of a shard settling at once (one event each, as
when every room has one perform in flight), a confirmation per message is a request per
event for NATS and the worker; here the acks that arrive while a confirmation is in flight
are sent as plain acks, all but the last, whose confirmation then answers them all.

Under no load nothing waits: a lone ack is confirmed at once, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

# Confirm one message's ack (the settler's request on its reply subject).
Confirm = Callable[[Msg], Awaitable[None]]


class AckConfirmations:
    """`await confirm(shard, msg)` returns once the ack of `msg` has landed, or raises what
    confirming it (or the ack it shared a confirmation with) raised."""

    def __init__(self, confirm: Confirm) -> None:
        self._confirm = confirm
        self._waiting: dict[int, list[tuple[Msg, asyncio.Future[None]]]] = {}
        # The task confirming a shard's acks, while it has some to confirm.
        self._flushing: dict[int, asyncio.Task[None]] = {}

    async def confirm(self, shard: int, msg: Msg) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(shard, []).append((msg, future))
        if shard not in self._flushing:
            # A task of its own: the caller goes on as soon as its own round is confirmed,
            # while later rounds are still being confirmed.
            self._flushing[shard] = asyncio.create_task(self._flush(shard), name="ack-confirm")
        await future

    async def _flush(self, shard: int) -> None:
        """Confirm what waits, round after round, until nothing of the shard is left: the
        acks that come during a round go in the next one."""
        try:
            while burst := self._waiting.pop(shard, None):
                await self._round(burst)
        finally:
            del self._flushing[shard]
            # Cancelled (the worker is stopping): nobody confirms what is left.
            for _, future in self._waiting.pop(shard, []):
                future.cancel()

    async def _round(self, burst: list[tuple[Msg, asyncio.Future[None]]]) -> None:
        try:
            for msg, _ in burst[:-1]:
                await msg.ack()
            await self._confirm(burst[-1][0])
        except Exception as exc:
            # Each waiter handles it as the failure of its own ack.
            for _, future in burst:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in burst:
                future.cancel()
            raise
        for _, future in burst:
            if not future.done():
                future.set_result(None)


__all__ = ["AckConfirmations"]
