"""`StreamSubmitter`: a built event onto the input stream, and the pipeline's reply back.

Every event a perform builds goes through `<prefix>.input.<room token>` like any producer's
(DESIGN §4): kind `new`, `send_as_server` = our server name, `Nats-Msg-Id` = the event ID (so
a repeat within JetStream's duplicate window is dropped), and a `Reply-Inbox`. The replies of
all submissions arrive on one wildcard subscription, `<inbox>.<n>`, and resolve the waiting
future; no subscription per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from worker.bus.subjects import MSG_ID_HEADER, REPLY_INBOX_HEADER, ROOM_ID_HEADER, Subjects
from worker.messages.input import InputRoomEvent, encode_input
from worker.messages.reply import InputReply, decode_reply

# How long a perform waits for the pipeline's verdict on its event. The event stays in the
# stream after that; the perform answers `unavailable`.
DEFAULT_REPLY_TIMEOUT = 30.0


class StreamSubmitter:
    """Submits events on one NATS connection; `close()` ends its reply subscription."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        server_name: str,
        *,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._server_name = server_name
        self._timeout = reply_timeout
        self._prefix = ""
        self._sub: Subscription | None = None
        self._subscribing = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[InputReply]] = {}
        self._tokens = itertools.count(1)

    async def submit(
        self, room_id: str, room_version: str, pdu: dict[str, Any] | bytes, event_id: str
    ) -> InputReply:
        return await (await self.publish(room_id, room_version, pdu, event_id))

    async def publish(
        self, room_id: str, room_version: str, pdu: dict[str, Any] | bytes, event_id: str
    ) -> Awaitable[InputReply]:
        """Publish the input (returns once JetStream stored it) and answer an awaitable of
        its reply: a caller can let the next event of the room go before the verdict."""
        if self._sub is None:
            await self._subscribe()
        body = pdu if isinstance(pdu, bytes) else msgspec.json.encode(pdu)
        message = InputRoomEvent(
            kind="new",
            event=msgspec.Raw(body),
            room_version=room_version,
            origin=self._server_name,
            send_as_server=self._server_name,
        )
        token = str(next(self._tokens))
        future: asyncio.Future[InputReply] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        headers = {
            ROOM_ID_HEADER: room_id,
            MSG_ID_HEADER: event_id,
            REPLY_INBOX_HEADER: self._prefix + token,
        }
        try:
            await self._nc.jetstream().publish(
                self._subjects.input(room_id),
                encode_input(message),
                timeout=self._timeout,
                stream=self._subjects.input_stream,
                headers=headers,
            )
        except BaseException:
            self._waiting.pop(token, None)
            raise
        return self._reply(token, future)

    async def _reply(self, token: str, future: asyncio.Future[InputReply]) -> InputReply:
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        finally:
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


__all__ = ["DEFAULT_REPLY_TIMEOUT", "StreamSubmitter"]
