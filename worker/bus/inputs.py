"""`InputBatchSubmitter`: many inputs of one room onto the input stream, in order, and every
reply back.

A remote join stores a whole room's state (tens of thousands of events) as outliers before
the join itself: publishing them one round trip at a time would take longer than checking
them. Publishes are pipelined (up to `window` acks outstanding); calls start in order, so the
room's inputs reach the stream in order and the pipeline handles each after its auth events.
Each input names a reply token on one wildcard subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from worker.bus.subjects import MSG_ID_HEADER, REPLY_INBOX_HEADER, ROOM_ID_HEADER, Subjects
from worker.messages.input import InputRoomEvent, encode_input
from worker.messages.reply import InputReply, decode_reply

# Acks outstanding while publishing. Published in the worker's own process, the inputs must
# reach the stream well ahead of the consumer, or it takes them a few at a time and commits
# many small batches instead of a few big ones.
DEFAULT_WINDOW = 4096


class InputBatchSubmitter:
    """Implements `worker.perform.remote.InputPort` on one NATS connection."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        reply_timeout: float = 120.0,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = reply_timeout
        self._window = window
        self._prefix = ""
        self._sub: Subscription | None = None
        self._subscribing = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[InputReply]] = {}
        self._tokens = itertools.count(1)

    async def submit_inputs(
        self,
        room_id: str,
        inputs: Sequence[tuple[InputRoomEvent, str]],
        *,
        every_reply: bool = True,
    ) -> list[InputReply]:
        """Publish (input, Nats-Msg-Id) pairs in order; the pipeline's replies, in order.
        `every_reply=False`: only the last input asks for a reply (the pipeline handles a
        room's inputs in order, so it comes after all the others are done), and only it is
        returned; a reply per input costs the worker as much as a small input.

        Raises `TimeoutError` when some reply does not come within the reply timeout.
        """
        if self._sub is None:
            await self._subscribe()
        loop = asyncio.get_running_loop()
        js = self._nc.jetstream()
        window = asyncio.Semaphore(self._window)
        tokens: list[str] = []
        published: list[asyncio.Future[Any]] = []
        try:
            last = len(inputs) - 1
            for n, (message, msg_id) in enumerate(inputs):
                headers = {ROOM_ID_HEADER: room_id, MSG_ID_HEADER: msg_id}
                if every_reply or n == last:
                    token = str(next(self._tokens))
                    tokens.append(token)
                    self._waiting[token] = loop.create_future()
                    headers[REPLY_INBOX_HEADER] = self._prefix + token
                await window.acquire()
                future: asyncio.Future[Any] = asyncio.ensure_future(js.publish(
                    self._subjects.input(room_id), encode_input(message),
                    timeout=self._timeout, stream=self._subjects.input_stream, headers=headers,
                ))
                future.add_done_callback(lambda _: window.release())
                published.append(future)
            await asyncio.gather(*published)
            async with asyncio.timeout(self._timeout):
                return [await self._waiting[t] for t in tokens]
        finally:
            for future in published:
                future.cancel()
            for token in tokens:
                self._waiting.pop(token, None)

    async def _subscribe(self) -> None:
        async with self._subscribing:
            if self._sub is not None:
                return
            prefix = self._nc.new_inbox() + "."
            self._sub = await self._nc.subscribe(prefix + "*", cb=self._answer)
            self._prefix = prefix

    async def _answer(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix):])
        if future is None or future.done():
            return
        try:
            future.set_result(decode_reply(msg.data))
        except msgspec.DecodeError as exc:
            future.set_exception(exc)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()


__all__ = ["DEFAULT_WINDOW", "InputBatchSubmitter"]
