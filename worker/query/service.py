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
from typing import Any, cast

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from worker.messages import query as m
from worker.observability.metrics import QUERIES, QUERY_DURATION
from worker.perform.admin import AdminFailed, AdminPerforms
from worker.query import handlers as h
from worker.query.handlers import HANDLERS, answer
from worker.query.ports import QueryStore

log = structlog.get_logger(__name__)

SERVICE_NAME = "roomserver"
SERVICE_VERSION = "0.1.0"
# Endpoint names of performs (their metric label too): `perform_<name>`.
PERFORM_PREFIX = "perform_"
# The header with our stable error code (the micro headers carry the numeric one).
ERROR_REASON_HEADER = "Roomserver-Error"

_encoder = msgspec.json.Encoder()


def default_executor_threads() -> int:
    """Threads of the loop's default executor (`asyncio.to_thread`), as CPython sizes it."""
    return min(32, (os.cpu_count() or 1) + 4)


def query_subject(prefix: str, name: str) -> str:
    return f"{prefix}.query.{name}"


def error_reply(code: m.QueryErrorCode, message: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an error reply (beside the micro service's own two headers)."""
    return _encoder.encode(m.QueryError(code=code, message=message)), {ERROR_REASON_HEADER: code}


class QueryService:
    """A running query service; `stop()` unsubscribes and waits for queries in flight."""

    def __init__(
        self, store: QueryStore, *, max_in_flight: int, admin: AdminPerforms | None = None
    ) -> None:
        self._store = store
        self._admin = admin
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
                if name.startswith(PERFORM_PREFIX) and self._admin is not None:
                    response = await self._admin.answer(name[len(PERFORM_PREFIX):], request.data)
                else:
                    response = await answer(self._store, name, request.data)
            except (h.QueryFailed, AdminFailed) as exc:
                result = exc.code
                code = cast(m.QueryErrorCode, exc.code)
                body, headers = error_reply(code, exc.message)
                await request.respond_error(m.ERROR_CODES[code], exc.message, body, headers)
                return
            except Exception as exc:
                result = "internal_error"
                log.exception("query_failed", query=name)
                body, headers = error_reply("internal_error", f"{type(exc).__name__}: {exc}")
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
    store: QueryStore | asyncpg.Pool[Any],
    *,
    prefix: str = "roomserver",
    max_in_flight: int = 16,
    queue_group: str = "q",
    admin: AdminPerforms | None = None,
) -> QueryService:
    """Start the `roomserver` micro service with every query endpoint; `stop()` to end it.

    `store` is a `QueryStore`, or an asyncpg pool: then the PostgreSQL adapter of
    worker.storage.query_reads is built over it, and since that pool is shared with the input
    pipeline, queries are held to a quarter of its connections (each query uses at most one at
    a time), so a burst of queries can never starve event processing (DESIGN §5). Their state
    resolutions run in the loop's default executor, where the pipeline resolves big forks too:
    they are also held below its thread count, so the pipeline always finds a thread free.
    """
    if isinstance(store, asyncpg.Pool):
        from worker.storage.query_reads import PostgresQueryReads

        max_in_flight = min(
            max_in_flight,
            max(1, store.get_max_size() // 4),
            max(1, default_executor_threads() - 1),
        )
        store = PostgresQueryReads.from_pool(store)
    svc = QueryService(store, max_in_flight=max_in_flight, admin=admin)
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
    for name in HANDLERS:
        await service.add_endpoint(
            EndpointConfig(
                name=name,
                handler=svc.endpoint(name),
                subject=query_subject(prefix, name),
            )
        )
    # The admin performs (`worker.perform.admin`) on `<prefix>.perform.<name>`.
    for name in admin.names if admin is not None else ():
        await service.add_endpoint(EndpointConfig(
            name=PERFORM_PREFIX + name, handler=svc.endpoint(PERFORM_PREFIX + name),
            subject=f"{prefix}.perform.{name}",
        ))
    return svc
