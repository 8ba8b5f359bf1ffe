"""Wiring of the remote paths: the federation client and the input stream, over NATS."""

from __future__ import annotations

from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from worker.bus.subjects import Subjects
from worker.config import Settings
from worker.core.signing import ServerKey
from worker.federation.perform_client import NatsFederationPerformClient
from worker.perform.backfill import Backfiller
from worker.perform.inputs import InputBatchSubmitter
from worker.perform.remote import RemotePerformer
from worker.storage.invites import PgInviteReads
from worker.storage.query_reads import PostgresQueryReads


def build_remote(
    nc: NATS, pool: asyncpg.Pool[Any], settings: Settings, key: ServerKey
) -> RemotePerformer:
    federation = NatsFederationPerformClient(nc, settings.bus.federation_prefix)
    inputs = InputBatchSubmitter(nc, Subjects(settings.bus.prefix))
    remote = RemotePerformer(federation, inputs, key, invites=PgInviteReads(pool))
    reads = PostgresQueryReads.from_pool(pool)
    remote.backfiller = Backfiller(reads, federation, inputs, settings.server_name)
    return remote


async def close_remote(remote: RemotePerformer) -> None:
    if isinstance(remote.inputs, InputBatchSubmitter):
        await remote.inputs.close()


__all__ = ["build_remote", "close_remote"]
