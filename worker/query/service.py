"""The NATS micro service `roomserver`: one endpoint per query on `<prefix>.query.<name>`.

Discoverable with `nats micro ls` / `nats micro info roomserver`. Each request is decoded with a
Decoder built once per endpoint, answered by its handler (worker.query.handlers) in a task of its
own, so a slow query (a state resolution in a big room) never holds up the requests behind it;
at most `max_in_flight` run at once. Errors are replied with the micro service's error headers
and a `QueryError` body (see worker.messages.query).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from worker.errors import RequestRefused
from worker.messages import query as m
from worker.messages.errors import ERROR_CODE_HEADER, ERROR_STATUS, ErrorCode
from worker.observability.metrics import QUERIES, QUERY_DURATION
from worker.query import handlers as h
from worker.query.handlers import HANDLERS, answer
from worker.query.homeserver import HOMESERVER_HANDLERS, answer_homeserver
from worker.query.homeserver_ports import Homeserver, HomeserverStore
from worker.query.ports import QueryStore

log = structlog.get_logger(__name__)

SERVICE_NAME = "roomserver"
SERVICE_VERSION = "0.1.0"
# Endpoint names of performs (their metric label too): `perform_<name>`.
PERFORM_PREFIX = "perform_"


class Performs(Protocol):
    """Performs answered on this micro service as `<prefix>.perform.<name>` (the admin
    performs of `worker.perform.admin`); a refusal raises `RequestRefused`."""

    @property
    def names(self) -> list[str]: ...

    async def answer(self, name: str, data: bytes) -> msgspec.Struct: ...
# The header with our stable error code (the micro headers carry the numeric one).
ERROR_REASON_HEADER = ERROR_CODE_HEADER

_encoder = msgspec.json.Encoder()


def default_executor_threads() -> int:
    """Threads of the loop's default executor (`asyncio.to_thread`), as CPython sizes it."""
    return min(32, (os.cpu_count() or 1) + 4)


def query_subject(prefix: str, name: str) -> str:
    return f"{prefix}.query.{name}"


def error_reply(code: ErrorCode, message: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an error reply (beside the micro service's own two headers)."""
    return _encoder.encode(m.QueryError(code=code, message=message)), {ERROR_REASON_HEADER: code}


class QueryService:
    """A running query service; `stop()` unsubscribes and waits for queries in flight."""

    def __init__(
        self,
        store: QueryStore,
        *,
        max_in_flight: int,
        homeserver: Homeserver | None = None,
        performs: Performs | None = None,
    ) -> None:
        self._store = store
        self._homeserver = homeserver
        self._performs = performs
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self.service: Service | None = None

    def endpoint(self, name: str) -> Callable[[Request], Awaitable[None]]:
        async def on_request(request: Request) -> None:
            # Returning at once lets the subscription deliver the next request; the task
            # answers this one.
            task = asyncio.create_task(self._run(name, request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return on_request

    async def _run(self, name: str, request: Request) -> None:
        async with self._slots:
            start = time.perf_counter()
            result = "ok"
            try:
                if name.startswith(PERFORM_PREFIX) and self._performs is not None:
                    response = await self._performs.answer(
                        name[len(PERFORM_PREFIX):], request.data
                    )
                elif self._homeserver is not None and name in HOMESERVER_HANDLERS:
                    response = await answer_homeserver(self._homeserver, name, request.data)
                else:
                    response = await answer(self._store, name, request.data)
            except (h.QueryFailed, RequestRefused) as exc:
                result = exc.code
                body, headers = error_reply(exc.code, exc.message)
                await request.respond_error(ERROR_STATUS[exc.code], exc.message, body, headers)
                return
            except Exception as exc:
                result = "internal"
                log.exception("query_failed", query=name)
                body, headers = error_reply("internal", f"{type(exc).__name__}: {exc}")
                await request.respond_error(
                    "500", f"internal error: {type(exc).__name__}", body, headers
                )
                return
            finally:
                # Labels come from fixed sets: the endpoint names and the error codes.
                QUERIES.labels(name, result).inc()
                QUERY_DURATION.labels(name).observe(time.perf_counter() - start)
            await request.respond(_encoder.encode(response))

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def start_query_service(
    nc: Client,
    store: QueryStore,
    *,
    prefix: str = "roomserver",
    max_in_flight: int = 16,
    queue_group: str = "q",
    server_name: str = "localhost",
    homeserver: HomeserverStore | None = None,
    performs: Performs | None = None,
) -> QueryService:
    """Start the `roomserver` micro service with every query endpoint; `stop()` to end it.

    At most `max_in_flight` queries run at once (`worker.app.start_queries` bounds it by the
    connections and threads the queries share with the input pipeline). The homeserver
    queries (worker.query.homeserver) are served too when there is a `homeserver` store; their
    "local" users are those of `server_name` (`SERVER_NAME`).
    """
    hs = Homeserver(homeserver, server_name) if homeserver is not None else None
    svc = QueryService(store, max_in_flight=max_in_flight, homeserver=hs, performs=performs)
    service = await add_service(
        nc,
        ServiceConfig(
            name=SERVICE_NAME,
            version=SERVICE_VERSION,
            description="Matrix roomserver queries (DESIGN §4)",
            queue_group=queue_group,
            metadata={"prefix": prefix},
        ),
    )
    svc.service = service
    for name in [*HANDLERS, *(HOMESERVER_HANDLERS if hs is not None else ())]:
        await service.add_endpoint(
            EndpointConfig(
                name=name,
                handler=svc.endpoint(name),
                subject=query_subject(prefix, name),
            )
        )
    # The performs handed in (the admin performs) on `<prefix>.perform.<name>`.
    for name in performs.names if performs is not None else ():
        await service.add_endpoint(EndpointConfig(
            name=PERFORM_PREFIX + name, handler=svc.endpoint(PERFORM_PREFIX + name),
            subject=f"{prefix}.perform.{name}",
        ))
    return svc
