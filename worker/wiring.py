"""The query side's composition: the query service over its PostgreSQL reads, and the
Perform API's writer over PostgreSQL, the input stream and the federation service. Called
by `worker.app` (and by tests that serve the queries or the performs on their own)."""

from __future__ import annotations

import asyncpg
from nats.aio.client import Client as NatsClient

from worker.bus.local_replies import LocalReplies
from worker.bus.subjects import Subjects
from worker.bus.submit import InputBatchSubmitter, StreamSubmitter
from worker.config import Settings, signing_key_path
from worker.federation.client import NatsFederationClient
from worker.federation.perform_client import NatsFederationPerformClient
from worker.perform.backfill import Backfiller
from worker.perform.keys import load_signing_key
from worker.perform.ports import HeldExtremities
from worker.perform.remote import RemotePerformer
from worker.perform.writer import RoomWriter
from worker.pipeline.handoff import BuiltEvents
from worker.query.service import (
    Performs,
    QueryService,
    default_executor_threads,
    start_query_service,
)
from worker.storage import query_reads
from worker.storage.homeserver_reads import PostgresHomeserverReads
from worker.storage.invites import PgInviteReads
from worker.storage.outliers import PgOutlierStore
from worker.storage.perform import PgPerformStore


async def start_queries(
    nc: NatsClient,
    pool: asyncpg.Pool,
    *,
    prefix: str,
    server_name: str = "localhost",
    max_in_flight: int = 16,
    performs: Performs | None = None,
    reads: query_reads.PostgresQueryReads | None = None,
    homeserver: PostgresHomeserverReads | None = None,
) -> QueryService:
    """The query service over the PostgreSQL reads of `pool`. The pool is shared with the
    input pipeline, so queries are held to a quarter of its connections (each query uses at
    most one at a time) and a burst of queries can never starve event processing (DESIGN §5).
    Their state resolutions run in the loop's default executor, where the pipeline resolves
    big forks too: they are also held below its thread count, so the pipeline always finds a
    thread free."""
    max_in_flight = min(
        max_in_flight,
        max(1, pool.get_max_size() // 4),
        max(1, default_executor_threads() - 1),
    )
    return await start_query_service(
        nc, reads or query_reads.PostgresQueryReads.from_pool(pool), prefix=prefix,
        max_in_flight=max_in_flight, server_name=server_name,
        homeserver=homeserver or PostgresHomeserverReads(pool), performs=performs,
    )


def query_side_reads(pool: asyncpg.Pool, settings: Settings) -> query_reads.PostgresQueryReads:
    """The reads the queries and the performs share, with a quarter of the pipeline's caches
    (CACHE_STATE_ENTRIES, CACHE_EVENTS, CACHE_EVENT_IDS)."""
    return query_reads.PostgresQueryReads.from_pool(
        pool,
        layer_cache_entries=max(1, settings.cache_state_entries // 4),
        event_cache_size=max(1, settings.cache_events // 4),
        id_cache_size=max(1, settings.cache_event_ids // 4),
    )


def build_writer(
    nc: NatsClient,
    pool: asyncpg.Pool,
    settings: Settings,
    reads: query_reads.PostgresQueryReads | None = None,
    held_extremities: HeldExtremities | None = None,
    local_replies: LocalReplies | None = None,
    built: BuiltEvents | None = None,
) -> RoomWriter:
    """The Perform API's writer over PostgreSQL and the input stream, signing with the
    configured key. Raises `SigningKeyError` when the key file is unusable, naming it and why.
    `held_extremities`: the input pipeline's view of the rooms it writes (`worker.app`);
    `local_replies`: where this process's input consumer answers the writer's inputs it
    settles itself, without a round trip through NATS (`worker.app`); `built`: where it hands
    the events it builds to this process's pipeline (`worker.pipeline.handoff`)."""
    path = signing_key_path(settings)
    key = load_signing_key(path, settings.server_name, create=settings.signing_key_file is None)
    submitter = StreamSubmitter(
        nc, Subjects(settings.bus.prefix), settings.server_name, local_replies=local_replies,
        built=built,
    )
    reads = reads or query_side_reads(pool, settings)
    writer = RoomWriter(
        reads, PgPerformStore(pool), submitter, key,
        default_room_version=settings.default_room_version, held_extremities=held_extremities,
    )
    # The remote paths: other servers through the federation service, the state they send
    # stored as outliers, the join put on the input stream.
    federation = NatsFederationPerformClient(nc, settings.bus.federation_prefix)
    inputs = InputBatchSubmitter(nc, Subjects(settings.bus.prefix), local_replies=local_replies)
    outliers = PgOutlierStore(pool)
    writer.remote = RemotePerformer(
        federation, inputs, key, invites=PgInviteReads(pool), outliers=outliers
    )
    # Backfilled history gets the state before its oldest events through the gap filler's
    # verbs (`state_ids`, `state`, `event`), asked of the server that answered first.
    states = NatsFederationClient(nc, settings.bus.federation_prefix)
    writer.remote.backfiller = Backfiller(
        reads, federation, inputs, settings.server_name, states=states, outliers=outliers
    )
    return writer


__all__ = ["build_writer", "query_side_reads", "start_queries"]
