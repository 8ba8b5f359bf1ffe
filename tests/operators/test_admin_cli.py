"""`roomserver admin purge-room / purge-history` against a running worker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import msgspec
import pytest

from tests.e2e.conftest import WorkerRun
from tests.operators.conftest import _SETTINGS, ROOT, Cli, CliResult
from tests.pipeline.conftest import started
from worker.messages import InputRoomEvent
from worker.purges import serve_purges
from worker.wiring import start_queries


@pytest.fixture
async def serving(worker: WorkerRun, prefix: str) -> AsyncIterator[WorkerRun]:
    """The worker with its micro service and the admin performs, as `worker run` has them."""
    assert worker.nc is not None and worker.pool is not None and worker.store is not None
    admin, undo = await serve_purges(worker.nc, prefix, worker.store, None)
    service = await start_queries(worker.nc, worker.pool, prefix=prefix, performs=admin)
    try:
        yield worker
    finally:
        await service.stop()
        await undo()


async def _with_stdin(nats_url: str, database_dsn: str, prefix: str, stdin: bytes,
                      *argv: str) -> CliResult:
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    env.update(NATS_URL=nats_url, DATABASE_URL=database_dsn, ROOMSERVER_PREFIX=prefix)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *argv, env=env, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def _room(worker: WorkerRun, messages: int) -> tuple[str, list[str]]:
    assert worker.pipeline is not None
    b = started("10")
    for i in range(messages):
        b.message("bob", f"m{i}")
    for e in b.events:
        r = await worker.pipeline.handle(
            b.room_id, InputRoomEvent(kind="new", event=msgspec.Raw(msgspec.json.encode(b.events[e]))))
        assert r.outcome.value == "accepted"
    return b.room_id, list(b.events)


async def test_purge_room_asks_first(
    serving: WorkerRun, roomserver: Cli, nats_url: str, database_dsn: str, prefix: str
) -> None:
    room, events = await _room(serving, 3)
    no = await _with_stdin(nats_url, database_dsn, prefix, b"n\n", "admin", "purge-room", room)
    assert no.code == 2 and "not confirmed" in no.err
    assert serving.store is not None and await serving.store.room(room) is not None
    yes = await _with_stdin(nats_url, database_dsn, prefix, b"y\n", "admin", "purge-room", room)
    assert yes.code == 0, yes.err
    assert json.loads(yes.out)["removed"]["events"] == len(events)
    again = await roomserver("admin", "purge-room", room, "--yes")
    assert again.code == 1 and "not_found" in again.err


async def test_purge_history_in_steps(serving: WorkerRun, roomserver: Cli) -> None:
    room, events = await _room(serving, 40)
    done = await roomserver("admin", "purge-history", room, "--before-event", events[-1],
                            "--batch", "10", "--yes")
    assert done.code == 0, done.err
    answer = json.loads(done.out)
    # Everything before the last event but what state and auth chains need.
    assert answer["removed"]["events"] + answer["kept_for_state"] == len(events) - 1
    assert answer["removed"]["events"] == 39  # the messages before the last one
    bad = await roomserver("admin", "purge-history", room, "--before-event", "$nope", "--yes")
    assert bad.code == 1 and "not_found" in bad.err
