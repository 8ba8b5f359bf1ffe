"""Storage bench: a 100,000-event room written through `PostgresStore` (issue 5).

The room: ~30% state events (joins, leaves, display-name changes, power-level changes) ending
with 10,000 joined members, the rest messages; every few hundred events the DAG forks into two
short branches that a merge event joins again (its state given in full, as a resolution's
result, so the store must find the nearest parent itself). Every event goes through
`state_after(prev)` -> `apply` -> `persist`, as the pipeline does.

Reported: bytes of state blocks + snapshots with their indexes and TOAST
(`pg_total_relation_size`) per event and per state event, blocks per snapshot, and the time to
load the 10,000-member current state from a cold store. Beside it, on the same sequence of
states, the size Dendrite's layout (a full-state block plus single-event delta blocks,
recompacted at 64; a merge writes a full block) and Synapse's (state-group delta chains of up
to 100, then a full copy) would take, from a row-size model of their tables (uncompressed; see
`_Model`).

BENCH_STORAGE_EVENTS=5000 python -m bench storage   # a quick run
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from worker.core import stateblocks as sb
from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome
from worker.core.versions import rules_for
from worker.pipeline.ports import EventWrite
from worker.storage import PgState, PostgresStore, apply_migrations

VERSION = "10"
RULES = rules_for(VERSION)
ROOM = "!bench:example.org"
FORK_EVERY = 300
BRANCH_LEN = 3


@dataclass
class _Model:
    """Row-size model of the other layouts (PostgreSQL heap tuple = 24-byte header + data,
    8-byte aligned, + 4-byte line pointer; a btree entry = 8-byte header + key, aligned, + 4)."""

    dendrite_bytes: int = 0
    synapse_bytes: int = 0
    # per simulated snapshot: (dendrite block count, synapse chain length)
    snaps: dict[int, tuple[int, int]] = field(default_factory=dict)

    @staticmethod
    def _heap(data: int) -> int:
        return 24 + (data + 7) // 8 * 8 + 4

    @staticmethod
    def _btree(key: int) -> int:
        return 8 + (key + 7) // 8 * 8 + 4

    def _dendrite_block(self, nids: int) -> int:
        # state_block_nid, hash (33), event_nids BIGINT[]; PK + unique hash indexes.
        return self._heap(8 + 36 + 24 + 8 * nids) + self._btree(8) + self._btree(33)

    def _dendrite_snapshot(self, blocks: int) -> int:
        # state_snapshot_nid, hash, room_nid, state_block_nids BIGINT[]; PK + unique hash.
        return self._heap(8 + 36 + 8 + 24 + 8 * blocks) + self._btree(8) + self._btree(33)

    def _synapse_group(self) -> int:
        # state_groups (id, room_id, event_id) + PK + room index; state_group_edges + 2 indexes.
        return (
            self._heap(8 + 24 + 48)
            + self._btree(8)
            + self._btree(24)
            + self._heap(16)
            + self._btree(8) * 2
        )

    def _synapse_rows(self, entries: int) -> int:
        # state_groups_state (state_group, room_id, type, state_key, event_id) + its index.
        return entries * (self._heap(8 + 24 + 16 + 24 + 48) + self._btree(8 + 16 + 24))

    def new(self, sid: int, parent: int | None, delta: int, n: int) -> None:
        """A new state `sid`: `delta` entries over `parent` (None: a merge, `n` entries)."""
        if parent is None:
            self.dendrite_bytes += self._dendrite_block(n) + self._dendrite_snapshot(1)
            d_blocks = 1
        else:
            k = self.snaps[parent][0]
            if k + 1 > 64:
                self.dendrite_bytes += self._dendrite_block(n) + self._dendrite_snapshot(1)
                d_blocks = 1
            else:
                self.dendrite_bytes += self._dendrite_block(delta) + self._dendrite_snapshot(k + 1)
                d_blocks = k + 1
        chain = self.snaps[parent][1] if parent is not None else 0
        if parent is None or chain >= 100:
            # Synapse stores a merge as a delta against one prev group when the chain allows;
            # the caller passes parent=None only for the first state, so this is a full copy.
            self.synapse_bytes += self._synapse_group() + self._synapse_rows(n)
            s_chain = 0
        else:
            self.synapse_bytes += self._synapse_group() + self._synapse_rows(delta)
            s_chain = chain + 1
        self.snaps[sid] = (d_blocks, s_chain)

    def merge(self, sid: int, parent: int, diff: int, n: int) -> None:
        """A merge: Dendrite writes a full block; Synapse a delta against the first prev."""
        self.dendrite_bytes += self._dendrite_block(n) + self._dendrite_snapshot(1)
        chain = self.snaps[parent][1]
        if chain >= 100:
            self.synapse_bytes += self._synapse_group() + self._synapse_rows(n)
            s_chain = 0
        else:
            self.synapse_bytes += self._synapse_group() + self._synapse_rows(diff)
            s_chain = chain + 1
        self.snaps[sid] = (1, s_chain)


class _Gen:
    """Draws the next event of the room (a PDU) from a running picture of its members."""

    def __init__(self, rnd: random.Random, total: int) -> None:
        self.rnd = rnd
        self.total = total
        self.members: list[str] = []
        self.member_set: set[str] = set()
        self.next_user = 0
        self.count = 0
        self.target_members = max(10, total // 10)

    def _id(self) -> str:
        self.count += 1
        return f"${self.count:07d}"

    def pdu(self, prev: list[str], depth: int) -> tuple[str, dict[str, Any]]:
        rnd = self.rnd
        eid = self._id()
        base = self._base(prev, depth)
        if not self.members:
            return eid, self._join(base)
        if rnd.random() >= 0.30:
            return self._message(eid, base)
        # Joins outpace leaves so that ~10% of the events' count are members at the end.
        progress = self.count / self.total
        want = self.target_members * progress
        r = rnd.random()
        if (len(self.members) < want and r < 0.6) or r < 0.40:
            return eid, self._join(base)
        if r < 0.50 and len(self.members) > 1:
            user = self.members.pop(rnd.randrange(len(self.members)))
            self.member_set.discard(user)
            base.update(
                type="m.room.member", state_key=user, sender=user, content={"membership": "leave"}
            )
            return eid, base
        if r < 0.87:
            user = rnd.choice(self.members)
            base.update(
                type="m.room.member",
                state_key=user,
                sender=user,
                content={"membership": "join", "displayname": f"name {self.count}"},
            )
            return eid, base
        base.update(
            type="m.room.power_levels",
            state_key="",
            sender="@u0:example.org",
            content={"users": {"@u0:example.org": 100, rnd.choice(self.members): 50}},
        )
        return eid, base

    def message(self, prev: list[str], depth: int) -> tuple[str, dict[str, Any]]:
        eid, base = self._id(), self._base(prev, depth)
        return self._message(eid, base)

    def _message(self, eid: str, base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        base.update(
            type="m.room.message",
            sender=self.rnd.choice(self.members),
            content={"body": "hello", "msgtype": "m.text"},
        )
        return eid, base

    def _base(self, prev: list[str], depth: int) -> dict[str, Any]:
        return {
            "room_id": ROOM,
            "prev_events": prev,
            "auth_events": [],
            "depth": depth,
            "origin_server_ts": 1_700_000_000_000 + self.count,
            "hashes": {"sha256": "x"},
            "signatures": {},
        }

    def _join(self, base: dict[str, Any]) -> dict[str, Any]:
        user = f"@u{self.next_user}:example.org"
        self.next_user += 1
        self.members.append(user)
        self.member_set.add(user)
        base.update(
            type="m.room.member", state_key=user, sender=user, content={"membership": "join"}
        )
        return base


@dataclass
class _Result:
    events: int = 0
    state_events: int = 0
    write_seconds: float = 0.0
    model: _Model = field(default_factory=_Model)


async def _write_room(store: PostgresStore, total: int, seed: int) -> _Result:
    assert RULES is not None
    rnd = random.Random(seed)
    gen = _Gen(rnd, total)
    res = _Result()
    next_sid = 0

    async def put(
        eid: str, pdu: dict[str, Any], before: PgState, ref: dict[StateKey, str], sid: int
    ) -> int:
        """Persist one event; `ref` (the reference state) is updated in place; returns the
        reference state number after the event."""
        nonlocal next_sid
        assert RULES is not None
        event = Event(pdu, eid, RULES)
        after = before
        if event.state_tuple is not None:
            after = store.apply(before, {event.state_tuple: eid})
            ref[event.state_tuple] = eid
            next_sid += 1
            res.model.new(next_sid, sid, 1, len(ref))
            sid = next_sid
            res.state_events += 1
        await store.persist(
            EventWrite(
                room_id=ROOM,
                room_version=VERSION,
                event=event,
                event_json=msgspec.json.encode(pdu),
                kind="new",
                outcome=Outcome.ACCEPTED,
                state_before=before,
                extremities=[eid],
                current_state=after,
            )
        )
        res.events += 1
        return sid

    async def step(tip: str, depth: int, ref: dict[StateKey, str], sid: int) -> tuple[str, int]:
        eid, pdu = gen.pdu([tip], depth)
        before = (await store.state_after([tip]))[tip]
        return eid, await put(eid, pdu, _own(before), ref, sid)

    create_id = gen._id()
    create = {
        "room_id": ROOM,
        "type": "m.room.create",
        "state_key": "",
        "sender": "@u0:example.org",
        "content": {"room_version": VERSION},
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        "origin_server_ts": 1,
        "hashes": {"sha256": "x"},
        "signatures": {},
    }
    empty = await store.handle_from_map(ROOM, {})
    next_sid += 1
    res.model.new(next_sid, None, 0, 0)
    ref: dict[StateKey, str] = {}
    sid = await put(create_id, create, empty, ref, next_sid)
    tip, depth = create_id, 1
    start = time.perf_counter()
    while res.events < total:
        if res.events % FORK_EVERY == 0 and res.events + 2 * BRANCH_LEN + 1 <= total:
            branches = []
            for _ in range(2):
                t, d, bref, bsid = tip, depth, dict(ref), sid
                for _ in range(BRANCH_LEN):
                    d += 1
                    t, bsid = await step(t, d, bref, bsid)
                branches.append((t, bref, bsid))
            (a, ref_a, sid_a), (b, ref_b, _) = branches
            # As the pipeline does at a fork: materialize both sides, resolve, hand over the
            # result in full (here "b wins", standing in for state resolution).
            for h in (await store.state_after([a, b])).values():
                await store.materialize(h)
            ref = {**ref_a, **ref_b}
            merged = await store.handle_from_map(ROOM, ref)
            next_sid += 1
            diff = sum(1 for k, v in ref.items() if ref_a.get(k) != v)
            res.model.merge(next_sid, sid_a, diff, len(ref))
            depth += BRANCH_LEN + 1
            eid, pdu = gen.message(sorted([a, b]), depth)
            sid = await put(eid, pdu, merged, ref, next_sid)
            tip = eid
            continue
        depth += 1
        tip, sid = await step(tip, depth, ref, sid)
        if res.events % 10_000 == 0:
            rate = res.events / (time.perf_counter() - start)
            print(f"  ... {res.events} events written ({rate:.0f}/s)", file=sys.stderr)
    res.write_seconds = time.perf_counter() - start
    return res


def _own(h: object) -> PgState:
    assert isinstance(h, PgState)
    return h


async def _sizes(pool: asyncpg.Pool) -> dict[str, int]:
    out = {}
    for t in ("state_blocks", "state_snapshots", "events", "event_json"):
        out[t] = int(await pool.fetchval("SELECT pg_total_relation_size($1::regclass)", t))
    return out


async def _load_times(pool: asyncpg.Pool) -> tuple[float, float, float, int]:
    """Median ms to load the current state: as NIDs from a cold store, as string IDs from a
    cold store, as string IDs from a warm one (NIDs and event IDs cached); and its entries."""
    nid_ms, str_ms, warm_ms = [], [], []
    n = 0
    warm = PostgresStore(pool)
    cur = await warm.current_state(ROOM)
    assert cur is not None
    await warm.materialize(cur)
    for _ in range(7):
        cold = PostgresStore(pool)
        t0 = time.perf_counter()
        cur = await cold.current_state(ROOM)
        assert cur is not None
        async with pool.acquire() as conn:
            state = sb.materialize(await cold.states.chain(conn, cur.snapshot_nid))
        nid_ms.append((time.perf_counter() - t0) * 1000)
        n = len(state)
        cold = PostgresStore(pool)
        t0 = time.perf_counter()
        cur = await cold.current_state(ROOM)
        assert cur is not None
        await cold.materialize(cur)
        str_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        cur = await warm.current_state(ROOM)
        assert cur is not None
        await warm.materialize(PgState(cur.room_id, cur.snapshot_nid))
        warm_ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(nid_ms), statistics.median(str_ms), statistics.median(warm_ms), n


async def _blocks_per_snapshot(pool: asyncpg.Pool) -> tuple[float, int, int]:
    nids = [
        r[0]
        for r in await pool.fetch(
            "SELECT DISTINCT before_snapshot_nid FROM events WHERE before_snapshot_nid > 0"
        )
    ]
    rnd = random.Random(1)
    sample = rnd.sample(nids, min(len(nids), 1500))
    store = PostgresStore(pool)
    counts = []
    async with pool.acquire() as conn:
        for nid in sample:
            counts.append(sb.chain_blocks(await store.states.chain(conn, nid)))
    return statistics.mean(counts), max(counts), len(nids)


async def run(dsn: str, total: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    assert pool is not None
    try:
        await apply_migrations(pool)
        store = PostgresStore(pool)
        res = await _write_room(store, total, seed=5)
        await pool.execute("VACUUM ANALYZE")
        sizes = await _sizes(pool)
        nid_ms, str_ms, warm_ms, entries = await _load_times(pool)
        mean_blocks, max_blocks, snapshots = await _blocks_per_snapshot(pool)
        members = await pool.fetchval("SELECT count(*) FROM memberships WHERE membership = 3")
    finally:
        await pool.close()
    ours = sizes["state_blocks"] + sizes["state_snapshots"]
    ev, st = res.events, res.state_events
    print(
        f"storage bench: {ev} events, {st} state events ({100 * st / ev:.0f}%), "
        f"{members} joined members, {entries} current state entries, {snapshots} snapshots; "
        f"written in {res.write_seconds:.0f} s ({ev / res.write_seconds:.0f} events/s)"
    )
    print(f"{'layout':<34}{'bytes':>14}{'B/event':>10}{'B/state ev':>12}")
    rows = [
        ("roomserver (measured)", ours),
        ("Dendrite layout (model)", res.model.dendrite_bytes),
        ("Synapse layout (model)", res.model.synapse_bytes),
    ]
    for name, b in rows:
        print(f"{name:<34}{b:>14,}{b / ev:>10.0f}{b / st:>12.0f}")
    print(
        f"  blocks {sizes['state_blocks']:,} B + snapshots {sizes['state_snapshots']:,} B "
        f"(goal <= 100 B/event, <= 350 B/state event); events {sizes['events']:,} B, "
        f"event_json {sizes['event_json']:,} B (not in the goal)"
    )
    print(f"  blocks per snapshot: mean {mean_blocks:.1f}, max {max_blocks} (limit 64)")
    print(
        f"  load current state ({entries} entries): {nid_ms:.1f} ms as NIDs from a cold "
        f"store (goal <= 20 ms); as string IDs {str_ms:.1f} ms cold, {warm_ms:.1f} ms warm"
    )


async def main() -> None:
    total = int(os.environ.get("BENCH_STORAGE_EVENTS", "100000"))
    from worker.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as d:
        pg = EmbeddedPostgres(Path(d) / "pg", fsync=False)
        pg.start()
        try:
            admin = await asyncpg.connect(pg.dsn())
            try:
                await admin.execute('CREATE DATABASE "bench_storage"')
            finally:
                await admin.close()
            await run(pg.dsn("bench_storage"), total)
        finally:
            pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
