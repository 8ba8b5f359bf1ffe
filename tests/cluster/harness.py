"""A real deployment on loopback, for the failover tests and `make chaos`.

- `NatsCluster`: three `nats-server` nodes (EmbeddedNats with `cluster=`), JetStream R3.
- `WorkerProcess`: `python -m worker run` as a subprocess with NATS_URL (all three nodes),
  DATABASE_URL and its own METRICS_ADDR; SIGKILL or SIGTERM it.
- `Replay`: many rooms built with `RoomBuilder` (messages, topics, joins and leaves, forks
  merged again), their expected outcomes and outputs from one clean run of the pipeline over
  the in-memory fakes, published to the input stream in per-room order.
- `verify(...)`: what must hold afterwards, returned as a `Verdict` (the caller asserts):
  every input has exactly one outcome, every output appears once after `Nats-Msg-Id`
  deduplication and in per-room order, byte for byte as in the clean run, every room's final
  state and extremities are the built ones, nothing was dead-lettered, and the write log
  shows no two workers writing one room at overlapping times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import Harness
from worker.bus.leases import namespace
from worker.bus.producer import publish_input
from worker.bus.shards import fair_share
from worker.bus.streams import StreamLimits, ensure_streams
from worker.bus.subjects import MSG_ID_HEADER, ROOM_ID_HEADER, Subjects
from worker.embedded import EmbeddedNats, free_port
from worker.messages import InputRoomEvent
from worker.storage import PostgresStore
from worker.storage.events import OUTCOME_NAMES

REPO = Path(__file__).resolve().parents[2]


# --- NATS ------------------------------------------------------------------------------------


class NatsCluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        cports = [free_port() for _ in range(size)]
        self.nodes = [
            EmbeddedNats(
                base / f"nats{i}",
                port=free_port(),
                server_name=f"n{i}",
                cluster=("rs", cports[i], tuple(p for j, p in enumerate(cports) if j != i)),
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def restart(self, i: int, down: float = 1.0) -> None:
        self.nodes[i].stop()
        time.sleep(down)
        self.nodes[i].start()


async def connect(url: str) -> NATS:
    return await nats.connect(
        servers=url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.5,
        connect_timeout=5,
    )


async def provision(nc: NATS, subjects: Subjects, shards: int, timeout: float = 60.0) -> None:
    """The three streams with three replicas, once the cluster has a JetStream leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await ensure_streams(
                nc.jetstream(), subjects, StreamLimits(shards=shards, replicas=3)
            )
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# --- workers -----------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0

    def start(self) -> None:
        self.metrics_port = free_port()
        env = dict(os.environ)
        env.update(self.env)
        env["METRICS_ADDR"] = f"127.0.0.1:{self.metrics_port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            try:
                await asyncio.to_thread(urllib.request.urlopen, url, None, 1.0)
                return
            except OSError:
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy in {timeout}s: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def worker_env(nats_url: str, dsn: str, prefix: str, shards: int, data: Path) -> dict[str, str]:
    return {
        "NATS_URL": nats_url,
        "DATABASE_URL": dsn,
        "ROOMSERVER_PREFIX": prefix,
        "SHARDS": str(shards),
        "DATA_DIR": str(data),
        "DRAIN_GRACE_SECONDS": "5",
        "MAX_RETRIES": "30",
        "RETRY_BACKOFF": "0.2",
        "LOG_LEVEL": "info",
        "DATABASE_POOL_MAX": "6",
    }


class Fleet:
    """Worker processes; each killed one can be replaced by a new one."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.workers: list[WorkerProcess] = []
        logs.mkdir(parents=True, exist_ok=True)

    async def add(self) -> WorkerProcess:
        w = WorkerProcess(f"w{len(self.workers)}", self.env, self.logs / f"w{len(self.workers)}.log")
        self.workers.append(w)
        w.start()
        await w.wait_healthy()
        return w

    @property
    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    def stop(self) -> list[int | None]:
        return [w.terminate() for w in self.workers if w.alive]

    def kill_all(self) -> None:
        for w in self.workers:
            w.kill()


async def shard_owners(admin_dsn: str, prefix: str) -> dict[int, int]:
    """Shard -> PostgreSQL pid of its lease session, from pg_locks."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch(
            "SELECT objid::bigint AS shard, pid FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND objsubid = 2 AND classid = $1::bigint::oid",
            namespace(prefix, "shard"),
        )
    finally:
        await conn.close()
    return {int(r["shard"]): int(r["pid"]) for r in rows}


async def wait_balanced(admin_dsn: str, prefix: str, shards: int, workers: int,
                        timeout: float = 60.0) -> dict[int, int]:
    """Until every shard has an owner and none of `workers` owns more than its fair share
    (balancing moves one shard at a time); returns the owners."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        owners = await shard_owners(admin_dsn, prefix)
        per_worker: dict[int, int] = defaultdict(int)
        for pid in owners.values():
            per_worker[pid] += 1
        if sorted(owners) == list(range(shards)) and (
            max(per_worker.values()) <= fair_share(shards, workers)
        ):
            return owners
        if loop.time() > deadline:
            raise TimeoutError(f"shards not balanced over {workers} workers: {owners}")
        await asyncio.sleep(0.2)


# --- the replay --------------------------------------------------------------------------------


@dataclass
class Room:
    builder: RoomBuilder
    outcomes: dict[str, str]
    outputs: list[bytes]


@dataclass
class Replay:
    rooms: list[Room]

    @property
    def events(self) -> int:
        return sum(len(r.builder.events) for r in self.rooms)

    @property
    def outputs(self) -> int:
        return sum(len(r.outputs) for r in self.rooms)


def build_room(i: int, size: int, rng: random.Random) -> RoomBuilder:
    b = RoomBuilder("10", room_id=f"!chaos{i}:test", real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100, "bob": 50})
    b.join_rules("alice", "public")
    b.join("bob")
    n = 0
    while len(b.events) < size:
        roll = rng.random()
        if roll < 0.6:
            b.message(rng.choice(["alice", "bob"]), f"m{len(b.events)}")
        elif roll < 0.7:
            b.topic("alice", f"t{len(b.events)}")
        elif roll < 0.85:
            n += 1
            user = f"u{rng.randrange(8)}"
            member = b.state.get(("m.room.member", f"@{user}:test"))
            joined = member is not None and (
                b.events[member]["content"].get("membership") == "join"
            )
            if joined and rng.random() < 0.5:
                b.leave(user)
            else:
                b.join(user)
        else:
            fork = b.fork()
            a = b.message("alice", f"left{len(b.events)}")
            c = fork.message("bob", f"right{len(b.events)}")
            b.message("alice", "merge", prev=[a, c])
    return b


async def build_replay(rooms: int, events_per_room: int, seed: int = 8) -> Replay:
    rng = random.Random(seed)
    out: list[Room] = []
    for i in range(rooms):
        b = build_room(i, events_per_room, rng)
        harness = Harness()
        outcomes: dict[str, str] = {}
        for eid in b.events:
            result = await harness.send(b, eid)
            outcomes[eid] = str(result.outcome.value)
        # Every event is stored by a clean run (the generator only builds allowed events), so
        # "all stored" is what completion means and a missing row is a lost event.
        assert set(outcomes.values()) == {"accepted"}, outcomes
        out.append(Room(b, outcomes, [r.payload for r in harness.relay.published]))
    return Replay(out)


async def publish_replay(nc: NATS, subjects: Subjects, replay: Replay, parallel: int = 16) -> None:
    """Every room's events in order; rooms interleaved; a failed publish is repeated (the
    event ID is the Nats-Msg-Id, so a repeat that did get stored is dropped)."""
    sem = asyncio.Semaphore(parallel)

    async def room(r: Room) -> None:
        async with sem:
            b = r.builder
            for eid in b.events:
                inp = InputRoomEvent(kind="new", event=msgspec.Raw(msgspec.json.encode(b.events[eid])))
                for attempt in range(120):
                    try:
                        await publish_input(nc, subjects, inp, room_id=b.room_id, event_id=eid,
                                            timeout=2.0)
                        break
                    except Exception as exc:
                        if attempt % 10 == 9:
                            print(f"publish of {eid} failed {attempt + 1} times: {exc!r}",
                                  flush=True)
                        await asyncio.sleep(0.5)
                else:
                    raise RuntimeError(f"could not publish {eid}")

    await asyncio.gather(*(room(r) for r in replay.rooms))


# --- waiting and checking ----------------------------------------------------------------------


async def wait_events(dsn: str, count: int, timeout: float) -> None:
    """Until at least `count` events are stored."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if (await progress(dsn))[0] >= count:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"fewer than {count} events stored after {timeout}s")


async def progress(dsn: str) -> tuple[int, int]:
    """(events stored, outbox rows not yet published)."""
    conn = await asyncpg.connect(dsn)
    try:
        events = await conn.fetchval("SELECT count(*) FROM events")
        unsent = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    finally:
        await conn.close()
    return int(events), int(unsent)


async def wait_done(dsn: str, nc: NATS, subjects: Subjects, replay: Replay,
                    timeout: float) -> None:
    """Until every event is stored, the outbox is empty and the outputs are all published."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            events, unsent = await progress(dsn)
            info = await js.stream_info(subjects.output_stream)
            last = (events, unsent, info.state.messages)
            if events >= replay.events and unsent == 0 and info.state.messages >= replay.outputs:
                return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"not done in {timeout}s: (events, unsent, outputs) = {last}, "
                       f"want ({replay.events}, 0, {replay.outputs})")


async def read_stream(nc: NATS, stream: str, subject: str) -> list[Any]:
    js = nc.jetstream()
    info = await js.stream_info(stream)
    total = info.state.messages
    sub = await js.pull_subscribe(
        subject, stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0),
    )
    msgs: list[Any] = []
    unavailable = 0
    try:
        while len(msgs) < total:
            try:
                batch = await sub.fetch(min(1000, total - len(msgs)), timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            except nats.js.errors.ServiceUnavailableError:
                # Right after a node restart the new consumer may have no leader yet.
                unavailable += 1
                if unavailable > 20:
                    raise
                await asyncio.sleep(0.5)
                continue
            for m in batch:
                msgs.append(m)
                await m.ack()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return msgs


@dataclass
class Verdict:
    events: int = 0
    lost: int = 0
    wrong_outcomes: list[str] = field(default_factory=list)
    duplicated_outputs: int = 0
    out_of_order_rooms: list[str] = field(default_factory=list)
    wrong_state_rooms: list[str] = field(default_factory=list)
    dead_letters: int = 0
    overlaps: list[str] = field(default_factory=list)
    handoffs: int = 0
    writers: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.wrong_outcomes or self.duplicated_outputs
                    or self.out_of_order_rooms or self.wrong_state_rooms or self.dead_letters
                    or self.overlaps)


async def verify(dsn: str, nc: NATS, subjects: Subjects, replay: Replay) -> Verdict:
    v = Verdict(events=replay.events)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        rows = await pool.fetch("SELECT event_id, outcome FROM events")
        stored: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            stored[r["event_id"]].append(r["outcome"])
        for room in replay.rooms:
            for eid, want in room.outcomes.items():
                got = stored.get(eid, [])
                if not got:
                    v.lost += 1
                elif len(got) != 1 or OUTCOME_NAMES[got[0]].value != want:
                    v.wrong_outcomes.append(f"{eid}: {got} != {want}")
        store = PostgresStore(pool)
        for room in replay.rooms:
            b = room.builder
            current = await store.current_state(b.room_id)
            state = await store.materialize(current) if current is not None else {}
            ext = await store.extremities(b.room_id)
            if state != b.state or sorted(ext) != sorted(b.latest):
                v.wrong_state_rooms.append(b.room_id)
        await _check_write_log(pool, v)
    finally:
        await pool.close()

    outputs = await read_stream(nc, subjects.output_stream, subjects.output_wildcard)
    seen: set[str] = set()
    by_room: dict[str, list[bytes]] = defaultdict(list)
    for m in outputs:
        headers = m.headers or {}
        msg_id = headers.get(MSG_ID_HEADER, "")
        if msg_id in seen:
            v.duplicated_outputs += 1
            continue
        seen.add(msg_id)
        by_room[headers.get(ROOM_ID_HEADER, "")].append(m.data)
    for room in replay.rooms:
        if by_room.get(room.builder.room_id, []) != room.outputs:
            v.out_of_order_rooms.append(room.builder.room_id)
    info = await nc.jetstream().stream_info(subjects.deadletter_stream)
    v.dead_letters = int(info.state.messages)
    return v


async def _check_write_log(pool: asyncpg.Pool, v: Verdict) -> None:
    """No two workers wrote one room at overlapping times: a write by another worker must
    start (its transaction, before the room lock) after the previous write to the room."""
    rows = await pool.fetch(
        "SELECT r.room_id, w.worker, w.txn_started, w.written FROM write_log w "
        "JOIN rooms r USING (room_nid) ORDER BY w.room_nid, w.seq"
    )
    prev: Any = None
    workers: set[str] = set()
    for r in rows:
        workers.add(r["worker"])
        if prev is not None and prev["room_id"] == r["room_id"] and prev["worker"] != r["worker"]:
            v.handoffs += 1
            if r["txn_started"] < prev["written"]:
                v.overlaps.append(
                    f"{r['room_id']}: {r['worker']} started {r['txn_started']} before "
                    f"{prev['worker']} wrote at {prev['written']}"
                )
        prev = r
    v.writers = len(workers)
