"""The worker's memory under load (`make bench`): peak RSS of the real worker process.

Each scenario starts a fresh worker (`python -m worker run`) on the embedded NATS and
PostgreSQL, feeds it through the input stream, waits for every output, and reads the kernel's
own accounting of the process (`/proc/<pid>/status`: VmHWM, the peak resident set; VmRSS, the
resident set now).

(a) many rooms: MEM_ROOMS rooms of MEM_PER_ROOM events each, interleaved.
(b) a big room: MEM_BIG_ROOM state events as outliers, a join carrying that state, then
    MEM_MORE events in the room (messages, with a membership change now and then). The
    resident set is read after the first MEM_MORE_FIRST of them and after all of them: the
    caches are bounded, so it should stay flat between the two.
(c) both at once, into one worker.

Every line that gives a peak says `peak RSS <n> MB`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import (  # noqa: E402
    SYNC,
    Message,
    WorkerProcess,
    _builder,
    _database,
    _message,
    _publish,
    _request,
    _room,
)
from worker.bus.subjects import Subjects  # noqa: E402
from worker.embedded import EmbeddedNats, EmbeddedPostgres  # noqa: E402
from worker.messages import decode_output  # noqa: E402

ROOMS = int(os.environ.get("MEM_ROOMS", "1000"))
PER_ROOM = int(os.environ.get("MEM_PER_ROOM", "50"))
BIG_ROOM = int(os.environ.get("MEM_BIG_ROOM", "30000"))
MORE_FIRST = int(os.environ.get("MEM_MORE_FIRST", "10000"))
MORE = int(os.environ.get("MEM_MORE", "50000"))
SCENARIOS = set(os.environ.get("MEM_SCENARIOS", "a,b,c").split(","))


def _status_kib(pid: int, field: str) -> int:
    """A `Vm*` line of /proc/<pid>/status, in KiB (0 where unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _mb(kib: int) -> float:
    return kib / 1024


def many_rooms() -> list[Message]:
    rooms = [_room(f"!mem{i}:test", PER_ROOM) for i in range(ROOMS)]
    return [rooms[r][i] for i in range(PER_ROOM) for r in range(ROOMS)]


def big_room() -> tuple[list[Message], Message, list[Message]]:
    """(outliers of the room's state, the join with that state, the events after it)."""
    b = _builder("10", "!membig:test")
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "public")
    members = [f"m{i}" for i in range(BIG_ROOM - 4)]
    for m in members:
        b.join(m)
    state = list(b.state.values())
    outliers = [_message(b, eid, kind="outlier") for eid in state]
    join = _message(b, b.join("@newcomer:here"), state_event_ids=tuple(state))
    more: list[Message] = []
    left: set[str] = set()
    for n in range(MORE):
        user = members[(n * 7919) % len(members)]
        # A membership change now and then, so the state keeps moving too; whoever left
        # comes back before they speak again.
        if user in left:
            left.discard(user)
            eid = b.join(user)
        elif n % 50 == 49:
            left.add(user)
            eid = b.leave(user)
        else:
            eid = b.message(user, f"message {n}")
        more.append(_message(b, eid))
    return outliers, join, more


async def _outputs(
    nats_url: str, subjects: Subjects, wanted: set[str], timeout: float = 30.0
) -> Any:
    """A reader task's coroutine: consume outputs until every wanted event has one."""
    nc = await nats.connect(nats_url, max_reconnect_attempts=1)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        subjects.output_wildcard, durable=f"mem{uuid.uuid4().hex[:6]}",
        stream=subjects.output_stream,
    )
    last = time.monotonic()
    try:
        while wanted:
            try:
                batch = await sub.fetch(512, timeout=2.0)
            except (TimeoutError, nats.errors.TimeoutError):
                if time.monotonic() - last > timeout:
                    print(f"   gave up waiting: {len(wanted)} events without output", flush=True)
                    return
                continue
            last = time.monotonic()
            for msg in batch:
                out = decode_output(msg.data)
                await msg.ack()
                if out.new_room_event is not None:
                    wanted.discard(msgspec.json.decode(out.new_room_event.event)["event_id"])
    finally:
        await nc.close()


async def _feed(nats_url: str, subjects: Subjects, messages: Sequence[Message]) -> None:
    """Publish `messages` and wait until each has its `new_room_event`."""
    if not messages:
        return
    nc = await nats.connect(nats_url, max_reconnect_attempts=1)
    try:
        reader = asyncio.create_task(
            _outputs(nats_url, subjects, {m.event_id for m in messages})
        )
        await asyncio.sleep(0.2)  # the reader's consumer exists before the first output
        await _publish(
            nc.jetstream(), lambda m: subjects.input(m.room_id), messages,
            subjects.input_stream, {},
        )
        await reader
    finally:
        await nc.close()


async def _join_big(nats_url: str, subjects: Subjects, outliers: list[Message],
                    join: Message) -> None:
    nc = await nats.connect(nats_url, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        await _publish(js, lambda m: subjects.input(m.room_id), outliers[:-1],
                       subjects.input_stream, {})
        await _request(nc, subjects, outliers[-1])
        reply = await _request(nc, subjects, join)
        if reply.outcome != "accepted":
            raise RuntimeError(f"the big room's join was {reply.outcome}: {reply.reason}")
    finally:
        await nc.close()


async def _with_worker(
    nats_server: EmbeddedNats, pg: EmbeddedPostgres, data: Path, body: Any
) -> tuple[int, Any]:
    """Run `body(worker, subjects)` against a fresh worker; (its peak RSS in KiB, body's result)."""
    prefix = f"mem{uuid.uuid4().hex[:6]}"
    worker = WorkerProcess(nats_server.url, await _database(pg), prefix, data)
    try:
        await worker.ready()
        result = await body(worker, Subjects(prefix))
        return _status_kib(worker.proc.pid, "VmHWM"), result
    finally:
        worker.stop()


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        data = Path(tmp)
        nats_server = EmbeddedNats(data / "nats", server_name="bench-memory", sync_always=SYNC)
        pg = EmbeddedPostgres(data / "pg", fsync=SYNC)
        nats_server.start()
        pg.start()
        url = nats_server.url
        try:
            print(f"many rooms: {ROOMS} x {PER_ROOM}; big room: {BIG_ROOM} members then "
                  f"{MORE} events (resident set read after {MORE_FIRST})", flush=True)
            rooms = many_rooms() if SCENARIOS & {"a", "c"} else []
            big = big_room() if SCENARIOS & {"b", "c"} else None

            if "a" in SCENARIOS:
                async def a(worker: WorkerProcess, subjects: Subjects) -> None:
                    await _feed(url, subjects, rooms)

                peak, _ = await _with_worker(nats_server, pg, data, a)
                print(f"(a) {len(rooms)} events in {ROOMS} rooms: peak RSS {_mb(peak):.0f} MB",
                      flush=True)

            if big is not None and "b" in SCENARIOS:
                outliers, join, more = big

                async def b(worker: WorkerProcess, subjects: Subjects) -> tuple[int, int, int]:
                    await _join_big(url, subjects, outliers, join)
                    joined = _status_kib(worker.proc.pid, "VmRSS")
                    await _feed(url, subjects, more[:MORE_FIRST])
                    first = _status_kib(worker.proc.pid, "VmRSS")
                    await _feed(url, subjects, more[MORE_FIRST:])
                    return joined, first, _status_kib(worker.proc.pid, "VmRSS")

                peak, (joined, first, last) = await _with_worker(nats_server, pg, data, b)
                print(
                    f"(b) big room joined: RSS {_mb(joined):.0f} MB; after {MORE_FIRST} more "
                    f"events {_mb(first):.0f} MB; after {MORE} {_mb(last):.0f} MB "
                    f"(change {(last - first) / max(first, 1) * 100:+.1f}%); "
                    f"peak RSS {_mb(peak):.0f} MB",
                    flush=True,
                )

            if big is not None and "c" in SCENARIOS:
                outliers, join, more = big

                async def c(worker: WorkerProcess, subjects: Subjects) -> None:
                    async def big_side() -> None:
                        await _join_big(url, subjects, outliers, join)
                        await _feed(url, subjects, more[:MORE_FIRST])

                    await asyncio.gather(big_side(), _feed(url, subjects, rooms))

                peak, _ = await _with_worker(nats_server, pg, data, c)
                print(f"(c) both at once ({len(rooms)} events in {ROOMS} rooms; the big room "
                      f"joined, then {MORE_FIRST} events): peak RSS {_mb(peak):.0f} MB",
                      flush=True)
        finally:
            pg.stop()
            nats_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
