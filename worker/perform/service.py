"""The Perform API's endpoints on the micro service `roomserver`: `<prefix>.perform.<name>`
for the performs, `<prefix>.query.<name>` for the queries that read what they write.

Each request is decoded with a Decoder built once per endpoint and answered in a task of its
own (a perform waits for the pipeline's verdict on its events; the next request must not wait
behind it), at most `max_in_flight` at once. Performs of one room queue on the room's lock in
`RoomWriter`; different rooms run side by side. Errors reply with the micro service's error
headers and a `PerformError` body (worker.messages.perform).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service
from prometheus_client import Counter, Histogram

from worker.messages import perform as m
from worker.messages.errors import ERROR_CODE_HEADER, ERROR_STATUS
from worker.observability.metrics import PERFORM_DURATION, PERFORMS, QUERIES, QUERY_DURATION
from worker.perform import create, directory, members, remote_members, upgrade
from worker.perform.writer import PerformFailed, RoomWriter

log = structlog.get_logger(__name__)

# The header with our stable error code, as the query service sets it.
ERROR_REASON_HEADER = ERROR_CODE_HEADER

Handler = Callable[[RoomWriter, Any], Awaitable[msgspec.Struct]]
# Perform name -> (request type, handler): performs served beside the Perform API's own (the
# admin evacuations of `worker.perform.evacuate`, which need a port of their own).
Extra = Mapping[str, tuple[type[msgspec.Struct], Handler]]

PERFORM_HANDLERS: dict[str, Handler] = {
    "send_event": members.send_event,
    "create_room": create.create_room,
    "invite": members.invite,
    "join": members.join,
    "leave": members.leave,
    "upgrade": upgrade.upgrade,
    "forget": members.forget,
    "set_alias": directory.set_alias,
    "remove_alias": directory.remove_alias,
    "publish": directory.publish,
    "backfill": remote_members.backfill,
}
QUERY_HANDLERS: dict[str, Handler] = {
    "room_for_alias": directory.room_for_alias,
    "aliases_for_room": directory.aliases_for_room,
    "published_rooms": directory.published_rooms,
    "server_keys": directory.server_keys,
}

_encoder = msgspec.json.Encoder()


def perform_subject(prefix: str, name: str) -> str:
    return f"{prefix}.perform.{name}"


def error_reply(exc: PerformFailed) -> tuple[bytes, dict[str, str]]:
    body = m.PerformError(
        code=exc.code, message=exc.message, reason_code=exc.reason_code, reason=exc.reason
    )
    return _encoder.encode(body), {ERROR_REASON_HEADER: exc.code}


class _Counted:
    """One endpoint's request counter (per outcome) and duration histogram children."""

    __slots__ = ("_by_outcome", "_counts", "_name", "duration")

    def __init__(self, name: str, counts: Counter, duration: Histogram) -> None:
        self._name = name
        self._counts = counts
        self._by_outcome: dict[str, Counter] = {}
        self.duration = duration

    def count(self, outcome: str) -> None:
        child = self._by_outcome.get(outcome)
        if child is None:
            child = self._by_outcome[outcome] = self._counts.labels(self._name, outcome)
        child.inc()


class PerformService:
    """The perform and perform-query endpoints; `stop()` waits for those in flight."""

    def __init__(
        self, writer: RoomWriter, *, max_in_flight: int = 256, extra: Extra | None = None
    ) -> None:
        self.writer = writer
        self._extra = dict(extra or {})
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._decoders = {
            name: msgspec.json.Decoder(request)
            for name, (request, _) in (m.PERFORMS | m.PERFORM_QUERIES).items()
        }
        for name, (request, _) in self._extra.items():
            self._decoders[name] = msgspec.json.Decoder(request)
        self._stopping = False

    def endpoint(self, name: str, handler: Handler) -> Callable[[Request], Awaitable[None]]:
        decoder = self._decoders[name]
        # Queries count with the query API's metrics, performs with their own.
        performs = name in m.PERFORMS or name in self._extra
        counts, durations = (PERFORMS, PERFORM_DURATION) if performs else (QUERIES, QUERY_DURATION)
        # The endpoint's metric children, looked up once (a `labels` call takes a lock and
        # checks its labels): its duration, and its count per outcome as outcomes occur.
        counted = _Counted(name, counts, durations.labels(name))

        async def on_request(request: Request) -> None:
            task = asyncio.create_task(self._run(name, handler, decoder, request, counted))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return on_request

    async def _run(
        self,
        name: str,
        handler: Handler,
        decoder: msgspec.json.Decoder[Any],
        request: Request,
        counted: _Counted,
    ) -> None:
        async with self._slots:
            start = time.perf_counter()
            outcome = "ok"
            try:
                response = await self._answer(name, handler, decoder, request.data)
                await request.respond(_encoder.encode(response))
            except PerformFailed as exc:
                outcome = exc.code
                data, headers = error_reply(exc)
                await self._respond_error(request, exc, data, headers)
            except NatsError as failed:
                log.warning("perform_reply_failed", code="ok", error=repr(failed))
            finally:
                # Labels from fixed sets: the endpoint names and the error codes.
                counted.count(outcome)
                counted.duration.observe(time.perf_counter() - start)

    async def _answer(
        self, name: str, handler: Handler, decoder: msgspec.json.Decoder[Any], data: bytes
    ) -> msgspec.Struct:
        """The handler's response; every failure as `PerformFailed`."""
        if self._stopping:
            raise PerformFailed("unavailable", "the roomserver is stopping")
        try:
            body = decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise PerformFailed("bad_request", f"{name}: {exc}") from None
        try:
            return await handler(self.writer, body)
        except PerformFailed:
            raise
        except Exception as exc:
            log.exception("perform_failed", perform=name)
            raise PerformFailed("internal", f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    async def _respond_error(
        request: Request, exc: PerformFailed, data: bytes, headers: dict[str, str]
    ) -> None:
        try:
            await request.respond_error(
                ERROR_STATUS[exc.code], exc.message, data, headers
            )
        except NatsError as failed:
            # The requester's connection (or ours) is gone; it will ask again.
            log.warning("perform_reply_failed", code=exc.code, error=repr(failed))

    async def add_to(self, service: Service, prefix: str) -> None:
        """Add every endpoint to the running micro service."""
        extra = {name: handler for name, (_, handler) in self._extra.items()}
        for name, handler in (PERFORM_HANDLERS | extra).items():
            await service.add_endpoint(EndpointConfig(
                name=f"perform_{name}", handler=self.endpoint(name, handler),
                subject=perform_subject(prefix, name),
            ))
        for name, handler in QUERY_HANDLERS.items():
            await service.add_endpoint(EndpointConfig(
                name=name, handler=self.endpoint(name, handler),
                subject=f"{prefix}.query.{name}",
            ))

    async def stop(self) -> None:
        """Refuse new performs, wait for those in flight, end the reply subscription."""
        self._stopping = True
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.writer.submitter.close()
        if self.writer.remote is not None:
            await self.writer.remote.inputs.close()


async def start_perform_service(
    writer: RoomWriter, service: Service, prefix: str, *, extra: Extra | None = None
) -> PerformService:
    """Add the perform endpoints of `writer` (and the `extra` ones) to the running micro
    `service`."""
    svc = PerformService(writer, extra=extra)
    await svc.add_to(service, prefix)
    log.info("performs_ready", key_id=svc.writer.key.key_id)
    return svc


__all__ = [
    "PERFORM_HANDLERS",
    "QUERY_HANDLERS",
    "PerformService",
    "perform_subject",
    "start_perform_service",
]
