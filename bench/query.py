"""Query latency over NATS in a 10,000-member room (issue 7; `make bench`).

Builds the room in an embedded PostgreSQL through `PostgresStore.persist`: a creator, power
levels, join rules, 10,000 member joins stored as outliers, then one event whose state before
is the full 10,000-member state (as a federated join would store it), then a fork of two state
events. The query service runs on an embedded NATS; the bench measures request/reply round trips:

- `current_state` of a few tuples (what event building asks): goal p50 <= 20 ms;
- `current_state` of every member (`m.room.member`, `*`);
- `server_joined_to_room` (asked by federation on every inbound request);
- `state_after_events` of the two forked events (a state resolution over the whole room).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

MEMBERS = 10_000
ROOM = "!bench:bench.test"
CREATOR = "@creator:bench.test"
VERSION = "10"


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _build(store: Any) -> tuple[str, str]:
    from worker.core.canonical import encode_canonical
    from worker.core.events import Event, StateKey
    from worker.core.outcomes import Outcome
    from worker.core.versions import rules_for
    from worker.pipeline.ports import EventWrite

    rules = rules_for(VERSION)
    assert rules is not None
    ts = [1_700_000_000_000]
    state: dict[StateKey, str] = {}

    def pdu(type_: str, sender: str, content: dict[str, Any], state_key: str | None,
            prevs: list[str], auth: list[str], depth: int) -> dict[str, Any]:
        ts[0] += 1
        out: dict[str, Any] = {
            "room_id": ROOM, "type": type_, "sender": sender, "content": content,
            "prev_events": prevs, "auth_events": auth, "depth": depth,
            "origin_server_ts": ts[0], "hashes": {"sha256": "x"}, "signatures": {},
        }
        if state_key is not None:
            out["state_key"] = state_key
        return out

    async def write(event_id: str, p: dict[str, Any], *, kind: str = "new",
                    before: dict[StateKey, str] | None = None,
                    extremities: list[str] | None = None, current: bool = True) -> None:
        ev = Event(p, event_id, rules)
        outcome = Outcome.OUTLIER if kind == "outlier" else Outcome.ACCEPTED
        before_h = after_h = None
        if kind != "outlier":
            before_map = dict(state if before is None else before)
            before_h = await store.handle_from_map(ROOM, before_map)
            if ev.state_tuple is not None:
                before_map[ev.state_tuple] = event_id
            after_h = await store.handle_from_map(ROOM, before_map) if current else None
            if current:
                state.clear()
                state.update(before_map)
        await store.persist(EventWrite(
            room_id=ROOM, room_version=VERSION, event=ev, event_json=encode_canonical(p),
            kind=kind, outcome=outcome, state_before=before_h,
            extremities=extremities if kind != "outlier" else None,
            current_state=after_h,
        ))

    await write("$create", pdu("m.room.create", CREATOR, {"creator": CREATOR}, "", [], [], 1),
                extremities=["$create"])
    await write("$join", pdu("m.room.member", CREATOR, {"membership": "join"}, CREATOR,
                             ["$create"], ["$create"], 2), extremities=["$join"])
    base = ["$create", "$join"]
    await write("$pl", pdu("m.room.power_levels", CREATOR, {"users": {CREATOR: 100}}, "",
                           ["$join"], base, 3), extremities=["$pl"])
    base = ["$create", "$join", "$pl"]
    await write("$jr", pdu("m.room.join_rules", CREATOR, {"join_rule": "public"}, "",
                           ["$pl"], base, 4), extremities=["$jr"])
    members: dict[StateKey, str] = {}
    for n in range(MEMBERS):
        user = f"@u{n}:s{n % 50}.bench.test"
        eid = f"$m{n}"
        await write(eid, pdu("m.room.member", user, {"membership": "join", "displayname": f"u{n}"},
                             user, ["$jr"], ["$create", "$pl", "$jr"], 5), kind="outlier")
        members[("m.room.member", user)] = eid
    full = {**state, **members}
    await write("$big", pdu("m.room.message", CREATOR, {"body": "hi"}, None, ["$jr"], base, 6),
                before=full, extremities=["$big"])
    await write("$fa", pdu("m.room.topic", CREATOR, {"topic": "a"}, "", ["$big"], base, 7),
                extremities=["$fa"], current=False)
    await write("$fb", pdu("m.room.name", CREATOR, {"name": "b"}, "", ["$big"], base, 7),
                before=full, extremities=["$fa", "$fb"])
    return "$fa", "$fb"


async def _measure(nc: Any, subject: str, body: bytes, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        msg = await nc.request(subject, body, timeout=60)
        samples.append((time.perf_counter() - t0) * 1000)
        if msg.headers and "Nats-Service-Error-Code" in msg.headers:
            raise RuntimeError(f"{subject}: {msg.headers}")
    return samples


async def _run(tmp: Path) -> None:
    import asyncpg
    import msgspec
    import nats

    from worker.embedded import EmbeddedNats, EmbeddedPostgres
    from worker.query.service import start_query_service
    from worker.storage.migrations import apply_migrations
    from worker.storage.query_reads import PostgresQueryReads
    from worker.storage.store import PostgresStore

    pg = EmbeddedPostgres(tmp / "pg", fsync=False)
    ns = EmbeddedNats(tmp / "nats", server_name="bench-query", sync_always=False)
    pg.start()
    ns.start()
    try:
        pool = await asyncpg.create_pool(pg.dsn(), min_size=2, max_size=8)
        assert pool is not None
        await apply_migrations(pool)
        store = PostgresStore(pool)
        t0 = time.perf_counter()
        fa, fb = await _build(store)
        print(f"query bench: built a {MEMBERS}-member room in {time.perf_counter() - t0:.1f} s")
        nc = await nats.connect(ns.url)
        svc = await start_query_service(nc, PostgresQueryReads(pool, PostgresStore(pool)),
                                        prefix="bench")
        enc = msgspec.json.encode
        cases = [
            ("current_state (4 tuples)", "current_state", enc({
                "room_id": ROOM,
                "state_tuples": [["m.room.create", ""], ["m.room.power_levels", ""],
                                 ["m.room.join_rules", ""], ["m.room.member", "@u5000:s0.bench.test"]],
            }), 200),
            ("current_state (member, *)", "current_state", enc({
                "room_id": ROOM, "state_tuples": [["m.room.member", "*"]],
            }), 20),
            ("server_joined_to_room", "server_joined_to_room", enc({
                "room_id": ROOM, "server_name": "s7.bench.test",
            }), 50),
            ("state_after_events (fork)", "state_after_events", enc({
                "room_id": ROOM, "prev_event_ids": [fa, fb],
                "state_tuples": [["m.room.topic", ""], ["m.room.name", ""]],
            }), 10),
        ]
        # The room must be what the numbers claim: every member of s7 joined, per the store.
        check = await nc.request("bench.query.server_joined_to_room", enc({
            "room_id": ROOM, "server_name": "s7.bench.test"}), timeout=60)
        assert msgspec.json.decode(check.data)["is_joined"] is True, check.data
        print(f"{'query':<28} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
        for label, name, body, n in cases:
            await _measure(nc, f"bench.query.{name}", body, 2)  # warm caches
            s = await _measure(nc, f"bench.query.{name}", body, n)
            print(f"{label:<28} {n:>4} {_pct(s, 0.5):>9.2f} {_pct(s, 0.99):>9.2f} "
                  f"{statistics.fmean(s):>9.2f}")
        await svc.stop()
        await nc.drain()
        await pool.close()
    finally:
        ns.stop()
        pg.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-query-") as d:
        asyncio.run(_run(Path(d)))


if __name__ == "__main__":
    main()
