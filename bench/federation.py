"""A remote join of a big room through the Perform API (`make bench`).

The worker is the real process (`python -m worker run`) on the embedded NATS and PostgreSQL;
a fake federation service in this process answers `make_join` and `send_join` at once, from
answers prepared before the clock starts: a room of BENCH_FED_ROOM members (default 30,000)
built with real event IDs and content hashes, every event signed by the resident server.
Measured: from the `join` perform request to the join's `new_room_event` on the output
stream (the perform's own answer comes just before it).

The send_join answer of a 30,000-member room is about 20 MB: over NATS's default 1 MiB
`max_payload`, within the embedded server's 64 MiB, as an operator's servers must allow for
the federation service's answers to big joins.

Goal (2 cores): <= 10 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats
from nacl.signing import SigningKey

from bench.pipeline import WorkerProcess, _database
from tests.fixtures.builder import RoomBuilder
from worker.bus.subjects import Subjects
from worker.core.auth import auth_types_for_event
from worker.core.events import Event
from worker.core.signing import ServerKey, hash_and_sign
from worker.embedded import EmbeddedNats, EmbeddedPostgres

MEMBERS = int(os.environ.get("BENCH_FED_ROOM", "30000"))
SERVER = "hs.bench"
JOINER = f"@newcomer:{SERVER}"
RESIDENT = ServerKey(server_name="test", version="bench", key=SigningKey(bytes([3]) * 32))


def _room() -> RoomBuilder:
    b = RoomBuilder("10", real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"@alice:test": 100})
    b.join_rules("alice", "public")
    for i in range(MEMBERS - 1):
        b.join(f"m{i}")
    return b


def _signed(b: RoomBuilder, event_id: str) -> dict[str, Any]:
    body = {k: v for k, v in b.events[event_id].items() if k not in ("signatures", "event_id")}
    return hash_and_sign(body, b.rules, RESIDENT)


def _answers(b: RoomBuilder) -> tuple[bytes, bytes]:
    """(make_join answer, send_join answer), encoded."""
    template: dict[str, Any] = {
        "type": "m.room.member", "room_id": b.room_id, "sender": JOINER, "state_key": JOINER,
        "content": {"membership": "join"}, "origin_server_ts": 2_000_000, "origin": "test",
        "depth": 1 + max(b.events[p]["depth"] for p in b.latest), "prev_events": list(b.latest),
    }
    probe = Event(template, "", b.rules)
    template["auth_events"] = [b.state[k] for k in auth_types_for_event(probe) if k in b.state]
    make_join = msgspec.json.encode({"room_version": b.version, "event": template})
    state = [_signed(b, e) for e in b.state.values()]
    send_join = msgspec.json.encode({"origin": "test", "state": state, "auth_chain": []})
    return make_join, send_join


async def _serve(nc: Any, prefix: str, make_join: bytes, send_join: bytes) -> None:
    async def on_make_join(msg: Any) -> None:
        await msg.respond(make_join)

    async def on_send_join(msg: Any) -> None:
        await msg.respond(send_join)

    await nc.subscribe(f"{prefix}.make_join", cb=on_make_join)
    await nc.subscribe(f"{prefix}.send_join", cb=on_send_join)


async def _join(nats_url: str, subjects: Subjects, room_id: str) -> tuple[float, float, str]:
    """(seconds to the perform's answer, seconds to the join's new_room_event, outcome)."""
    nc = await nats.connect(nats_url)
    seen: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def on_output(msg: Any) -> None:
        if (msg.headers or {}).get("Output-Type") == "new_room_event" and not seen.done():
            seen.set_result(time.perf_counter())

    await nc.subscribe(subjects.output(room_id), cb=on_output)
    body = json.dumps({"user_id": JOINER, "room_id_or_alias": room_id, "server_names": ["test"]})
    start = time.perf_counter()
    reply = await nc.request(f"{subjects.prefix}.perform.join", body.encode(), timeout=600)
    answered = time.perf_counter() - start
    outcome = (reply.headers or {}).get("Nats-Service-Error-Code") or "ok"
    try:
        output = await asyncio.wait_for(seen, 60) - start
    except TimeoutError:
        output, outcome = float("nan"), f"{outcome}, no new_room_event: {reply.data[:300]!r}"
    await nc.close()
    return answered, output, outcome


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        data = Path(tmp)
        nats_server = EmbeddedNats(data / "nats", server_name="bench-federation")
        pg = EmbeddedPostgres(data / "pg")
        nats_server.start()
        pg.start()
        try:
            built = time.perf_counter()
            b = _room()
            make_join, send_join = _answers(b)
            print(f"remote room: {MEMBERS} members, send_join answer {len(send_join) / 1e6:.1f} MB "
                  f"(prepared in {time.perf_counter() - built:.0f} s)", flush=True)
            prefix = f"bench{uuid.uuid4().hex[:6]}"
            fed_prefix = f"{prefix}.federation.request"
            os.environ.update({"SERVER_NAME": SERVER, "FEDERATION_PREFIX": fed_prefix})
            worker = WorkerProcess(nats_server.url, await _database(pg), prefix, data)
            service = await nats.connect(nats_server.url)
            try:
                await worker.ready()
                await _serve(service, fed_prefix, make_join, send_join)
                answered, output, outcome = await _join(nats_server.url, Subjects(prefix), b.room_id)
                stages = await worker.stage_seconds()
            finally:
                await service.close()
                worker.stop()
            print(
                f"remote join of {MEMBERS} members: perform answered in {answered:.2f} s, "
                f"new_room_event after {output:.2f} s ({outcome}); goal <= 10 s",
                flush=True,
            )
            spent = ", ".join(f"{k} {v:.2f}" for k, v in sorted(stages.items()) if v >= 0.005)
            print(f"pipeline stage seconds: {spent}", flush=True)
        finally:
            pg.stop()
            nats_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
