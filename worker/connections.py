"""Connections and provisioning for the composition root (`worker.app`).

- `connect_nats`: the NATS connection with the configured credentials and TLS, retried at
  start (a wrong URL fails with a message, refused credentials fail at once) and forever once
  up (a NATS restart is survived by reconnecting);
- `create_pool`, `ensure_database`: the asyncpg pool, and the embedded server's database;
- `provision_streams`: the input, output and dead-letter streams created or updated;
- `abandon`: connection attempts no longer wanted, cancelled and closed.

Any failure is a `StartupError` whose message says what could not be reached and why.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NatsClient
from nats.errors import (
    AuthorizationError,
    ConnectionClosedError,
    ConnectionReconnectingError,
    NoRespondersError,
    NoServersError,
    StaleConnectionError,
)
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError

from worker.bus.streams import StreamLimits, ensure_streams
from worker.bus.subjects import Subjects
from worker.config import Settings, mask_url
from worker.errors import PermanentError
from worker.observability.logging import get_logger

# Tries of the first NATS connection, a second apart, before the start fails.
INITIAL_CONNECT_ATTEMPTS = 10

log = get_logger("worker.app")


class StartupError(RuntimeError):
    """A dependency could not be reached or prepared; the message says which and why."""


def nats_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `nats.connect` for the configured authentication and TLS."""
    n = settings.nats
    opts: dict[str, Any] = {}
    if n.user:
        opts["user"], opts["password"] = n.user, n.password
    if n.token:
        opts["token"] = n.token
    if n.nkey_seed_file:
        opts["nkeys_seed"] = n.nkey_seed_file
    if n.creds_file:
        opts["user_credentials"] = n.creds_file
    if n.tls_ca or n.tls_cert:
        ctx = ssl.create_default_context(cafile=n.tls_ca)
        if n.tls_cert:
            ctx.load_cert_chain(n.tls_cert, n.tls_key)
        opts["tls"] = ctx
    return opts


async def connect_nats(
    settings: Settings, url: str, *, give_up: asyncio.Event | None = None
) -> NatsClient:
    """Connect, retrying forever after the first success (a restart of NATS is survivable).

    The first connection is tried INITIAL_CONNECT_ATTEMPTS times, a second apart, so that a
    wrong NATS_URL fails the start with a message; credentials or a certificate the server
    refuses (or a server certificate NATS_TLS_CA does not vouch for) fail it at once, with the
    reason, since waiting does not fix them. `give_up` ends the tries early: on
    Python 3.11 a cancellation can be lost inside nats-py's connect (`asyncio.wait_for`
    swallows it when the connection fails at the same moment), so a flag backs it up.
    """

    # nats-py ends a refused connect with a bare NoServersError; the server's reason (wrong
    # secret, TLS failure) only reaches error_cb, so it is kept for the start-up message.
    reported: list[Exception] = []
    refusal = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        reported.append(exc)
        if _is_refusal(exc):
            refusal.set()
        log.warning("nats_error", error=str(exc))

    async def on_disconnected() -> None:
        log.info("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    servers = [u.strip() for u in url.split(",")]
    last: Exception | None = None
    for attempt in range(1, INITIAL_CONNECT_ATTEMPTS + 1):
        if give_up is not None and give_up.is_set():
            # Abandoned: end as cancelled, which nobody needs to retrieve.
            raise asyncio.CancelledError
        connecting = asyncio.create_task(nats.connect(
            servers=servers,
            name=f"roomserver-{settings.bus.prefix}",
            connect_timeout=5,
            # Two tries per server per call (0 would mean forever to nats-py, and its
            # default goes on for a minute); the loop around it does the waiting.
            max_reconnect_attempts=1,
            reconnect_time_wait=1,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            **nats_options(settings),
        ))
        refused = asyncio.create_task(refusal.wait())
        try:
            await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled from outside: the attempt goes too, and closes what it still connects.
            connecting.cancel()
            connecting.add_done_callback(_close_result)
            raise
        finally:
            refused.cancel()
        if not connecting.done():
            # Refused credentials or certificates do not become valid by waiting; and after a
            # failed TLS handshake nats-py can hang forever closing the socket.
            connecting.cancel()
            connecting.add_done_callback(_close_result)
            last = next(e for e in reversed(reported) if _is_refusal(e))
            break
        try:
            nc: NatsClient = connecting.result()
        except (OSError, TimeoutError, NatsError) as exc:
            refusals = [e for e in (*reported, exc) if _is_refusal(e)]
            last = refusals[-1] if refusals else (
                reported[-1] if isinstance(exc, NoServersError) and reported else exc)
            reported.clear()
            if refusals:
                break
            log.info("nats_connect_retry", attempt=attempt, error=repr(last))
            await asyncio.sleep(1.0)
            continue
        # nats-py reads this on every disconnect: once up, a NATS restart of any length is
        # survived by reconnecting.
        nc.options["max_reconnect_attempts"] = -1
        return nc
    raise StartupError(
        f"cannot connect to NATS at {mask_url(url)}: {type(last).__name__}: {last}"
    )


def _is_refusal(exc: BaseException) -> bool:
    """The server refused our credentials, or TLS verification failed on either side."""
    # During the handshake nats-py reports the server's -ERR as a plain Error.
    return isinstance(exc, AuthorizationError | ssl.SSLError) or (
        "authorization violation" in str(exc).lower()
    )


async def existing_replicas(js: JetStreamContext, subjects: Subjects) -> int:
    """The replica count the input stream already has (1 for a new one).

    Replication is the operator's choice for their cluster (R3 on three nodes, deploy/nats):
    provisioning keeps it instead of scaling the streams back to one replica.
    """
    try:
        info = await js.stream_info(subjects.input_stream)
    except NotFoundError:
        return 1
    return max(int(info.config.num_replicas or 1), 1)


async def ensure_database(admin_dsn: str, name: str) -> None:
    """Create database `name` on the server of `admin_dsn` unless it exists."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _no_session_reset(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's release hook: nothing. asyncpg's default reset costs a round trip per
    release (unlock all, close cursors, unlisten, reset all), while pooled connections never
    keep session state: advisory locks are transaction-scoped (the leases use their own
    connection) and nothing sets, listens or declares. An open transaction is still rolled
    back by asyncpg before this runs."""


async def create_pool(
    settings: Settings, dsn: str, application_name: str | None = None
) -> asyncpg.Pool[asyncpg.Record]:
    # application_name = the worker id: the write log (schemas/sql/0002) records it per event.
    server_settings = {"application_name": application_name[:63]} if application_name else None
    try:
        pool: asyncpg.Pool[asyncpg.Record] = await asyncpg.create_pool(
            dsn,
            min_size=settings.database.pool_min_size,
            max_size=settings.database.pool_max_size,
            server_settings=server_settings,
            reset=_no_session_reset,
        )
    except Exception as exc:
        raise StartupError(f"cannot connect to PostgreSQL at {mask_url(dsn)}: {exc!r}") from exc
    return pool


# How long the start waits for JetStream to answer the streams' provisioning (a cluster
# electing its meta leader after a node restart takes a few seconds).
_PROVISION_PATIENCE = 30.0
_PROVISION_FIRST_DELAY = 0.5


def _transient_nats(exc: BaseException) -> bool:
    """Whether a NATS failure may pass by itself: no answer (yet), or "unavailable"."""
    return isinstance(
        exc,
        TimeoutError | NoRespondersError | ServiceUnavailableError | NoStreamResponseError
        | ConnectionClosedError | ConnectionReconnectingError | StaleConnectionError,
    )


async def provision_streams(nc: NatsClient, subjects: Subjects, settings: Settings) -> None:
    """Create or update the worker's streams, waiting out a JetStream cluster that is electing
    its leader; a refusal (a stream configured against us) fails at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _PROVISION_PATIENCE
    delay = _PROVISION_FIRST_DELAY
    while True:
        try:
            replicas = settings.bus.stream_replicas or await existing_replicas(
                nc.jetstream(), subjects
            )
            limits = StreamLimits(shards=settings.bus.shards, replicas=replicas)
            done = await ensure_streams(nc.jetstream(), subjects, limits)
            break
        except PermanentError as exc:
            raise StartupError(str(exc)) from exc
        except (NatsError, JetStreamError) as exc:
            # A JetStream cluster electing its leader (a node restarting) answers nothing
            # or "unavailable" for a few seconds: worth waiting for, up to a point.
            if not _transient_nats(exc) or loop.time() + delay > deadline:
                raise StartupError(f"cannot provision the streams: {exc!r}") from exc
            log.warning("provision_retry", error=repr(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 4.0)
    log.info("streams_provisioned", **done)


async def abandon(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel connection attempts that are no longer wanted.

    A task that lost its cancellation (see `connect_nats`) is given a moment, then left to
    finish on its own (its tries are bounded), closing whatever it connects.
    """
    pending = list(tasks)
    for task in pending:
        task.cancel()
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=1.0)
    for task in still:
        task.add_done_callback(_close_result)


def _close_result(task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    result = task.result()
    if isinstance(result, NatsClient | asyncpg.Pool):
        _closing.add(asyncio.ensure_future(result.close()))


# Strong references to close-downs scheduled from callbacks, so they are not collected early.
_closing: set[asyncio.Future[Any]] = set()


__all__ = [
    "INITIAL_CONNECT_ATTEMPTS",
    "StartupError",
    "abandon",
    "connect_nats",
    "create_pool",
    "ensure_database",
    "existing_replicas",
    "nats_options",
    "provision_streams",
]
