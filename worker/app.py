"""The one composition root: builds every part of a worker from `Settings` and runs it.

Start-up, in order (each step logged; any failure stops what was started and exits 1):

1. embedded servers, when `NATS_URL` / `DATABASE_URL` are unset (both at once, in threads);
2. the NATS connection (credentials and TLS from the settings) and the asyncpg pool;
3. database migrations (`worker.storage.migrations`);
4. stream provisioning: `ROOMSERVER_INPUT`, `_OUTPUT`, `_DEADLETTER` created or updated;
5. the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`);
6. the outbox relay and the input consumer, handing each decoded event to the pipeline;
7. the query micro service `roomserver` on `<prefix>.query.<name>`.

Shutdown (SIGTERM, SIGINT, or `Worker.request_stop`): `/readyz` turns 503, the consumer
stops fetching and finishes in-flight rooms within `DRAIN_GRACE_SECONDS`, the outbox is
flushed, then HTTP, NATS (drained), the pool and the embedded servers are stopped, in
reverse order of start. A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError

from worker import __version__
from worker.bus.consumer import ConsumerSettings, InputConsumer
from worker.bus.leases import LeaseSettings, ShardLeases, new_worker_id
from worker.bus.local_replies import LocalReplies
from worker.bus.outbox import NatsOutboxRelay
from worker.bus.shards import shard_of
from worker.bus.subjects import Subjects
from worker.config import Settings, mask_url
from worker.connections import (
    StartupError,
    abandon,
    connect_nats,
    create_pool,
    ensure_database,
    provision_streams,
)
from worker.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres
from worker.federation import NatsFederationClient
from worker.observability import metrics
from worker.observability.http import HealthServer, ReadinessCheck
from worker.observability.logging import get_logger
from worker.perform.admin import AdminPerforms
from worker.perform.evacuate import Evacuations
from worker.perform.keys import SigningKeyError
from worker.perform.retention import RetentionSettings, run_retention
from worker.perform.service import start_perform_service
from worker.pipeline import GapSettings, Pipeline
from worker.pipeline.handoff import BuiltEvents
from worker.purges import serve_purges
from worker.query.service import QueryService
from worker.storage import (
    PgOutboxStore,
    PostgresStore,
    apply_migrations,
    outbox_stats,
    prune_sent,
)
from worker.storage.homeserver_reads import PostgresHomeserverReads
from worker.storage.purge import PostgresPurger
from worker.wiring import build_writer, query_side_reads, start_queries

EMBEDDED_DATABASE = "roomserver"
EXIT_OK = 0
EXIT_FAILED = 1
# Outbox housekeeping: how often the lag gauges are refreshed, and how long published rows are
# kept (they are useful to an operator tracing an output, and useless after that).
HOUSEKEEPING_INTERVAL = 10.0
OUTBOX_RETENTION_SECONDS = 24 * 3600.0
# After the consumer drained: time for the relay to publish what was committed meanwhile.
FINAL_SWEEP_TIMEOUT = 10.0
# Rooms whose shard the Perform API's view of the pipeline remembers.
MAX_CACHED_SHARDS = 100_000

log = get_logger("worker.app")


class Worker:
    """One worker process's parts and their lifecycle. Build, `start()`, then `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.bus.prefix)
        self.embedded_nats: EmbeddedNats | None = None
        self.embedded_pg: EmbeddedPostgres | None = None
        self.nats_url = settings.nats.url or ""
        self.database_dsn = settings.database.url or ""
        self.nc: NatsClient | None = None
        self.pool: asyncpg.Pool[asyncpg.Record] | None = None
        self.http: HealthServer | None = None
        self.schema_version: int | None = None
        self.relay: NatsOutboxRelay | None = None
        self.consumer: InputConsumer | None = None
        self.queries: QueryService | None = None
        self.admin: AdminPerforms | None = None
        self.worker_id = new_worker_id()
        self.leases: ShardLeases | None = None
        # The input pipeline's view of a room's extremities, for the Perform API's writer.
        self._held_extremities: Callable[[str], list[str] | None] | None = None
        # The performs' inputs this process's consumer settles are answered in process.
        self.local_replies = LocalReplies()
        # The events its Perform API builds reach its own pipeline already validated.
        self.built_events = BuiltEvents()
        self._lease_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False
        self.draining = False
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        # Undo steps of what has started, run in reverse on stop.
        self._cleanup: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    # -- signals --

    def request_stop(self) -> None:
        """First call: drain within the grace period. Second call: stop without waiting."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal_received", signal=sig.name, draining=self._stop.is_set())
        self.request_stop()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    # -- start --

    async def start(self) -> bool:
        """Bring every part up, in order; on failure tear down what started and raise.

        Returns False, with everything stopped again, when a stop was requested during the
        start (a SIGTERM while PostgreSQL was starting need not wait for a full start).
        """
        steps = (
            self._start_embedded,
            self._connect,
            self._migrate,
            self._provision,
            self._serve_http,
            self._start_consumer,
            self._start_queries,
        )
        try:
            for step in steps:
                # The embedded servers start in threads that cannot be cancelled: that step
                # runs to its end (bounded by its own timeouts) and the stop comes after it.
                interruptible = step != self._start_embedded
                if self._stop.is_set() or not await self._until_stopped(step, interruptible):
                    log.info("startup_interrupted", step=step.__name__.lstrip("_"))
                    await self._teardown()
                    return False
        except BaseException:
            await self._teardown()
            raise
        metrics.READY.set(1)
        self.started = True
        log.info(
            "worker_ready",
            nats=mask_url(self.nats_url),
            database=mask_url(self.database_dsn),
            http=self.http.url if self.http else None,
            version=__version__,
        )
        return True

    async def _until_stopped(
        self, step: Callable[[], Awaitable[None]], interruptible: bool
    ) -> bool:
        """Run one start step; False when a stop request cut it short (it was cancelled)."""
        if not interruptible:
            await step()
            return True
        task = asyncio.ensure_future(step())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False

    async def _start_embedded(self, *, with_nats: bool = True) -> None:
        data = Path(self.settings.data_dir).resolve()
        jobs: list[Awaitable[None]] = []
        if self.settings.nats.url is None and with_nats:
            self.embedded_nats = EmbeddedNats(
                data / "nats", port=self.settings.nats.embedded_port
            )
            jobs.append(self._start_server("nats", self.embedded_nats))
        if self.settings.database.url is None:
            self.embedded_pg = EmbeddedPostgres(
                data / "pg", port=self.settings.database.embedded_port
            )
            jobs.append(self._start_server("postgres", self.embedded_pg))
        # Both at once: PostgreSQL's start dominates, NATS comes for free beside it.
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise StartupError("; ".join(str(e) for e in errors)) from errors[0]
        if self.embedded_nats is not None:
            self.nats_url = self.embedded_nats.url
        if self.embedded_pg is not None:
            await ensure_database(self.embedded_pg.dsn(), EMBEDDED_DATABASE)
            self.database_dsn = self.embedded_pg.dsn(EMBEDDED_DATABASE)

    async def _start_server(self, name: str, server: EmbeddedNats | EmbeddedPostgres) -> None:
        # Registered before starting: a start that fails half-way is still stopped.
        self._cleanup.append((f"embedded_{name}", lambda: asyncio.to_thread(server.stop)))
        try:
            await asyncio.to_thread(server.start)
        except (EmbeddedError, OSError) as exc:
            raise StartupError(f"embedded {name} did not start: {exc}") from exc
        log.info("embedded_started", server=name, port=server.port,
                 data_dir=str(server.data_dir))

    async def _connect(self) -> None:
        """NATS and PostgreSQL at once; the first failure cancels the other attempt."""
        give_up = asyncio.Event()
        nats_task = asyncio.create_task(
            connect_nats(self.settings, self.nats_url, give_up=give_up)
        )
        pool_task = asyncio.create_task(
            create_pool(self.settings, self.database_dsn, self.worker_id)
        )
        tasks = {nats_task, pool_task}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            give_up.set()
            await abandon(t for t in tasks if not t.done())
        if nats_task.done() and not nats_task.cancelled() and nats_task.exception() is None:
            self.nc = nats_task.result()
            self._cleanup.append(("nats", self._close_nats))
        if pool_task.done() and not pool_task.cancelled() and pool_task.exception() is None:
            self.pool = pool_task.result()
            self._cleanup.append(("postgres_pool", self._close_pool))
        # The failure that ended the wait is the one to report.
        for task in done:
            if (exc := task.exception()) is not None:
                raise exc

    async def _migrate(self) -> None:
        assert self.pool is not None
        try:
            self.schema_version = await apply_migrations(self.pool)
        except Exception as exc:
            raise StartupError(f"database migrations failed: {exc!r}") from exc
        log.info("migrations_applied", schema_version=self.schema_version)

    async def _provision(self) -> None:
        assert self.nc is not None
        await provision_streams(self.nc, self.subjects, self.settings)

    async def _serve_http(self) -> None:
        self.http = HealthServer(self.settings.http.host, self.settings.http.port,
                                 self.readiness_checks())
        try:
            await self.http.start()
        except OSError as exc:
            raise StartupError(
                f"cannot serve HTTP on {self.settings.http.host}:{self.settings.http.port}: "
                f"{exc.strerror}"
            ) from exc
        self._cleanup.append(("http", self.http.stop))

    async def _start_consumer(self) -> None:
        assert self.nc is not None and self.pool is not None
        shards = self.settings.bus.shards
        store = PostgresStore(
            self.pool, fence_writes=True,
            layer_cache_entries=self.settings.cache_state_entries,
            event_cache_size=self.settings.cache_events,
            id_cache_size=self.settings.cache_event_ids,
        )
        self.relay = NatsOutboxRelay(self.nc, self.subjects, PgOutboxStore(self.pool))
        self._background(self.relay.run(), "outbox-relay")
        self._background(self._housekeeping(), "housekeeping")
        self._cleanup.append(("outbox", self._stop_background))
        # Gap filling asks the federation service over NATS. While it cannot answer, an input
        # with missing prev/auth events is retried, then refused with missing_prev_events /
        # missing_auth_events; it is not stored, so a later delivery can still succeed. Gap
        # attempts count the bus's deliveries, so the refusal comes before the dead letter.
        federation = NatsFederationClient(self.nc, self.settings.bus.federation_prefix)
        gap_settings = GapSettings(max_attempts=self.settings.bus.max_retries + 1)
        pipeline = Pipeline(
            store, self.relay, federation, gap_settings=gap_settings,
            server_name=self.settings.server_name, built=self.built_events,
        )
        consumer_settings = ConsumerSettings.configured(
            shards=self.settings.bus.shards,
            max_retries=self.settings.bus.max_retries,
            retry_backoff=self.settings.bus.retry_backoff,
            drain_grace=self.settings.drain_grace_seconds,
        )
        # One fetcher per shard (the leases), so a delivery gap can safely reset the shard.
        consumer_settings = dataclasses.replace(consumer_settings, reset_on_gap=True)
        consumer = self.consumer = InputConsumer(
            self.nc, self.subjects, pipeline, consumer_settings,
            local_replies=self.local_replies,
        )
        self.admin, unsubscribe = await serve_purges(self.nc, self.settings.bus.prefix, store,
                                                     self.relay)
        self._cleanup.append(("purges", unsubscribe))
        if self.settings.history_retention_days:
            self._background(run_retention(PostgresPurger(store), RetentionSettings.of(
                self.settings)), "retention")

        # A room's shard never changes (the shard count is fixed for the stream): computed
        # once per room (FNV-1a over the room ID, byte by byte in Python), bounded.
        shard_by_room: dict[str, int] = {}

        def held_extremities(room_id: str) -> list[str] | None:
            # While this worker consumes the room's shard its pipeline writes the room, and
            # the row it cached at its last commit is what the database holds (a gained
            # shard's rooms are forgotten first); a stale owner's view makes at worst a fork,
            # which the next event merges, as two workers writing at once do.
            shard = shard_by_room.get(room_id)
            if shard is None:
                if len(shard_by_room) >= MAX_CACHED_SHARDS:
                    shard_by_room.clear()
                shard = shard_by_room[room_id] = shard_of(room_id, shards)
            if shard not in consumer.shards:
                return None
            row = store.caches.rooms.get(room_id)
            return list(row.extremities) if row is not None else None

        self._held_extremities = held_extremities

        # Shards are consumed while this worker holds their lease (worker.bus.leases).
        async def gain(shard: int) -> None:
            store.forget_rooms(lambda room_id: shard_of(room_id, shards) == shard)
            await consumer.start_shard(shard, fresh=True)

        async def release(shard: int) -> None:
            await consumer.stop_shard(shard, self.settings.drain_grace_seconds)

        async def lost(shard: int) -> None:
            await consumer.stop_shard(shard, 0.0)

        leases = self.leases = ShardLeases(
            self.database_dsn, self.settings.bus.prefix, self.worker_id,
            LeaseSettings(shards=shards), on_gain=gain, on_release=release, on_lost=lost,
        )
        # Teardown runs in reverse: stop balancing, drain the consumer, then free the locks.
        self._cleanup.append(("shard_leases", leases.close))
        self._cleanup.append(("consumer", self._drain_consumer))
        try:
            await leases.tick()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StartupError(f"cannot take shard leases: {exc!r}") from exc
        lease_task = self._lease_task = asyncio.create_task(leases.run(), name="shard-leases")

        async def stop_balancing() -> None:
            leases.halt()
            with contextlib.suppress(Exception):
                await lease_task

        self._cleanup.append(("shard_balancing", stop_balancing))

    async def _start_queries(self) -> None:
        assert self.nc is not None and self.pool is not None
        reads = query_side_reads(self.pool, self.settings)
        homeserver = PostgresHomeserverReads(
            self.pool, layer_cache_entries=max(1, self.settings.cache_state_entries // 4)
        )
        try:
            self.queries = await start_queries(
                self.nc, self.pool, prefix=self.settings.bus.prefix,
                server_name=self.settings.server_name, performs=self.admin,
                reads=reads, homeserver=homeserver,
            )
        except (NatsError, JetStreamError) as exc:
            raise StartupError(f"cannot start the query service: {exc!r}") from exc
        self._cleanup.append(("queries", self._stop_queries))
        assert self.queries.service is not None
        try:  # the Perform API, on the same micro service (DESIGN §4)
            performs = await start_perform_service(
                build_writer(self.nc, self.pool, self.settings, reads,
                             held_extremities=self._held_extremities,
                             local_replies=self.local_replies, built=self.built_events),
                self.queries.service,
                self.settings.bus.prefix, extra=Evacuations(homeserver).handlers,
            )
        except SigningKeyError as exc:
            raise StartupError(str(exc)) from exc
        self._cleanup.append(("performs", performs.stop))

    async def _stop_queries(self) -> None:
        if self.queries is not None:
            queries, self.queries = self.queries, None
            await queries.stop()

    def _background(self, work: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("background_task_failed", task=name, error=repr(exc), exc_info=True)

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def _housekeeping(self) -> None:
        """Refresh the outbox gauges; now and then delete long-published outbox rows."""
        assert self.pool is not None
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                unsent, lag = await outbox_stats(self.pool)
                metrics.OUTBOX_UNSENT.set(unsent)
                metrics.OUTBOX_LAG.set(lag)
                if loop.time() - last_prune > 3600.0:
                    pruned = await prune_sent(self.pool, OUTBOX_RETENTION_SECONDS)
                    last_prune = loop.time()
                    if pruned:
                        log.info("outbox_pruned", rows=pruned)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("housekeeping_failed", error=repr(exc))
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    async def _drain_consumer(self) -> None:
        """Stop fetching; let in-flight rooms finish within the grace (a 2nd signal: now)."""
        if self.consumer is None:
            return
        grace = 0.0 if self._hurry.is_set() else self.settings.drain_grace_seconds
        drain = asyncio.create_task(self.consumer.drain(grace), name="drain")
        hurry = asyncio.create_task(self._hurry.wait(), name="hurry")
        done, _ = await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if drain in done:
            log.info("consumer_drained", finished=drain.result())
        else:
            # Unsettled messages are not acked: JetStream redelivers them after ack_wait.
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            log.warning("consumer_drain_cut_short")
        self.consumer = None

    async def _stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        relay, self.relay = self.relay, None
        if relay is None:
            return
        # Drained, the pump is idle; cut short, its rows are the sweep's or the next start's.
        await relay.stop()
        if not self._hurry.is_set():
            # Publish what the drained rooms committed last (DESIGN §6: flush the outbox).
            try:
                swept = await asyncio.wait_for(relay.sweep(), FINAL_SWEEP_TIMEOUT)
                log.info("outbox_flushed", rows=swept)
            except Exception as exc:  # whatever is left is published by the next start
                log.warning("outbox_flush_failed", error=repr(exc))

    # -- readiness --

    def readiness_checks(self) -> dict[str, ReadinessCheck]:
        async def nats_check() -> str | None:
            if self.nc is None or not self.nc.is_connected:
                return "not connected"
            return None

        async def postgres_check() -> str | None:
            if self.pool is None:
                return "no pool"
            await self.pool.fetchval("SELECT 1")
            return None

        async def migrations_check() -> str | None:
            return None if self.schema_version is not None else "not applied"

        async def worker_check() -> str | None:
            if self.draining:
                return "draining"
            return None if self.started else "starting"

        async def consumer_check() -> str | None:
            # Owning no shard is fine (more workers than shards, or a rebalance under way);
            # the shard balancing must be running for the worker to take its share.
            if self.consumer is None or self._lease_task is None:
                return "not started"
            if self._lease_task.done():
                return "shard balancing stopped"
            return None

        return {
            "nats": nats_check,
            "postgres": postgres_check,
            "migrations": migrations_check,
            "worker": worker_check,
            "consumer": consumer_check,
        }

    # -- stop --

    async def stop(self) -> None:
        """Drain and tear down everything that started, newest first."""
        self.draining = True
        metrics.READY.set(0)
        log.info("worker_stopping", grace_seconds=self.settings.drain_grace_seconds)
        await self._teardown()
        log.info("worker_stopped")

    async def _teardown(self) -> None:
        while self._cleanup:
            name, undo = self._cleanup.pop()
            try:
                await undo()
            except Exception as exc:  # keep stopping the rest; report what failed
                log.error("stop_failed", part=name, error=repr(exc))

    async def _close_nats(self) -> None:
        if self.nc is None:
            return
        nc, self.nc = self.nc, None
        if nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 10.0)
        if not nc.is_closed:
            await nc.close()

    async def _close_pool(self) -> None:
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        try:
            await asyncio.wait_for(pool.close(), 10.0)
        except TimeoutError:
            pool.terminate()


async def migrate(settings: Settings) -> int:
    """`python -m worker migrate`: apply pending migrations (embedded PostgreSQL if needed)."""
    worker = Worker(settings)
    try:
        await worker._start_embedded(with_nats=False)
        worker.pool = await create_pool(settings, worker.database_dsn)
        worker._cleanup.append(("postgres_pool", worker._close_pool))
        await worker._migrate()
    except StartupError as exc:
        log.error("migrate_failed", error=str(exc))
        return EXIT_FAILED
    finally:
        await worker._teardown()
    return EXIT_OK


async def serve(settings: Settings) -> int:
    """`python -m worker run`: start, wait for a signal, drain, stop. Returns the exit code."""
    worker = Worker(settings)
    worker.install_signal_handlers()
    metrics.BUILD_INFO.info({"version": __version__})
    log.info("worker_starting", version=__version__, prefix=settings.bus.prefix,
             shards=settings.bus.shards,
             event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
    try:
        started = await worker.start()
    except StartupError as exc:
        log.error("startup_failed", error=str(exc))
        return EXIT_FAILED
    if not started:
        return EXIT_OK
    await worker.wait_stopped()
    await worker.stop()
    return EXIT_OK


__all__ = ["EMBEDDED_DATABASE", "StartupError", "Worker", "migrate", "serve", "start_queries"]
