"""The input pipeline end to end (issue 6; `make bench`), against a raw JetStream baseline.

Everything runs on the embedded NATS and PostgreSQL; the worker is the real process
(`python -m worker run`), so the publisher and the worker do not share an interpreter.

1. Baseline: the same messages published to a plain stream and consumed back with a pull
   consumer (fetch + ack), no processing. That is the ceiling the worker is measured against.
2. Many rooms: ROOMS rooms of PER_ROOM events each (creation, joins, power levels, messages),
   published interleaved; events/s until the last `new_room_event`, the ratio to the
   baseline, and p50/p99 latency from publish to the event's output.
3. One linear room of LINEAR events: the per-room serial path.
4. A big-room join: BIG_ROOM state events published as outliers, then a join carrying the
   whole state as `state_event_ids`; the time of the outliers and of the join alone.
5. Rejected events built upon: one room of REJECTED_ROOM events in which every
   REJECTED_EVERY-th event is rejected (a stranger's message) and the next one names it as
   its only prev event (then a merge of that branch with the room's other extremity, as the
   next local event would be), against a room of as many events with none rejected; both
   rates and their ratio. Events built on a rejected one are processed like any other, so
   the ratio should stay near 1.

BENCH_SCENARIOS=many,linear,join,rejected picks the scenarios; BENCH_ROOMS, BENCH_PER_ROOM,
BENCH_LINEAR, BENCH_BIG_ROOM, BENCH_REJECTED_ROOM and BENCH_REJECTED_EVERY size them. Many rooms run once per entry of BENCH_WORKERS (default "1,2"):
that many worker processes share the shards, as a deployment spreads rooms over several (on 2
cores one Python process keeps one core busy at most), with their CPU added up.
BENCH_REPEAT=N runs each many-rooms measurement N times, each a baseline followed at once by
the worker (so the two of a pair see the same machine), and ends with the median of the
ratios and of the CPU per event: on a shared machine one pair says little.
BENCH_COUNT_SYNCS=1 also counts the disk syncs per event of the NATS server and of PostgreSQL
(`perf stat`, see `SyncCount`).

Durability: the servers are throwaway, so neither syncs each write to disk (PostgreSQL runs
with fsync off, nats-server with its default periodic sync), as a benchmark of the code and
not of the disk. `make run`'s embedded servers do sync: after the other scenarios, a
durable pass runs many rooms again (one worker, BENCH_DURABLE_REPEAT times, 3 by default,
with the median of the ratios; goal >= 0.5) on servers that both sync every write, against
the baseline on those servers (BENCH_DURABLE=0 leaves it out). BENCH_SYNC=1 measures every
scenario with both syncing (nats-server `sync_interval: always`, PostgreSQL fsync on); on
this project's VM nats-server's sync alone costs it four times the CPU per message (0.34 ms
against 0.08 per event through the worker) and the raw baseline 3.5x its speed.

Goals (issue 6, 2 cores): >= 3,000 events/s across rooms, >= 1,000 in one room, join <= 10 s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats
from nats.js.api import StreamConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.builder import RoomBuilder  # noqa: E402
from worker.bus.subjects import Subjects, room_token  # noqa: E402
from worker.core.hashes import compute_event_id, content_hash, unpadded_b64  # noqa: E402
from worker.core.versions import rules_for  # noqa: E402
from worker.embedded import EmbeddedNats, EmbeddedPostgres  # noqa: E402
from worker.messages import InputRoomEvent, decode_output, decode_reply, encode_input  # noqa: E402

ROOMS = int(os.environ.get("BENCH_ROOMS", "200"))
PER_ROOM = int(os.environ.get("BENCH_PER_ROOM", "25"))
LINEAR = int(os.environ.get("BENCH_LINEAR", "3000"))
BIG_ROOM = int(os.environ.get("BENCH_BIG_ROOM", "30000"))
REJECTED_ROOM = int(os.environ.get("BENCH_REJECTED_ROOM", "20000"))
REJECTED_EVERY = int(os.environ.get("BENCH_REJECTED_EVERY", "50"))
PUBLISH_WINDOW = 512
# Which scenarios to run (comma-separated), for measuring one path at a time.
SCENARIOS = set(os.environ.get("BENCH_SCENARIOS", "many,linear,join,rejected").split(","))
SYNC = os.environ.get("BENCH_SYNC", "") not in ("", "0")
# Worker processes sharing the input shards (SHARDS of them), as a deployment runs several:
# the many-rooms scenario runs once per count.
WORKER_COUNTS = [int(n) for n in os.environ.get("BENCH_WORKERS", "1,2").split(",")]
SHARDS = 4
REPEAT = int(os.environ.get("BENCH_REPEAT", "1"))
COUNT_SYNCS = os.environ.get("BENCH_COUNT_SYNCS", "") not in ("", "0")
# The durable pass (both servers syncing, as `make run` ships) after a run with syncs off:
# BENCH_DURABLE=0 leaves it out; BENCH_DURABLE_REPEAT runs it that many times.
DURABLE = os.environ.get("BENCH_DURABLE", "1") not in ("", "0")
DURABLE_REPEAT = int(os.environ.get("BENCH_DURABLE_REPEAT", "3"))


@dataclass(frozen=True)
class Message:
    room_id: str
    event_id: str
    body: bytes  # an encoded InputRoomEvent
    # Whether the event is expected to produce a `new_room_event` (a rejected one does not).
    output: bool = True


def _builder(version: str, room_id: str) -> RoomBuilder:
    rules = rules_for(version)
    assert rules is not None

    def event_id(pdu: dict[str, Any]) -> str:
        pdu["hashes"] = {"sha256": unpadded_b64(content_hash(pdu))}
        return compute_event_id(pdu, rules)

    return RoomBuilder(version, room_id=room_id, event_id_fn=event_id)


def _message(
    b: RoomBuilder, eid: str, kind: str = "new", *, output: bool = True, **kw: Any
) -> Message:
    raw = msgspec.Raw(msgspec.json.encode(b.events[eid]))
    inp = InputRoomEvent(kind=kind, event=raw, **kw)  # type: ignore[arg-type]
    return Message(b.room_id, eid, encode_input(inp), output)


def _room(room_id: str, events: int, rejected_every: int = 0) -> list[Message]:
    """A linear room of `events` events (joins, then messages). With `rejected_every`, every
    that many events a stranger's message (rejected: not in the room) is followed by a
    member's message whose only prev it is, then by a message merging that branch with the
    last accepted event (which the rejected one left a forward extremity)."""
    b = _builder("10", room_id)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "public")
    users = [f"u{i}" for i in range(max(1, events // 10))]
    rejected: set[str] = set()
    while len(b.events) < events:
        n = len(b.events)
        user = users[n % len(users)]
        if ("m.room.member", f"@{user}:test") not in b.state:
            b.join(user)
        elif rejected_every and n % rejected_every == 0 and events - n >= 3:
            accepted = b.latest[-1]
            bad = b.message("@stranger:elsewhere.test", f"message {n}")
            rejected.add(bad)
            child = b.message(user, f"message {n + 1}", prev=[bad])
            b.message("alice", f"message {n + 2}", prev=[child, accepted])
        else:
            b.message(user, f"message {n}")
    return [_message(b, eid, output=eid not in rejected) for eid in b.events]


def many_rooms() -> list[Message]:
    rooms = [_room(f"!r{i}:test", PER_ROOM) for i in range(ROOMS)]
    # Interleaved, as traffic of many rooms arrives; each room stays in order.
    return [rooms[r][i] for i in range(PER_ROOM) for r in range(ROOMS)]


def big_room() -> tuple[list[Message], Message]:
    b = _builder("10", "!big:test")
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "public")
    for i in range(BIG_ROOM - 4):
        b.join(f"m{i}")
    state = list(b.state.values())
    outliers = [_message(b, eid, kind="outlier") for eid in state]
    join = b.join("@newcomer:here")
    return outliers, _message(b, join, state_event_ids=tuple(state))


# --- the services --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _database(pg: EmbeddedPostgres) -> str:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return pg.dsn(name)


class WorkerProcess:
    def __init__(
        self, nats_url: str, dsn: str, prefix: str, data_dir: Path, index: int = 0
    ) -> None:
        self.port = _free_port()
        self.log = data_dir / f"worker-{prefix}-{index}.log"
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "DATABASE_URL": dsn,
            "ROOMSERVER_PREFIX": prefix,
            "METRICS_ADDR": f"127.0.0.1:{self.port}",
            "SHARDS": str(SHARDS),
            "LOG_LEVEL": "warning",
            "DATA_DIR": str(data_dir),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], cwd=ROOT, env=env,
            # Its log goes to a file: a pipe nobody reads would block the worker once full.
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )
        # BENCH_PROFILE names a py-spy output file: the (first) worker is sampled while it runs.
        profile = os.environ.get("BENCH_PROFILE")
        self.profiler = None
        if profile and index == 0:
            self.profiler = subprocess.Popen(
                ["py-spy", "record", "-f", "raw", "-r", "250", "-o", profile,
                 "--pid", str(self.proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.log.read_text(errors="replace")
                raise RuntimeError(f"worker exited early: {err[-2000:]}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"GET /readyz HTTP/1.0\r\n\r\n")
                status = await reader.readline()
                writer.close()
                if b" 200 " in status:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError("worker did not become ready")

    async def _metrics(self, prefix: str) -> dict[str, float]:
        """The worker's /metrics samples whose line starts with `prefix`, by line head."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith(prefix)
        }

    async def stage_seconds(self) -> dict[str, float]:
        """Seconds spent per pipeline stage so far."""
        samples = await self._metrics("roomserver_stage_duration_seconds_sum{")
        return {head.split('stage="', 1)[1].split('"', 1)[0]: v for head, v in samples.items()}

    async def shards_owned(self) -> int:
        return int(sum((await self._metrics("roomserver_shards_owned ")).values()))

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            self.profiler.wait(60)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- measuring -----------------------------------------------------------------------------


async def _publish(
    js: Any, subject_of: Any, messages: Sequence[Message], stream: str, sent: dict[str, float]
) -> None:
    """Publish with up to PUBLISH_WINDOW acks outstanding (a sliding window, as a producer
    service would pipeline); calls start in order, so each room's messages reach the stream
    in order."""
    window = asyncio.Semaphore(PUBLISH_WINDOW)
    pending: list[asyncio.Future[Any]] = []
    for m in messages:
        await window.acquire()
        headers = {"Room-ID": m.room_id, "Nats-Msg-Id": m.event_id}
        sent[m.event_id] = time.perf_counter()
        future = asyncio.ensure_future(
            js.publish(subject_of(m), m.body, stream=stream, headers=headers)
        )
        future.add_done_callback(lambda _: window.release())
        pending.append(future)
    await asyncio.gather(*pending)


async def baseline(nats_url: str, messages: Sequence[Message]) -> float:
    """Raw JetStream: publish to a plain stream, consume and ack; events/s."""
    nc = await nats.connect(nats_url, max_reconnect_attempts=1)
    js = nc.jetstream()
    name = f"BENCHRAW_{uuid.uuid4().hex[:6].upper()}"
    subject = f"benchraw.{name.lower()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{subject}.>"], max_msg_size=16 << 20))
    sub = await js.pull_subscribe(f"{subject}.>", durable="raw", stream=name)
    start = time.perf_counter()
    publisher = asyncio.create_task(
        _publish(js, lambda m: f"{subject}.{room_token(m.room_id)}", messages, name, {})
    )
    got = 0
    while got < len(messages):
        try:
            batch = await sub.fetch(256, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in batch:
            await msg.ack()
        got += len(batch)
    elapsed = time.perf_counter() - start
    await publisher
    await js.delete_stream(name)
    await nc.close()
    return len(messages) / elapsed


async def through_worker(
    nats_url: str, subjects: Subjects, messages: Sequence[Message]
) -> tuple[float, list[float]]:
    """Publish to the worker's input; (events/s until the last output, latencies in s)."""
    nc = await nats.connect(nats_url, max_reconnect_attempts=1)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        subjects.output_wildcard, durable=f"bench{uuid.uuid4().hex[:6]}",
        stream=subjects.output_stream,
    )
    sent: dict[str, float] = {}
    latencies: list[float] = []
    start = time.perf_counter()
    publisher = asyncio.create_task(
        _publish(js, lambda m: subjects.input(m.room_id), messages, subjects.input_stream, sent)
    )
    wanted = {m.event_id for m in messages if m.output}
    while wanted:
        try:
            batch = await sub.fetch(256, timeout=5.0)
        except (TimeoutError, nats.errors.TimeoutError):
            if publisher.done():
                print(f"   gave up waiting: {len(wanted)} events without output")
                break
            continue
        now = time.perf_counter()
        for msg in batch:
            out = decode_output(msg.data)
            await msg.ack()
            if out.new_room_event is None:
                continue
            eid = msgspec.json.decode(out.new_room_event.event)["event_id"]
            if eid in wanted:
                wanted.discard(eid)
                latencies.append(now - sent[eid])
    elapsed = time.perf_counter() - start
    await publisher
    await nc.close()
    return (len(messages) - len(wanted)) / elapsed, latencies


async def big_join(nats_url: str, subjects: Subjects) -> tuple[float, float, str]:
    outliers, join = big_room()
    nc = await nats.connect(nats_url, max_reconnect_attempts=1)
    js = nc.jetstream()
    start = time.perf_counter()
    await _publish(js, lambda m: subjects.input(m.room_id), outliers[:-1], subjects.input_stream, {})
    last = await _request(nc, subjects, outliers[-1])
    outliers_done = time.perf_counter() - start
    start = time.perf_counter()
    reply = await _request(nc, subjects, join)
    join_done = time.perf_counter() - start
    await nc.close()
    return outliers_done, join_done, f"{last.outcome}/{reply.outcome} {reply.reason_code}"


async def _request(nc: Any, subjects: Subjects, m: Message) -> Any:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    headers = {"Room-ID": m.room_id, "Nats-Msg-Id": m.event_id, "Reply-Inbox": inbox}
    await nc.jetstream().publish(
        subjects.input(m.room_id), m.body, stream=subjects.input_stream, headers=headers
    )
    msg = await sub.next_msg(timeout=600)
    return decode_reply(msg.data)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _scenario(
    name: str,
    nats: EmbeddedNats,
    pg: EmbeddedPostgres,
    data: Path,
    messages: list[Message],
    processes: int = 1,
) -> Figures:
    """Run one scenario and print its figures."""
    nats_url = nats.url
    nats_pid = nats.process.pid if nats.process is not None else 0
    nats_before = _cpu_seconds([nats_pid])
    syncs = SyncCount([nats_pid])
    raw = await baseline(nats_url, messages)
    syncs_raw = syncs.stop()
    cpu_nats_raw = _cpu_seconds([nats_pid]) - nats_before
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    dsn = await _database(pg)
    workers = [WorkerProcess(nats_url, dsn, prefix, data, i) for i in range(processes)]
    try:
        for w in workers:
            await w.ready()
        await _balanced(workers)
        pids = [w.proc.pid for w in workers]
        backends = await _backends(pg, dsn)
        cpu_before = _cpu_seconds(pids), _cpu_seconds(backends)
        others_before = _cpu_seconds([nats_pid]), time.process_time()
        pg_pids = [pg.process.pid, *_children(pg.process.pid)] if pg.process else []
        syncs_nats, syncs_pg = SyncCount([nats_pid]), SyncCount(pg_pids)
        wall_before = time.perf_counter()
        rate, lat = await through_worker(nats_url, Subjects(prefix), messages)
        wall = time.perf_counter() - wall_before
        synced = syncs_nats.stop(), syncs_pg.stop()
        cpu_nats = _cpu_seconds([nats_pid]) - others_before[0]
        cpu_bench = time.process_time() - others_before[1]
        # Backends opened during the run started at zero.
        backends_after = await _backends(pg, dsn)
        cpu_worker = _cpu_seconds(pids) - cpu_before[0]
        cpu_pg = _cpu_seconds(backends_after) - cpu_before[1]
        stages: dict[str, float] = {}
        for w in workers:
            for stage, seconds in (await w.stage_seconds()).items():
                stages[stage] = stages.get(stage, 0.0) + seconds
    finally:
        for w in workers:
            w.stop()
    for w in workers:
        logged = w.log.read_text(errors="replace").splitlines()
        if logged:
            print(f"   a worker logged {len(logged)} lines (level warning and up); the first: "
                  f"{logged[0][:400]}", flush=True)
    print(
        f"{name:<28} {len(messages):>7} events  baseline {raw:>8.0f}/s  worker {rate:>7.0f}/s"
        f"{f' ({processes} processes)' if processes > 1 else ''}"
        f"  ratio {rate / raw:>5.2f}  p50 {_pct(lat, 0.5) * 1000:>7.1f} ms"
        f"  p99 {_pct(lat, 0.99) * 1000:>7.1f} ms",
        flush=True,
    )
    per_event = {k: v / len(messages) * 1000 for k, v in stages.items() if v > 0}
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_event.items(), key=lambda kv: -kv[1]))
    print(f"{'':<28} ms per event by stage: {shown}", flush=True)
    # CPU time is what a loaded machine distorts least: compare runs by it.
    print(
        f"{'':<28} CPU ms per event: worker{'s' if processes > 1 else ''} {cpu_worker / len(messages) * 1000:.2f}, "
        f"its PostgreSQL backends {cpu_pg / len(messages) * 1000:.2f}, "
        f"NATS server {cpu_nats / len(messages) * 1000:.2f} "
        f"(in the baseline {cpu_nats_raw / len(messages) * 1000:.2f}), "
        f"this publisher and reader {cpu_bench / len(messages) * 1000:.2f}; cores busy "
        f"{(cpu_worker + cpu_pg + cpu_nats + cpu_bench) / wall:.2f}",
        flush=True,
    )
    nats_syncs, pg_syncs = synced
    if syncs_raw is not None and nats_syncs is not None and pg_syncs is not None:
        n = len(messages)
        print(
            f"{'':<28} disk syncs per event: NATS server {nats_syncs / n:.2f} (in the baseline "
            f"{syncs_raw / n:.2f}), PostgreSQL {pg_syncs / n:.3f}",
            flush=True,
        )
    per = 1000 / len(messages)
    return Figures(rate, raw, cpu_worker * per, cpu_pg * per, cpu_nats * per, cpu_nats_raw * per)


@dataclass(frozen=True)
class Figures:
    """One scenario's measurement: events/s through the worker and in the raw baseline, and
    CPU ms per event of the worker(s), their PostgreSQL backends, the NATS server, and the NATS
    server in the baseline."""

    rate: float
    raw: float
    worker_cpu: float
    pg_cpu: float
    nats_cpu: float
    nats_raw_cpu: float

    @property
    def ratio(self) -> float:
        return self.rate / self.raw


def _summary(name: str, runs: Sequence[Figures]) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    ratios = [f.ratio for f in runs]
    print(
        f"{name}: {len(runs)} runs, ratio median {med(ratios):.2f} "
        f"(each: {', '.join(f'{r:.2f}' for r in ratios)}); "
        f"worker {med([f.rate for f in runs]):.0f}/s against baseline "
        f"{med([f.raw for f in runs]):.0f}/s; CPU ms per event, medians: worker "
        f"{med([f.worker_cpu for f in runs]):.2f}, PostgreSQL {med([f.pg_cpu for f in runs]):.2f}, "
        f"NATS server {med([f.nats_cpu for f in runs]):.2f} "
        f"(in the baseline {med([f.nats_raw_cpu for f in runs]):.2f})",
        flush=True,
    )


async def _balanced(workers: Sequence[WorkerProcess], timeout: float = 60.0) -> None:
    """Until the shards are spread evenly over the workers (leases move one at a time)."""
    fair = -(-SHARDS // len(workers))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = [await w.shards_owned() for w in workers]
        if sum(owned) == SHARDS and max(owned) <= fair:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"shards not spread over {len(workers)} workers in {timeout:.0f} s")


async def _backends(pg: EmbeddedPostgres, dsn: str) -> list[int]:
    """PIDs of the PostgreSQL backends serving the worker's database."""
    name = dsn.rsplit("/", 1)[1].split("?", 1)[0]
    conn = await asyncpg.connect(pg.dsn())
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


class SyncCount:
    """The disk syncs (fsync and fdatasync calls) some processes make from now until `stop`,
    counted by `perf stat` on the syscall tracepoints: with BENCH_COUNT_SYNCS=1, where perf
    and the tracepoints are there (as root). A count does not depend on how loaded the
    machine is, which rates and even CPU times do."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._out = Path(tempfile.mkstemp(prefix="bench-syncs-")[1])
        self._perf: subprocess.Popen[bytes] | None = None
        if COUNT_SYNCS and pids:
            self._perf = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-o", str(self._out),
                 "-e", "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                 "-p", ",".join(str(p) for p in pids)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)  # perf attaches before the measured work starts

    def stop(self) -> int | None:
        """The syncs counted, or None when not counting."""
        if self._perf is None:
            self._out.unlink(missing_ok=True)
            return None
        self._perf.send_signal(signal.SIGINT)
        self._perf.wait(30)
        total = 0
        for line in self._out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].strip().isdigit():
                total += int(fields[0])
        self._out.unlink(missing_ok=True)
        return total


def _children(pid: int) -> list[int]:
    """The direct child processes of `pid` (PostgreSQL's backends and helpers)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (Linux /proc; 0 where unreadable)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


async def main() -> None:
    await _scenarios(SYNC)
    if DURABLE and not SYNC and "many" in SCENARIOS:
        await _durable()


async def _durable() -> None:
    """Many rooms, one worker, with both servers syncing every write to disk: what `make run`
    promises (an acknowledged input and a published output survive a power cut), against
    the raw baseline with the same syncs. Goal: ratio >= 0.5 (medians: one run says little
    on a shared machine)."""
    with _servers(sync=True) as (data, nats_server, pg):
        print("durable: disk syncs on (nats-server sync_interval always, PostgreSQL fsync)")
        messages = many_rooms()
        name = "many rooms, durable"
        runs = [
            await _scenario(name, nats_server, pg, data, messages, 1)
            for _ in range(DURABLE_REPEAT)
        ]
        if len(runs) > 1:
            _summary(name, runs)


@contextmanager
def _servers(sync: bool) -> Iterator[tuple[Path, EmbeddedNats, EmbeddedPostgres]]:
    """A throwaway NATS server and PostgreSQL, syncing every write to disk or not, and the
    folder they keep their data in (the worker's too)."""
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        data = Path(tmp)
        nats_server = EmbeddedNats(data / "nats", server_name="bench-pipeline", sync_always=sync)
        pg = EmbeddedPostgres(data / "pg", fsync=sync)
        nats_server.start()
        pg.start()
        try:
            yield data, nats_server, pg
        finally:
            pg.stop()
            nats_server.stop()


async def _scenarios(sync: bool) -> None:
    with _servers(sync) as (data, nats_server, pg):
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"many rooms: {ROOMS} x {PER_ROOM}; linear: {LINEAR}; big room: {BIG_ROOM}; "
            f"load average {load} on {os.cpu_count()} cores; "
            f"disk syncs {'on (BENCH_SYNC)' if sync else 'off'}"
        )
        if "many" in SCENARIOS:
            messages = many_rooms()
            for n in WORKER_COUNTS:
                name = "many rooms" if n == 1 else f"many rooms, {n} workers"
                runs = [
                    await _scenario(name, nats_server, pg, data, messages, n)
                    for _ in range(REPEAT)
                ]
                if REPEAT > 1:
                    _summary(name, runs)
        if "linear" in SCENARIOS:
            linear = _room("!lin:test", LINEAR)
            await _scenario("one linear room", nats_server, pg, data, linear)
        if "rejected" in SCENARIOS:
            plain = _room("!plain:test", REJECTED_ROOM)
            built_on = _room("!rejected:test", REJECTED_ROOM, REJECTED_EVERY)
            refused = sum(1 for m in built_on if not m.output)
            without = (
                await _scenario("no rejected events", nats_server, pg, data, plain)
            ).rate
            with_ = (
                await _scenario(
                    f"{refused} rejected, built upon", nats_server, pg, data, built_on
                )
            ).rate
            print(
                f"rejected events built upon: {with_:.0f}/s against {without:.0f}/s "
                f"without, ratio {with_ / without:.3f}",
                flush=True,
            )
        if "join" not in SCENARIOS:
            return
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        worker = WorkerProcess(nats_server.url, await _database(pg), prefix, data)
        try:
            await worker.ready()
            outliers, join, outcome = await big_join(nats_server.url, Subjects(prefix))
        finally:
            worker.stop()
        print(
            f"big-room join: {BIG_ROOM} outliers in {outliers:.1f} s "
            f"({BIG_ROOM / outliers:.0f}/s), join with state in {join:.2f} s ({outcome})",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
