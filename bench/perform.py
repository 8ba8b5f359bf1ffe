"""The Perform API end to end (`make bench`): `send_event` request -> reply, event stored, output
published, against the plain input path measured in the same run.

Everything runs on the embedded NATS and PostgreSQL with the real worker process
(`python -m worker run`), as bench.pipeline does.

1. One room: PERFORM_MESSAGES send_events into one room, PERFORM_CONCURRENCY in flight
   (they queue on the room's lock: the per-room serial path).
2. 100 rooms: PERFORM_ROOMS rooms, one sender per room, PERFORM_MESSAGES messages in all.
3. Paced: 100 messages/s spread over the rooms for PACED_SECONDS; the latency at that load.
4. Plain input path: the same number of events, built and signed here with the same builder,
   published as `new` inputs with a Reply-Inbox, the same number in flight; events/s.

Each scenario prints events/s (until the last output was published), p50/p99 of request ->
reply, and the CPU each event cost the worker, NATS, PostgreSQL and this process (the
machine may be shared: CPU per event is steadier than events/s). Goals (2 cores): >= 1,000
messages/s across rooms, p50 <= 20 ms at 100 messages/s. PERFORM_SCENARIOS picks scenarios
(default `one,rooms,paced,input`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import (  # noqa: E402
    WorkerProcess,
    _backends,
    _cpu_seconds,
    _database,
    _pct,
)
from worker.bus.producer import send_input  # noqa: E402
from worker.bus.subjects import Subjects  # noqa: E402
from worker.core.builder import Built, Draft, RoomHead, build  # noqa: E402
from worker.core.signing import new_key_file, parse_key_file  # noqa: E402
from worker.core.versions import rules_for  # noqa: E402
from worker.embedded import EmbeddedNats, EmbeddedPostgres  # noqa: E402
from worker.messages import InputRoomEvent, decode_output  # noqa: E402

MESSAGES = int(os.environ.get("PERFORM_MESSAGES", "2000"))
ROOMS = int(os.environ.get("PERFORM_ROOMS", "100"))
CONCURRENCY = int(os.environ.get("PERFORM_CONCURRENCY", "64"))
PACED_SECONDS = float(os.environ.get("PACED_SECONDS", "5"))
SCENARIOS = os.environ.get("PERFORM_SCENARIOS", "one,rooms,paced,input").split(",")
SERVER = "bench.test"
SENDER = f"@alice:{SERVER}"


class Asker:
    def __init__(self, nc: Any, prefix: str) -> None:
        self.nc = nc
        self.prefix = prefix

    async def perform(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        msg = await self.nc.request(
            f"{self.prefix}.perform.{name}", json.dumps(body).encode(), timeout=60
        )
        data: dict[str, Any] = json.loads(msg.data)
        if (msg.headers or {}).get("Nats-Service-Error-Code"):
            raise RuntimeError(f"{name}: {data}")
        return data

    async def send(self, room_id: str, n: int) -> None:
        await self.perform("send_event", {
            "room_id": room_id, "sender": SENDER, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": f"message {n}"},
        })


class Outputs:
    """Counts `new_room_event` outputs, to time a scenario until the last one is published."""

    def __init__(self, nc: Any, subjects: Subjects) -> None:
        self.count = 0
        self._nc = nc
        self._subjects = subjects
        self._sub: Any = None

    async def start(self) -> None:
        async def on(msg: Any) -> None:
            if decode_output(msg.data).new_room_event is not None:
                self.count += 1

        self._sub = await self._nc.subscribe(self._subjects.output_wildcard, cb=on)

    async def wait_for(self, n: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count} of {n} outputs")
            await asyncio.sleep(0.01)


async def _run(
    jobs: list[Callable[[], Awaitable[None]]], concurrency: int, outputs: Outputs
) -> tuple[float, list[float]]:
    """Run the jobs with `concurrency` in flight; (events/s until the last output, latencies)."""
    target = outputs.count + len(jobs)
    latencies: list[float] = []
    queue = list(reversed(jobs))
    start = time.perf_counter()

    async def lane() -> None:
        while queue:
            job = queue.pop()
            t = time.perf_counter()
            await job()
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    await outputs.wait_for(target)
    return len(jobs) / (time.perf_counter() - start), latencies


class Cpu:
    """CPU seconds of the worker, NATS, the worker's PostgreSQL backends and this process."""

    def __init__(self, worker: WorkerProcess, nats_pid: int, pg: EmbeddedPostgres, dsn: str):
        self._pids = (worker.proc.pid, nats_pid)
        self._pg = pg
        self._dsn = dsn
        self._before = (0.0, 0.0, 0.0, 0.0)

    async def _now(self) -> tuple[float, float, float, float]:
        backends = await _backends(self._pg, self._dsn)
        return (_cpu_seconds(self._pids[:1]), _cpu_seconds(self._pids[1:]),
                _cpu_seconds(backends), time.process_time())

    async def start(self) -> None:
        self._before = await self._now()

    async def per_event(self, events: int) -> str:
        """Milliseconds of CPU per event since `start`: worker, nats, pg, bench."""
        # Backends opened during the run started at zero: a slight overcount at worst.
        now = await self._now()
        ms = [(a - b) * 1000 / max(events, 1) for a, b in zip(now, self._before, strict=True)]
        return "cpu/event ms: worker {:.2f} nats {:.2f} pg {:.2f} bench {:.2f}".format(*ms)


def _report(name: str, rate: float, latencies: list[float], cpu: str = "") -> None:
    print(f"{name:<34} {rate:8.0f} events/s   p50 {_pct(latencies, 0.5) * 1000:6.1f} ms   "
          f"p99 {_pct(latencies, 0.99) * 1000:6.1f} ms   {cpu}", flush=True)


def _prebuilt(rooms: int, per_room: int) -> list[list[Built]]:
    """Rooms built here with the same builder and a key of our own: the plain input path."""
    rules = rules_for("12")
    assert rules is not None
    key = parse_key_file(new_key_file(os.urandom(32), os.urandom(4)), SERVER)
    out = []
    for r in range(rooms):
        head = RoomHead(rules, "")
        chain: list[Built] = []
        drafts = [
            # A nonce per room: identical create events would make one room.
            Draft("m.room.create", SENDER, {"room_version": "12", "nonce": r}, ""),
            Draft("m.room.member", SENDER, {"membership": "join"}, SENDER),
            Draft("m.room.power_levels", SENDER, {"users": {}}, ""),
        ] + [Draft("m.room.message", SENDER, {"body": f"m{i}"}) for i in range(per_room)]
        for i, draft in enumerate(drafts):
            built = build(draft, head, key=key, origin_server_ts=1_700_000_000_000 + i)
            assert isinstance(built, Built), built
            chain.append(built)
            head = head.advance(built)
        out.append(chain)
    return out


async def _input_path(
    nc: Any, subjects: Subjects, outputs: Outputs, cpu: Cpu
) -> tuple[float, list[float]]:
    per_room = max(1, MESSAGES // ROOMS)
    rooms = _prebuilt(ROOMS, per_room)

    def submit(b: Built) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            message = InputRoomEvent(kind="new", event=_raw(b.pdu), room_version="12")
            reply = await send_input(nc, subjects, message, room_id=b.room_id,
                                     event_id=b.event_id, timeout=60)
            assert reply.outcome == "accepted", reply

        return job

    # Room creation first (not measured), then the messages, one lane per room.
    await asyncio.gather(*(_in_order([submit(b) for b in chain[:3]]) for chain in rooms))
    lanes = [[submit(b) for b in chain[3:]] for chain in rooms]
    await cpu.start()
    return await _lanes(lanes, outputs)


def _raw(pdu: dict[str, Any]) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(pdu))


async def _in_order(jobs: list[Callable[[], Awaitable[None]]]) -> None:
    for job in jobs:
        await job()


async def _lanes(
    lanes: list[list[Callable[[], Awaitable[None]]]], outputs: Outputs
) -> tuple[float, list[float]]:
    """One job at a time per lane, all lanes at once."""
    target = outputs.count + sum(len(lane) for lane in lanes)
    latencies: list[float] = []
    start = time.perf_counter()

    async def lane(jobs: list[Callable[[], Awaitable[None]]]) -> None:
        for job in jobs:
            t = time.perf_counter()
            await job()
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(lane(jobs) for jobs in lanes))
    await outputs.wait_for(target)
    return sum(map(len, lanes)) / (time.perf_counter() - start), latencies


async def _paced(asker: Asker, rooms: list[str], rate: float, seconds: float) -> list[float]:
    latencies: list[float] = []
    tasks = []

    async def one(room_id: str, n: int) -> None:
        t = time.perf_counter()
        await asker.send(room_id, n)
        latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(rooms[n % len(rooms)], n)))
    await asyncio.gather(*tasks)
    return latencies


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-perform-") as tmp:
        data = Path(tmp)
        nats_server = EmbeddedNats(data / "nats", server_name="bench-perform")
        pg = EmbeddedPostgres(data / "pg", fsync=False)
        nats_server.start()
        pg.start()
        os.environ["SERVER_NAME"] = SERVER
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        dsn = await _database(pg)
        worker = WorkerProcess(nats_server.url, dsn, prefix, data)
        nc = await nats.connect(nats_server.url)
        try:
            await worker.ready()
            nats_pid = nats_server.process.pid if nats_server.process is not None else 0
            cpu = Cpu(worker, nats_pid, pg, dsn)
            subjects = Subjects(prefix)
            outputs = Outputs(nc, subjects)
            await outputs.start()
            asker = Asker(nc, prefix)
            print(f"send_event: {MESSAGES} messages; {ROOMS} rooms; {CONCURRENCY} in flight "
                  f"in one room; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

            async def room() -> str:
                made = await asker.perform("create_room", {"creator": SENDER,
                                                           "preset": "public_chat"})
                room_id: str = made["room_id"]
                return room_id

            if "one" in SCENARIOS:
                one = await room()
                jobs = [lambda n=n: asker.send(one, n) for n in range(MESSAGES)]
                await cpu.start()
                rate, lat = await _run(jobs, CONCURRENCY, outputs)
                _report("one room", rate, lat, await cpu.per_event(len(jobs)))

            many_rate = 0.0
            rooms = [await room() for _ in range(ROOMS)]
            per_room = max(1, MESSAGES // ROOMS)
            if "rooms" in SCENARIOS:
                lanes = [[(lambda r=r, n=n: asker.send(r, n)) for n in range(per_room)]
                         for r in rooms]
                await cpu.start()
                many_rate, lat = await _lanes(lanes, outputs)
                _report(f"{ROOMS} rooms", many_rate, lat, await cpu.per_event(ROOMS * per_room))

            if "paced" in SCENARIOS:
                await cpu.start()
                lat = await _paced(asker, rooms, 100.0, PACED_SECONDS)
                _report("100 messages/s over the rooms", 100.0, lat,
                        await cpu.per_event(len(lat)))

            if "input" in SCENARIOS:
                input_rate, lat = await _input_path(nc, subjects, outputs, cpu)
                _report(f"plain input path, {ROOMS} rooms", input_rate, lat,
                        await cpu.per_event(ROOMS * per_room))
                if many_rate:
                    print(f"send_event / plain input, {ROOMS} rooms: "
                          f"{many_rate / input_rate:.2f}", flush=True)
        finally:
            await nc.close()
            worker.stop()
            pg.stop()
            nats_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
