"""Inputs the roomserver puts on its own input stream, and the pipeline's replies back.

Every event a perform builds goes through `<prefix>.input.<room token>` like any producer's
(DESIGN §4): kind `new`, `send_as_server` = our server name, `Nats-Msg-Id` = the event ID (so
a repeat within JetStream's duplicate window is dropped), and a `Reply-Inbox`
(`StreamSubmitter`). A remote join puts a whole room's state there as outliers before the
join itself (`InputBatchSubmitter`): publishing them one round trip at a time would take
longer than checking them, so publishes are pipelined (up to `window` acks outstanding);
calls start in order, so the room's inputs reach the stream in order and the pipeline handles
each after its auth events.

The replies of all inputs of one submitter arrive on one wildcard subscription,
`<inbox>.<n>` (`InputReplies`), and resolve the waiting future; no subscription per input.
Given the process's `LocalReplies`, the submitter also registers each future there, so the
input consumer of this process answers it directly when it settles the input; the
subscription still answers inputs that another worker consumes.
The stream's `PubAck`s come the same way (`worker.bus.requests.Requester`), not through
nats-py's `publish`, which costs a system call and an `asyncio.wait_for` per input.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Sequence
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from worker.bus.local_replies import LocalReplies
from worker.bus.requests import InboxFutures, Requester
from worker.bus.subjects import MSG_ID_HEADER, REPLY_INBOX_HEADER, ROOM_ID_HEADER, Subjects
from worker.core.events import Event
from worker.messages.input import InputRoomEvent, encode_input
from worker.messages.reply import InputReply, decode_reply
from worker.pipeline.handoff import BuiltEvents

# How long a perform waits for the pipeline's verdict on its event. The event stays in the
# stream after that; the perform answers `unavailable`.
DEFAULT_REPLY_TIMEOUT = 30.0
# Acks outstanding while publishing a batch. Published in the worker's own process, the
# inputs must reach the stream well ahead of the consumer, or it takes them a few at a time
# and commits many small batches instead of a few big ones.
DEFAULT_WINDOW = 4096


class InputReplies(InboxFutures[InputReply]):
    """Replies to inputs published with a `Reply-Inbox`: one wildcard subscription, made at
    the first `expect`, and a token per input."""

    def __init__(self, nc: NATS, local: LocalReplies | None = None) -> None:
        super().__init__(nc)
        self._local = local

    async def expect(self) -> tuple[str, asyncio.Future[InputReply]]:
        """A `Reply-Inbox` subject for one input, and the future its reply resolves;
        `forget` the subject once done with it."""
        token, future = await self._open()
        inbox = self._prefix + token
        if self._local is not None:
            self._local.register(inbox, future)
        return inbox, future

    def forget(self, inbox: str) -> None:
        self._waiting.pop(inbox[len(self._prefix):], None)
        if self._local is not None:
            self._local.forget(inbox)

    def _resolve(self, future: asyncio.Future[InputReply], msg: Msg) -> None:
        try:
            future.set_result(decode_reply(msg.data))
        except msgspec.DecodeError as exc:
            future.set_exception(exc)


class StreamSubmitter:
    """Implements `worker.perform.ports.Submitter`: one built event at a time."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        server_name: str,
        *,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
        local_replies: LocalReplies | None = None,
        built: BuiltEvents | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._server_name = server_name
        self._timeout = reply_timeout
        self._replies = InputReplies(nc, local_replies)
        self._requests = Requester(nc)
        self._built = built

    async def submit(
        self, room_id: str, room_version: str, pdu: dict[str, Any] | bytes, event_id: str
    ) -> InputReply:
        return await (await self.publish(room_id, room_version, pdu, event_id))

    async def publish(
        self,
        room_id: str,
        room_version: str,
        pdu: dict[str, Any] | bytes,
        event_id: str,
        *,
        event: Event | None = None,
    ) -> Awaitable[InputReply]:
        """Publish the input (returns once JetStream stored it) and answer an awaitable of
        its reply: a caller can let the next event of the room go before the verdict.
        `event`: the builder's view of `pdu`, handed to this process's pipeline."""
        body = pdu if isinstance(pdu, bytes) else msgspec.json.encode(pdu)
        handed: bytes | None = None
        if event is not None and self._built is not None:
            self._built.hand(body, event)
            handed = body
        message = InputRoomEvent(
            kind="new",
            event=msgspec.Raw(body),
            room_version=room_version,
            origin=self._server_name,
            send_as_server=self._server_name,
        )
        inbox, future = await self._replies.expect()
        headers = {ROOM_ID_HEADER: room_id, MSG_ID_HEADER: event_id, REPLY_INBOX_HEADER: inbox}
        try:
            await self._requests.publish(
                self._subjects.input(room_id),
                encode_input(message),
                timeout=self._timeout,
                stream=self._subjects.input_stream,
                headers=headers,
            )
        except BaseException:
            self._replies.forget(inbox)
            if handed is not None:
                self._forget_built(handed)
            raise
        # The reply future itself, with a bare timer on it (as `Requester` waits:
        # `asyncio.timeout` costs a context manager, a task lookup and a cancellation per
        # input) and the clean-up as its done callback: no coroutine or task per input, and
        # the inbox is forgotten even if nobody awaits the reply.
        timer = asyncio.get_running_loop().call_later(self._timeout, _expire, future)
        future.add_done_callback(functools.partial(self._done, inbox, timer, handed))
        return future

    def _done(
        self,
        inbox: str,
        timer: asyncio.TimerHandle,
        handed: bytes | None,
        _: asyncio.Future[InputReply],
    ) -> None:
        timer.cancel()
        self._replies.forget(inbox)
        if handed is not None:
            self._forget_built(handed)

    def _forget_built(self, body: bytes) -> None:
        if self._built is not None:
            self._built.forget(body)

    async def close(self) -> None:
        await self._replies.close()
        with contextlib.suppress(NatsError):
            await self._requests.close()


def _expire(future: asyncio.Future[InputReply]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class InputBatchSubmitter:
    """Implements `worker.perform.ports.InputPort`: many inputs of one room, in order."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        reply_timeout: float = 120.0,
        window: int = DEFAULT_WINDOW,
        local_replies: LocalReplies | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = reply_timeout
        self._window = window
        self._replies = InputReplies(nc, local_replies)

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
        js = self._nc.jetstream()
        window = asyncio.Semaphore(self._window)
        expected: list[tuple[str, asyncio.Future[InputReply]]] = []
        published: list[asyncio.Future[Any]] = []
        try:
            last = len(inputs) - 1
            for n, (message, msg_id) in enumerate(inputs):
                headers = {ROOM_ID_HEADER: room_id, MSG_ID_HEADER: msg_id}
                if every_reply or n == last:
                    inbox, reply = await self._replies.expect()
                    expected.append((inbox, reply))
                    headers[REPLY_INBOX_HEADER] = inbox
                await window.acquire()
                future: asyncio.Future[Any] = asyncio.ensure_future(js.publish(
                    self._subjects.input(room_id), encode_input(message),
                    timeout=self._timeout, stream=self._subjects.input_stream, headers=headers,
                ))
                future.add_done_callback(lambda _: window.release())
                published.append(future)
            await asyncio.gather(*published)
            async with asyncio.timeout(self._timeout):
                return [await reply for _, reply in expected]
        finally:
            for future in published:
                future.cancel()
            for inbox, _ in expected:
                self._replies.forget(inbox)

    async def close(self) -> None:
        await self._replies.close()


__all__ = [
    "DEFAULT_REPLY_TIMEOUT",
    "DEFAULT_WINDOW",
    "InputBatchSubmitter",
    "InputReplies",
    "StreamSubmitter",
]
