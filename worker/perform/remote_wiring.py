"""Wiring of the remote paths: the federation client and the input stream, over NATS."""

from __future__ import annotations

from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from worker.bus.subjects import Subjects
from worker.config import Settings
from worker.core.signing import ServerKey
from worker.federation.perform_client import NatsFederationPerformClient
from worker.perform.inputs import InputBatchSubmitter
from worker.perform.remote import RemotePerformer
from worker.storage.invites import PgInviteReads


def build_remote(
    nc: NATS, pool: asyncpg.Pool[Any], settings: Settings, key: ServerKey
) -> RemotePerformer:
    federation = NatsFederationPerformClient(nc, settings.bus.federation_prefix)
    inputs = InputBatchSubmitter(nc, Subjects(settings.bus.prefix))
    return RemotePerformer(federation, inputs, key, invites=PgInviteReads(pool))


async def close_remote(remote: RemotePerformer) -> None:
    if isinstance(remote.inputs, InputBatchSubmitter):
        await remote.inputs.close()


__all__ = ["build_remote", "close_remote"]
