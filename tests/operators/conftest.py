"""Operators' tests: the CLI run as an operator would, against a real worker.

The worker is the in-process one of tests/e2e (`WorkerRun`: consumer, pipeline, PostgreSQL
store, outbox relay on the session's embedded servers). Commands run as `python -m worker ...`
subprocesses with the settings in their environment pointing at the test's NATS prefix and
database.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import WorkerRun
from worker.bus.subjects import Subjects
from worker.config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
# Settings of the developer's shell must not leak into the commands under test.
_SETTINGS = {v.name for v in VARIABLES}


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


Cli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
async def worker(nats_url: str, database_dsn: str, prefix: str) -> AsyncIterator[WorkerRun]:
    run = WorkerRun(nats_url, database_dsn, Subjects(prefix))
    await run.start()
    try:
        yield run
    finally:
        await run.stop()


@pytest.fixture
def roomserver(nats_url: str, database_dsn: str, prefix: str) -> Cli:
    """`await roomserver("inspect", room)` runs `python -m worker inspect ROOM` and returns its
    exit code and output. A subprocess, as an operator runs it: its output is its own (the
    in-process worker logs to this process's stdout) and `asyncio.run` gets a fresh thread."""
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    env.update(NATS_URL=nats_url, DATABASE_URL=database_dsn, ROOMSERVER_PREFIX=prefix)

    async def run(*argv: str, env_extra: dict[str, str] | None = None) -> CliResult:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", *argv,
            env={**env, **(env_extra or {})}, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return CliResult(proc.returncode, out.decode(), err.decode())

    return run
