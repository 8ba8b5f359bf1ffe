"""Query latency over NATS: a 10,000-member room, then a store of many rooms (`make bench`).

Builds the room in an embedded PostgreSQL through `PostgresStore.persist`: a creator, power
levels, join rules, 10,000 member joins stored as outliers, then one event whose state before
is the full 10,000-member state (as a federated join would store it), then a fork of two state
events. The query service runs on an embedded NATS; the bench measures request/reply round trips:

- `current_state` of a few tuples (what event building asks): goal p50 <= 20 ms;
- `current_state` of every member (`m.room.member`, `*`);
- `server_joined_to_room` (asked by federation on every inbound request);
- `state_after_events` of the two forked events (a state resolution over the whole room).

Then the homeserver queries (worker.query.homeserver) on a store of 5,000 rooms (at least
1,000 are asked for, and a user in 5,000 rooms needs 5,000) and 50,000 users, where one user
is joined to every room and one room has 30,000 members (see `_fill_many`): `rooms_for_user` of that user, `joined_user_count` of that room,
`server_banned_from_room` and `bulk_state_content` of 100 rooms; goal p50 <= 5 ms, p99 <= 50 ms.
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


# --- the homeserver queries on a store of many rooms ---------------------------------------

ROOMS = 5_000
USERS = 50_000
BIG_MEMBERS = 30_000
SMALL_MEMBERS = 9
HEAVY = "@heavy:bench.test"


def _big_room() -> str:
    return "!r0:bench.test"


async def _fill_many(pool: Any, store: Any) -> None:
    """5,000 rooms and 50,000 users, fast: the state events of every room are inserted as
    outliers by direct SQL (COPY), then one `new` event per room goes through the store's own
    write path (`PostgresStore.persist`) with the room's whole state as its state before and
    after, so the snapshots, the current state and the `memberships` rows are written exactly
    as the pipeline writes them. Room 0 has the heavy user and 30,000 others; every other room
    has the heavy user and 9 of the remaining 20,000 users (round robin); every room has a
    name, a topic and a server ACL."""
    from worker.core.canonical import encode_canonical
    from worker.core.events import Event, StateKey
    from worker.core.outcomes import Outcome
    from worker.core.versions import rules_for
    from worker.pipeline.ports import EventWrite

    rules = rules_for(VERSION)
    assert rules is not None
    users = [f"@u{n}:s{n % 50}.bench.test" for n in range(USERS)]
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO state_keys (state_key) SELECT unnest($1::text[])", [HEAVY, *users]
        )
        room_ids = [f"!r{r}:bench.test" for r in range(ROOMS)]
        rows = await conn.fetch(
            "INSERT INTO rooms (room_id, room_version) SELECT unnest($1::text[]), $2 "
            "RETURNING room_nid, room_id", room_ids, VERSION,
        )
        room_nid = {r["room_id"]: r["room_nid"] for r in rows}
        key_nid = {r["state_key"]: r["state_key_nid"] for r in await conn.fetch(
            "SELECT state_key, state_key_nid FROM state_keys")}
        states: dict[str, dict[StateKey, str]] = {}
        ev_rows: list[tuple[Any, ...]] = []
        jsons: list[tuple[str, bytes]] = []
        small = iter(range(BIG_MEMBERS, USERS))

        def add(room: str, type_nid: int, etype: str, sender: str, key: str,
                content: dict[str, Any], membership: int | None) -> None:
            eid = f"${len(ev_rows)}"
            pdu = {"room_id": room, "type": etype, "sender": sender, "state_key": key,
                   "content": content, "prev_events": [], "auth_events": [], "depth": 1,
                   "origin_server_ts": 1_700_000_000_000, "hashes": {"sha256": "x"},
                   "signatures": {}}
            ev_rows.append((eid, room_nid[room], type_nid, key_nid.get(key, 1), 1, 2, 4,
                            membership))
            jsons.append((eid, encode_canonical(pdu)))
            states.setdefault(room, {})[(etype, key)] = eid

        for r, room in enumerate(room_ids):
            add(room, 1, "m.room.create", HEAVY, "", {"creator": HEAVY}, None)
            add(room, 8, "m.room.name", HEAVY, "", {"name": f"room {r}"}, None)
            add(room, 9, "m.room.topic", HEAVY, "", {"topic": f"topic {r}"}, None)
            add(room, 13, "m.room.server_acl", HEAVY, "",
                {"allow": ["*"], "deny": ["evil.bench.test", "*.evil.bench.test"],
                 "allow_ip_literals": False}, None)
            if r == 0:
                members = users[:BIG_MEMBERS]
            else:
                members = []
                for _ in range(SMALL_MEMBERS):
                    n = next(small, None)
                    if n is None:
                        small = iter(range(BIG_MEMBERS, USERS))
                        n = next(small)
                    members.append(users[n])
            for user in [HEAVY, *members]:
                add(room, 5, "m.room.member", user, user, {"membership": "join"}, 3)
        await conn.copy_records_to_table(
            "events", records=ev_rows,
            columns=["event_id", "room_nid", "type_nid", "state_key_nid", "depth", "kind",
                     "outcome", "membership"],
        )
        await conn.execute(
            "INSERT INTO event_json (event_nid, json) "
            "SELECT e.event_nid, j.json FROM unnest($1::text[], $2::bytea[]) AS j(id, json) "
            "JOIN events e ON e.event_id = j.id",
            [i for i, _ in jsons], [b for _, b in jsons],
        )
    for r, room in enumerate(room_ids):
        state = states[room]
        handle = await store.handle_from_map(room, state)
        eid = f"$msg{r}"
        pdu = {"room_id": room, "type": "m.room.message", "sender": HEAVY,
               "content": {"body": "hi"}, "prev_events": [], "auth_events": [], "depth": 2,
               "origin_server_ts": 1_700_000_000_001, "hashes": {"sha256": "x"},
               "signatures": {}}
        await store.persist(EventWrite(
            room_id=room, room_version=VERSION, event=Event(pdu, eid, rules),
            event_json=encode_canonical(pdu), kind="new", outcome=Outcome.ACCEPTED,
            state_before=handle, extremities=[eid], current_state=handle,
        ))
    async with pool.acquire() as conn:
        # As autovacuum would soon after such a fill: statistics, and the visibility map
        # that lets a count be answered from the index alone.
        await conn.execute("VACUUM ANALYZE")


async def _run_many(tmp: Path) -> None:
    import asyncpg
    import msgspec
    import nats

    from worker.embedded import EmbeddedNats, EmbeddedPostgres
    from worker.query.service import start_query_service
    from worker.storage.homeserver_reads import PostgresHomeserverReads
    from worker.storage.migrations import apply_migrations
    from worker.storage.query_reads import PostgresQueryReads
    from worker.storage.store import PostgresStore

    pg = EmbeddedPostgres(tmp / "pg", fsync=False)
    ns = EmbeddedNats(tmp / "nats", server_name="bench-query-many", sync_always=False)
    pg.start()
    ns.start()
    try:
        pool = await asyncpg.create_pool(pg.dsn(), min_size=2, max_size=8)
        assert pool is not None
        await apply_migrations(pool)
        t0 = time.perf_counter()
        await _fill_many(pool, PostgresStore(pool))
        print(f"homeserver queries: {ROOMS} rooms, {USERS} users, {BIG_MEMBERS}-member room, "
              f"filled in {time.perf_counter() - t0:.1f} s")
        nc = await nats.connect(ns.url)
        svc = await start_query_service(
            nc, PostgresQueryReads(pool, PostgresStore(pool)), prefix="bench",
            server_name="s0.bench.test", homeserver=PostgresHomeserverReads(pool),
        )
        enc = msgspec.json.encode
        hundred = [f"!r{r}:bench.test" for r in range(0, ROOMS, ROOMS // 100)]
        cases = [
            ("rooms_for_user (5,000)", "rooms_for_user", enc({"user_id": HEAVY}), 200),
            ("joined_user_count (30,000)", "joined_user_count",
             enc({"room_id": _big_room()}), 200),
            ("server_banned_from_room", "server_banned_from_room",
             enc({"room_id": _big_room(), "server_name": "a.evil.bench.test:8448"}), 200),
            ("bulk_state_content (100)", "bulk_state_content", enc({
                "room_ids": hundred,
                "state_tuples": [["m.room.name", ""], ["m.room.topic", ""],
                                 ["m.room.member", HEAVY]],
            }), 200),
        ]
        checks = {
            "rooms_for_user": lambda d: len(d["room_ids"]) == ROOMS,
            "joined_user_count": lambda d: d["count"] == BIG_MEMBERS + 1,
            "server_banned_from_room": lambda d: d["banned"] is True,
            "bulk_state_content": lambda d: len(d["rooms"]) == 100
            and all(len(v) == 3 for v in d["rooms"].values()),
        }
        print(f"{'query':<28} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
        for label, name, body, n in cases:
            reply = await nc.request(f"bench.query.{name}", body, timeout=60)
            assert checks[name](msgspec.json.decode(reply.data)), (name, reply.data[:200])
            await _measure(nc, f"bench.query.{name}", body, 5)  # warm caches
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
    with tempfile.TemporaryDirectory(prefix="bench-query-many-") as d:
        asyncio.run(_run_many(Path(d)))


if __name__ == "__main__":
    main()
