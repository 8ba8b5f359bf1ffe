"""The real worker process: `python -m worker run` reaches ready, drains on SIGTERM, cleans up.

Each test spawns the worker as a subprocess with its own DATA_DIR and free ports, exactly as
an operator would run it, and looks at it only from outside: HTTP, exit code, processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import msgspec
import nats
import pytest
from nats.js.errors import NotFoundError

from tests.fixtures.builder import RoomBuilder
from worker.bus.producer import send_input
from worker.bus.subjects import Subjects
from worker.embedded import free_port
from worker.messages import InputRoomEvent, decode_deadletter, decode_output

REPO = Path(__file__).resolve().parent.parent
# Generous: the first start of a cluster runs initdb. Not a performance claim, a hang guard.
READY_DEADLINE = 90.0
STOP_DEADLINE = 60.0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (our embedded servers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and str(os.getpid()) != entry.name:
            found.append(f"{entry.name}: {cmdline}")
    return found


class Run:
    """One `python -m worker run` subprocess and the addresses it was given."""

    # Every worker started by the current test, killed at teardown if still running.
    live: ClassVar[list[subprocess.Popen[bytes]]] = []

    def __init__(
        self,
        data_dir: Path,
        extra_env: dict[str, str] | None = None,
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.http_port, self.nats_port, self.pg_port = ports or (
            free_port(), free_port(), free_port()
        )
        env = {k: v for k, v in os.environ.items()
               if k not in ("NATS_URL", "DATABASE_URL", "CONFIG_FILE")}
        env.update(
            DATA_DIR=str(data_dir),
            METRICS_ADDR=f"127.0.0.1:{self.http_port}",
            EMBEDDED_NATS_PORT=str(self.nats_port),
            EMBEDDED_PG_PORT=str(self.pg_port),
            ROOMSERVER_PREFIX=f"run{os.getpid()}",
            DRAIN_GRACE_SECONDS="10",
        )
        env.update(extra_env or {})
        self.log_path = data_dir.parent / f"{data_dir.name}-worker.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        Run.live.append(self.proc)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> dict[str, object]:
        deadline = time.monotonic() + READY_DEADLINE
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                status, body = _get(self.base + "/readyz")
            except OSError as exc:
                last = repr(exc)
            else:
                if status == 200:
                    verdict: dict[str, object] = json.loads(body)
                    return verdict
                last = body
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail(f"not ready in {READY_DEADLINE}s ({last}):\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        try:
            code = self.proc.wait(STOP_DEADLINE)
        finally:
            self._log.close()
        return code


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under tmp_path: as root, PostgreSQL runs as an unprivileged user that must traverse
    # the parents, and every new pytest session resets /tmp/pytest-of-<user> to mode 0700.
    base = Path(tempfile.mkdtemp(prefix="roomserver-run-"))
    d = base / "var"
    yield d
    # Whatever a failed test left behind must not outlive it: the worker, then its servers.
    while Run.live:
        proc = Run.live.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for line in _processes_mentioning(str(d)):
        pid = int(line.split(":", 1)[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def test_embedded_run_is_ready_and_sigterm_leaves_nothing_behind(data_dir: Path) -> None:
    run = Run(data_dir)
    verdict = run.wait_ready()
    assert verdict == {
        "ready": True,
        "checks": {
            "consumer": "ok", "migrations": "ok", "nats": "ok", "postgres": "ok", "worker": "ok"
        },
    }
    assert _get(run.base + "/healthz") == (200, "ok\n")
    status, metrics = _get(run.base + "/metrics")
    assert status == 200
    assert "roomserver_ready 1.0" in metrics
    assert _processes_mentioning(str(data_dir)), "embedded servers should be running"
    probe = _command("check-health", METRICS_ADDR=f"127.0.0.1:{run.http_port}")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["ready"] is True

    assert run.stop(signal.SIGTERM) == 0, run.logs()
    assert _processes_mentioning(str(data_dir)) == []
    probe = _command("check-health", METRICS_ADDR=f"127.0.0.1:{run.http_port}")
    assert probe.returncode == 1 and "unreachable" in probe.stderr
    assert '"event":"worker_stopped"' in run.logs()
    assert '"event_loop":"uvloop"' in run.logs()
    # The embedded data stays for the next start.
    assert (data_dir / "pg" / "data" / "PG_VERSION").exists()
    assert (data_dir / "nats" / "jetstream").is_dir()


def test_sigterm_during_startup_stops_cleanly(data_dir: Path) -> None:
    run = Run(data_dir)
    # Signal handlers are in place once this line is written; the start may be anywhere.
    _wait_for_log(run, '"event":"worker_starting"')
    assert run.stop(signal.SIGTERM) == 0, run.logs()
    assert _processes_mentioning(str(data_dir)) == []


def test_sigkill_then_restart_recovers_stale_servers(data_dir: Path) -> None:
    first = Run(data_dir)
    first.wait_ready()
    first.proc.kill()
    first.wait()
    # SIGKILL gives the worker no chance to stop its servers: they are orphans now.
    orphans = _processes_mentioning(str(data_dir))
    assert orphans, "expected the killed worker's servers to be left running"

    # The same ports, as with `make run`'s fixed defaults: the orphans hold them until the new
    # start finds them through their pid files and stops them.
    second = Run(data_dir, ports=(first.http_port, first.nats_port, first.pg_port))
    second.wait_ready()
    assert second.stop(signal.SIGINT) == 0, second.logs()
    assert _processes_mentioning(str(data_dir)) == []


def test_external_servers_are_used_and_nothing_is_embedded(
    data_dir: Path, nats_url: str, database_dsn: str
) -> None:
    run = Run(
        data_dir, {"NATS_URL": nats_url, "DATABASE_URL": database_dsn, "EVENT_LOOP": "asyncio"}
    )
    run.wait_ready()
    assert run.stop() == 0, run.logs()
    assert '"event_loop":"asyncio"' in run.logs()
    assert not (data_dir / "nats").exists()
    assert not (data_dir / "pg").exists()


async def _last(js: nats.js.JetStreamContext, stream: str, subject: str) -> bytes:
    """The body of the last message on `subject`, waiting for it to arrive."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_DEADLINE
    while True:
        try:
            raw = await js.get_last_msg(stream, subject)
        except NotFoundError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        return raw.data or b""


async def test_garbage_is_dead_lettered_while_a_valid_event_flows_and_is_queryable(
    data_dir: Path, nats_url: str, database_dsn: str, prefix: str
) -> None:
    run = Run(data_dir, {"NATS_URL": nats_url, "DATABASE_URL": database_dsn,
                         "ROOMSERVER_PREFIX": prefix})
    await asyncio.to_thread(run.wait_ready)
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        garbage_room = "!garbage:test"
        garbage = b"\x00 this is not an InputRoomEvent"
        await js.publish(subjects.input(garbage_room), garbage,
                         headers={"Room-ID": garbage_room}, stream=subjects.input_stream)

        b = RoomBuilder("10", real_ids=True)
        create = b.create("alice")
        message = InputRoomEvent(
            kind="new", event=msgspec.Raw(msgspec.json.encode(b.events[create])),
            room_version="10", origin="test",
        )
        reply = await send_input(nc, subjects, message, room_id=b.room_id, event_id=create,
                                 timeout=READY_DEADLINE)
        assert (reply.event_id, reply.outcome, reply.duplicate) == (create, "accepted", False)

        answer = await nc.request(f"{prefix}.query.room_version",
                                  msgspec.json.encode({"room_id": b.room_id}), timeout=30)
        assert msgspec.json.decode(answer.data) == {"room_id": b.room_id, "room_version": "10"}

        output = await _last(js, subjects.output_stream, subjects.output(b.room_id))
        assert decode_output(output).type == "new_room_event"

        dead = await _last(js, subjects.deadletter_stream, subjects.deadletter)
        letter = decode_deadletter(dead)
        assert letter.reason_code == "undecodable"
        assert "InputRoomEvent" in letter.reason
        assert letter.original_body() == garbage
        assert letter.subject == subjects.input(garbage_room)
        assert letter.headers.get("Room-ID") == garbage_room
    finally:
        await nc.close()
    assert await asyncio.to_thread(run.stop) == 0, run.logs()


async def test_the_worker_fills_a_gap_through_the_federation_service(
    data_dir: Path, nats_url: str, database_dsn: str, prefix: str
) -> None:
    from tests.federation.conftest import FakeFederation

    fed_prefix = f"{prefix}.federation"
    run = Run(data_dir, {"NATS_URL": nats_url, "DATABASE_URL": database_dsn,
                         "ROOMSERVER_PREFIX": prefix, "FEDERATION_PREFIX": fed_prefix})
    await asyncio.to_thread(run.wait_ready)
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url)
    fed = FakeFederation(nc, fed_prefix)
    try:
        b = RoomBuilder("10", real_ids=True)
        known = [b.create("alice"), b.join("alice")]
        gap = b.message("alice", "only the federation service has this one")
        latest = b.message("alice", "this one arrives first")
        fed.serve(b)
        await fed.start()

        async def send(event_id: str) -> str:
            message = InputRoomEvent(
                kind="new", event=msgspec.Raw(msgspec.json.encode(b.events[event_id])),
                room_version="10", origin="test",
            )
            reply = await send_input(nc, subjects, message, room_id=b.room_id,
                                     event_id=event_id, timeout=READY_DEADLINE)
            return reply.outcome

        assert [await send(e) for e in known] == ["accepted", "accepted"]
        assert await send(latest) == "accepted"
        assert "get_missing_events" in fed.asked
        answer = await nc.request(
            f"{prefix}.query.events_by_id",
            msgspec.json.encode({"room_id": b.room_id, "event_ids": [gap]}), timeout=30,
        )
        assert [e["event_id"] for e in msgspec.json.decode(answer.data)["events"]] == [gap]
    finally:
        await fed.stop()
        await nc.close()
    assert await asyncio.to_thread(run.stop) == 0, run.logs()


def _wait_for_log(run: Run, text: str) -> None:
    deadline = time.monotonic() + READY_DEADLINE
    while text not in run.logs():
        assert time.monotonic() < deadline and run.proc.poll() is None, run.logs()
        time.sleep(0.02)


def test_unreachable_servers_fail_the_start_with_exit_1(data_dir: Path) -> None:
    dead_nats, dead_pg = free_port(), free_port()
    run = Run(data_dir, {"NATS_URL": f"nats://127.0.0.1:{dead_nats}",
                         "DATABASE_URL": f"postgresql://rs:secret@127.0.0.1:{dead_pg}/rs"})
    assert run.wait() == 1
    logs = run.logs()
    assert f"cannot connect to PostgreSQL at postgresql://rs:***@127.0.0.1:{dead_pg}/rs" in logs
    assert "secret" not in logs


async def test_sigterm_while_waiting_for_nats_stops_at_once(
    data_dir: Path, database_dsn: str
) -> None:
    run = Run(data_dir, {"NATS_URL": f"nats://127.0.0.1:{free_port()}",
                         "DATABASE_URL": database_dsn})
    await asyncio.to_thread(_wait_for_log, run, '"event":"nats_connect_retry"')
    assert await asyncio.to_thread(run.stop, signal.SIGTERM) == 0, run.logs()
    assert '"step":"connect","event":"startup_interrupted"' in run.logs()


def _command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], cwd=REPO, env=dict(os.environ, **env),
        capture_output=True, text=True, timeout=120, check=False,
    )


async def test_migrate_command_applies_the_schema_once(database_dsn: str) -> None:
    import asyncpg

    first = await asyncio.to_thread(_command, "migrate", DATABASE_URL=database_dsn)
    assert first.returncode == 0, first.stderr
    assert '"event":"migrations_applied"' in first.stderr
    again = await asyncio.to_thread(_command, "migrate", DATABASE_URL=database_dsn)
    assert again.returncode == 0, again.stderr
    conn = await asyncpg.connect(database_dsn)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert {"events", "outbox"} <= tables


def test_invalid_settings_exit_2_naming_each_problem(tmp_path: Path) -> None:
    env = dict(os.environ, SHARDS="many", LOG_LEVEL="loud", DATA_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "SHARDS: must be an integer, got 'many'" in done.stderr
    assert "LOG_LEVEL: must be one of" in done.stderr
    assert not (tmp_path / "nats").exists()
