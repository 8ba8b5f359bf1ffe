"""Concurrent writers: NID assignment under contention, many rooms, one room from two stores."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from tests.storage.helpers import VERSION, key, make_event, member, write
from worker.core.events import StateKey
from worker.storage import PostgresStore
from worker.storage.nids import NidCache, get_or_create_txn


async def test_nid_get_or_create_under_contention(pool: asyncpg.Pool) -> None:
    names = [f"@user{i}:test" for i in range(200)]
    types = [f"x.type.{i}" for i in range(40)]

    async def worker(seed: int) -> dict[str, int]:
        rnd = random.Random(seed)
        got: dict[str, int] = {}
        for _ in range(5):
            ks = rnd.sample(names, 60)
            ts = rnd.sample(types, 10)
            async with pool.acquire() as conn, conn.transaction():
                nids, _ = await get_or_create_txn(conn, NidCache(), ts, ks)
            got.update(nids.keys)
            got.update(nids.types)
        return got

    results = await asyncio.gather(*(worker(s) for s in range(8)))
    merged: dict[str, set[int]] = {}
    for r in results:
        for name, nid in r.items():
            merged.setdefault(name, set()).add(nid)
    assert all(len(v) == 1 for v in merged.values())
    rows = await pool.fetch("SELECT state_key, state_key_nid FROM state_keys")
    assert len({r["state_key"] for r in rows}) == len(rows)
    assert all(r["state_key_nid"] >= 65536 or r["state_key"] == "" for r in rows)
    nids = [next(iter(v)) for v in merged.values()]
    assert 0 not in nids


async def _grow_room(store: PostgresStore, room: str, n: int) -> dict[StateKey, str]:
    create, raw = make_event(
        room, f"$c{room}", "m.room.create", "", content={"room_version": VERSION}
    )
    empty = await store.handle_from_map(room, {})
    cur = store.apply(empty, {key(create): create.event_id})
    await store.persist(
        write(create, raw, before=empty, current=cur, extremities=[create.event_id])
    )
    want = {key(create): create.event_id}
    prev = create.event_id
    for i in range(n):
        ev, raw = member(room, f"$m{i}{room}", f"@u{i % 7}:test", prev=[prev])
        before = (await store.state_after([prev]))[prev]
        after = store.apply(before, {key(ev): ev.event_id})
        await store.persist(write(ev, raw, before=before, current=after, extremities=[ev.event_id]))
        want[key(ev)] = ev.event_id
        prev = ev.event_id
    return want


async def test_writers_to_different_rooms(store: PostgresStore, pool: asyncpg.Pool) -> None:
    rooms = [f"!r{i}:test" for i in range(5)]
    wants = await asyncio.gather(*(_grow_room(store, r, 25) for r in rooms))
    cold = PostgresStore(pool)
    for room, want in zip(rooms, wants, strict=True):
        cur = await cold.current_state(room)
        assert cur is not None and await cold.materialize(cur) == want


async def test_writers_to_the_same_room(pool: asyncpg.Pool) -> None:
    room = "!shared:test"
    a, b = PostgresStore(pool), PostgresStore(pool)
    base = await _grow_room(a, room, 5)
    parent = base[("m.room.member", "@u4:test")]

    async def branch(store: PostgresStore, i: int) -> None:
        ev, raw = member(room, f"$branch{i}", f"@v{i}:test", prev=[parent])
        before = (await store.state_after([parent]))[parent]
        after = store.apply(before, {key(ev): ev.event_id})
        await store.persist(write(ev, raw, before=before, current=after, extremities=[ev.event_id]))

    await asyncio.gather(*(branch(a if i % 2 else b, i) for i in range(12)))
    cold = PostgresStore(pool)
    for i in range(12):
        h = (await cold.state_after([f"$branch{i}"]))[f"$branch{i}"]
        assert await cold.materialize(h) == {
            **base,
            ("m.room.member", f"@v{i}:test"): f"$branch{i}",
        }
    cur = await cold.current_state(room)
    assert cur is not None
    state = await cold.materialize(cur)
    (last,) = await cold.extremities(room)
    assert state == {**base, ("m.room.member", f"@v{last[7:]}:test"): last}
    rows = await pool.fetch(
        """SELECT k.state_key, e.event_id FROM memberships m
           JOIN state_keys k ON k.state_key_nid = m.target_nid
           JOIN events e ON e.event_nid = m.event_nid
           JOIN rooms r ON r.room_nid = m.room_nid WHERE r.room_id = $1""",
        room,
    )
    assert {r["state_key"]: r["event_id"] for r in rows} == {
        k[1]: v for k, v in state.items() if k[0] == "m.room.member"
    }
