"""`Requester`: request/reply for the hot paths, over one inbox subscription per connection.

The relay waits for a `PubAck` per published output and the consumer for the confirmation of
its last ack per room batch: a request or more per event. nats-py's `request` draws random
bytes from the operating system (a system call) for every reply subject and waits through
`asyncio.wait_for`, both costly per event under load. Here a reply subject is
`<inbox>.<counter>` on one wildcard subscription made at the first request, and the wait is
a timer on a plain future. Same contract as nats-py's: the reply `Msg`,
`nats.errors.TimeoutError` when none comes in time, `NoRespondersError` when nobody listens
(the server answers with status 503 for us, as it does for nats-py's own requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import Header, PubAck
from nats.js.errors import APIError, NoStreamResponseError

_NO_RESPONDERS = "503"

T = TypeVar("T")


class InboxFutures(ABC, Generic[T]):
    """Futures answered on one wildcard subscription of a connection, `<inbox>.<token>`, made
    at the first `_open`: no subscription and no random inbox per request."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._subscribing: asyncio.Lock = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[T]] = {}
        self._tokens = itertools.count(1)

    async def _open(self) -> tuple[str, asyncio.Future[T]]:
        """A token and the future its reply subject (`self._prefix + token`) resolves; the
        caller pops the token from `_waiting` once done with it."""
        if self._sub is None:
            async with self._subscribing:
                if self._sub is None:
                    prefix = self._nc.new_inbox() + "."
                    self._sub = await self._nc.subscribe(prefix + "*", cb=self._answer)
                    self._prefix = prefix
        token = str(next(self._tokens))
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        return token, future

    async def _answer(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix):])
        if future is not None and not future.done():
            self._resolve(future, msg)

    @abstractmethod
    def _resolve(self, future: asyncio.Future[T], msg: Msg) -> None:
        """Answer `future` with what `msg` carries."""

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()


class Requester(InboxFutures[Msg]):
    """Requests on one NATS connection. Not shared between connections."""

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        token, future = await self._open()
        # A bare timer, not `asyncio.timeout` (a context manager, a task lookup and a
        # cancellation per call).
        timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            msg = await future
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
            raise NoRespondersError
        return msg

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: float,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> PubAck:
        """A JetStream publish: the server's `PubAck`, or its refusal as `APIError`
        (`NoStreamResponseError` when no stream takes the subject)."""
        if stream is not None:
            headers = {**(headers or {}), Header.EXPECTED_STREAM: stream}
        try:
            msg = await self.request(subject, payload, timeout=timeout, headers=headers)
        except NoRespondersError:
            raise NoStreamResponseError from None
        answer: dict[str, Any] = msgspec.json.decode(msg.data)
        if "error" in answer:
            raise APIError.from_error(answer["error"])
        return PubAck.from_response(answer)

    def _resolve(self, future: asyncio.Future[Msg], msg: Msg) -> None:
        future.set_result(msg)


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(NatsTimeoutError())


__all__ = ["InboxFutures", "Requester"]
