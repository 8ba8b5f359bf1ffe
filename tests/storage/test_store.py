"""PostgresStore against real PostgreSQL: the RoomStore port, writes and reads."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from tests.storage.helpers import VERSION, key, make_event, member, write
from worker.core import stateblocks as sb
from worker.core.outcomes import Outcome
from worker.pipeline.ports import OutputRecord, RoomStore
from worker.storage import PgState, PostgresStore, fetch_unsent, mark_sent

ROOM = "!room:test"


async def _linear_room(store: PostgresStore) -> dict[str, str]:
    """create, join alice, power levels, join bob, message; returns name -> event ID."""
    ids: dict[str, str] = {}
    create, raw = make_event(
        ROOM, "$create", "m.room.create", "", content={"room_version": VERSION}
    )
    empty = await store.handle_from_map(ROOM, {})
    cur = store.apply(empty, {key(create): create.event_id})
    await store.persist(write(create, raw, before=empty, current=cur, extremities=["$create"]))
    ids["create"] = "$create"
    prev = "$create"
    for name, (ev, raw) in {
        "join_alice": member(ROOM, "$join_alice", "@alice:test", prev=[prev]),
        "pl": make_event(
            ROOM,
            "$pl",
            "m.room.power_levels",
            "",
            prev=["$join_alice"],
            content={"users": {"@alice:test": 100}},
        ),
        "join_bob": member(ROOM, "$join_bob", "@bob:test", prev=["$pl"]),
        "msg": make_event(ROOM, "$msg", "m.room.message", prev=["$join_bob"]),
    }.items():
        before = (await store.state_after([prev]))[prev]
        cur = store.apply(before, {key(ev): ev.event_id}) if ev.is_state else before
        await store.persist(write(ev, raw, before=before, current=cur, extremities=[ev.event_id]))
        ids[name] = ev.event_id
        prev = ev.event_id
    return ids


async def test_conforms_to_room_store(store: PostgresStore) -> None:
    port: RoomStore = store
    assert await port.room(ROOM) is None
    assert await port.current_state(ROOM) is None
    assert await port.extremities(ROOM) == []


async def test_linear_room_state(store: PostgresStore, pool: asyncpg.Pool) -> None:
    await _linear_room(store)
    info = await store.room(ROOM)
    assert info is not None and info.version == VERSION
    assert await store.extremities(ROOM) == ["$msg"]
    cur = await store.current_state(ROOM)
    assert cur is not None
    want = {
        ("m.room.create", ""): "$create",
        ("m.room.member", "@alice:test"): "$join_alice",
        ("m.room.power_levels", ""): "$pl",
        ("m.room.member", "@bob:test"): "$join_bob",
    }
    assert await store.materialize(cur) == want
    before_msg = (await store.state_after(["$join_bob"]))["$join_bob"]
    assert await store.materialize(before_msg) == want
    got = await store.lookup(cur, [("m.room.member", "@bob:test"), ("m.room.name", "")])
    assert list(got) == [("m.room.member", "@bob:test")]
    assert got[("m.room.member", "@bob:test")].membership == "join"
    # The state after a message is the state before it.
    after_msg = (await store.state_after(["$msg"]))["$msg"]
    assert await store.materialize(after_msg) == want
    # A fresh store (cold caches) reads the same.
    cold = PostgresStore(pool)
    cur2 = await cold.current_state(ROOM)
    assert cur2 is not None and await cold.materialize(cur2) == want
    assert (await cold.lookup(cur2, [("m.room.power_levels", "")]))[
        ("m.room.power_levels", "")
    ].event_id == "$pl"
    stored = await cold.events(["$msg", "$nope"])
    assert list(stored) == ["$msg"] and stored["$msg"].has_state
    assert stored["$msg"].outcome is Outcome.ACCEPTED and stored["$msg"].kind == "new"
    rows = await pool.fetch("SELECT target_nid, membership FROM memberships ORDER BY target_nid")
    assert [r["membership"] for r in rows] == [3, 3]


async def test_diff_and_apply_are_pure(store: PostgresStore) -> None:
    await _linear_room(store)
    a = (await store.state_after(["$join_alice"]))["$join_alice"]
    b = (await store.state_after(["$join_bob"]))["$join_bob"]
    assert await store.diff(a, b) == (["$join_bob", "$pl"], [])
    assert await store.diff(b, a) == ([], ["$join_bob", "$pl"])
    c = store.apply(b, {("m.room.member", "@bob:test"): "$join_alice"})
    assert await store.diff(b, c) == (["$join_alice"], ["$join_bob"])
    assert await store.materialize(b) != await store.materialize(c)
    assert await store.diff(None, a) == (["$create", "$join_alice"], [])


async def test_duplicate_persist_is_harmless(store: PostgresStore, pool: asyncpg.Pool) -> None:
    await _linear_room(store)
    before_counts = await _counts(pool)
    ev, raw = member(ROOM, "$join_bob", "@bob:test", prev=["$pl"])
    before = (await store.state_after(["$pl"]))["$pl"]
    cur = store.apply(before, {key(ev): ev.event_id})
    await store.persist(write(ev, raw, before=before, current=cur, extremities=["$join_bob"]))
    assert await _counts(pool) == before_counts


async def _counts(pool: asyncpg.Pool) -> tuple[int, ...]:
    out = []
    for t in ("events", "state_snapshots", "state_blocks", "memberships", "outbox", "event_prevs"):
        out.append(await pool.fetchval(f"SELECT count(*) FROM {t}"))
    return tuple(out)


async def test_outbox_rows_commit_with_the_event(store: PostgresStore, pool: asyncpg.Pool) -> None:
    await _linear_room(store)
    before = (await store.state_after(["$msg"]))["$msg"]
    ev, raw = make_event(ROOM, "$msg2", "m.room.message", prev=["$msg"])
    outs = (OutputRecord("$msg2:new", "new_room_event", b"{}"),)
    w = write(ev, raw, before=before, current=before, extremities=["$msg2"], outputs=outs)
    await store.persist(w)
    await store.persist(w)
    rows = await fetch_unsent(pool, room_id=ROOM)
    assert [(r.output_id, r.output_type, r.payload) for r in rows] == [
        ("$msg2:new", "new_room_event", b"{}")
    ]
    assert await mark_sent(pool, ["$msg2:new"]) == 1
    assert await fetch_unsent(pool) == []


async def test_redaction_is_permanent(store: PostgresStore, pool: asyncpg.Pool) -> None:
    await _linear_room(store)
    before = (await store.state_after(["$msg"]))["$msg"]
    red, raw = make_event(
        ROOM, "$red", "m.room.redaction", prev=["$msg"], redacts="$msg", content={"redacts": "$msg"}
    )
    assert await store.pending_redactions(["$msg"]) == {}
    await store.persist(write(red, raw, before=before, current=before, extremities=["$red"]))
    assert await store.pending_redactions(["$msg"]) == {"$msg": ["$red"]}
    await store.persist(
        write(
            red,
            raw,
            before=before,
            current=before,
            extremities=["$red"],
            redactions=(("$red", "$msg"),),
        )
    )
    assert await store.pending_redactions(["$msg"]) == {}
    stored = (await store.events(["$msg"]))["$msg"]
    assert stored.redacted and stored.event.content == {}
    # Re-input of the target does not restore its JSON.
    msg, msg_raw = make_event(
        ROOM, "$msg", "m.room.message", prev=["$join_bob"], content={"body": "secret"}
    )
    b2 = (await store.state_after(["$join_bob"]))["$join_bob"]
    await store.persist(write(msg, msg_raw, before=b2, current=None, extremities=None))
    raw_json = await pool.fetchval(
        "SELECT json FROM event_json j JOIN events e USING (event_nid) WHERE event_id = '$msg'"
    )
    assert "secret" not in msgspec.json.decode(raw_json).get("content", {}).values()
    assert (await PostgresStore(pool).events(["$msg"]))["$msg"].redacted


async def test_state_from_ids_and_removals(store: PostgresStore) -> None:
    await _linear_room(store)
    h = await store.state_from_ids(ROOM, ["$create", "$join_alice"])
    assert isinstance(h, PgState)
    assert await store.materialize(h) == {
        ("m.room.create", ""): "$create",
        ("m.room.member", "@alice:test"): "$join_alice",
    }
    # Persisting a state with fewer entries than its base (a reset) stores removals.
    ev, raw = make_event(ROOM, "$topic", "m.room.topic", "", prev=["$msg"])
    await store.persist(
        write(
            ev, raw, before=h, current=store.apply(h, {key(ev): "$topic"}), extremities=["$topic"]
        )
    )
    after = (await store.state_after(["$topic"]))["$topic"]
    assert await PostgresStore(store.pool).materialize(after) == {
        ("m.room.create", ""): "$create",
        ("m.room.member", "@alice:test"): "$join_alice",
        ("m.room.topic", ""): "$topic",
    }


async def test_compaction_through_postgres(
    store: PostgresStore, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shrunk thresholds: layers merge, roots are rebuilt and split into buckets, every state
    reads back from a cold store, and no snapshot passes MAX_BLOCKS blocks."""
    monkeypatch.setattr(sb, "FANOUT", 3)
    monkeypatch.setattr(sb, "MIN_REBUILD_ENTRIES", 8)
    monkeypatch.setattr(sb, "TARGET_BLOCK_ENTRIES", 4)
    monkeypatch.setattr(sb, "MAX_ROOT_BLOCKS", 4)
    monkeypatch.setattr(sb, "MAX_BLOCKS", 12)
    room = "!compact:test"
    create, raw = make_event(room, "$cc", "m.room.create", "", content={"room_version": VERSION})
    empty = await store.handle_from_map(room, {})
    cur = store.apply(empty, {key(create): "$cc"})
    await store.persist(write(create, raw, before=empty, current=cur, extremities=["$cc"]))
    want: dict[str, dict[tuple[str, str], str]] = {"$cc": {key(create): "$cc"}}
    prev = "$cc"
    for i in range(120):
        ev, raw = member(room, f"$cm{i}", f"@u{(i * 7) % 37}:test", prev=[prev])
        before = (await store.state_after([prev]))[prev]
        after = store.apply(before, {key(ev): ev.event_id})
        await store.persist(write(ev, raw, before=before, current=after, extremities=[ev.event_id]))
        want[ev.event_id] = {**want[prev], key(ev): ev.event_id}
        prev = ev.event_id
    cold = PostgresStore(pool)
    handles = await cold.state_after(list(want))
    async with pool.acquire() as conn:
        for eid, h in handles.items():
            assert await cold.materialize(h) == want[eid]
            assert isinstance(h, PgState)
            assert sb.chain_blocks(await cold.states.chain(conn, h.snapshot_nid)) <= sb.MAX_BLOCKS
    row = await pool.fetchrow(
        """SELECT count(*) FILTER (WHERE rank = -1) AS roots,
                  count(*) FILTER (WHERE rank > 0) AS merged,
                  max(cardinality(block_nids)) AS widest
           FROM state_snapshots"""
    )
    assert row is not None
    assert row["roots"] > 2 and row["merged"] > 2 and row["widest"] == 4
    # Rebuilt roots share the buckets that did not change.
    shared = await pool.fetchval(
        """SELECT count(*) FROM (SELECT unnest(block_nids) b FROM state_snapshots
           WHERE rank = -1) u GROUP BY b ORDER BY 1 DESC LIMIT 1"""
    )
    assert shared > 1


async def test_invites_are_recorded_and_retired(store: PostgresStore, pool: asyncpg.Pool) -> None:
    await _linear_room(store)
    prev = "$msg"
    for eid, m in (("$inv_carol", "invite"), ("$join_carol", "join")):
        ev, raw = member(ROOM, eid, "@carol:test", m, prev=[prev])
        before = (await store.state_after([prev]))[prev]
        after = store.apply(before, {key(ev): eid})
        await store.persist(write(ev, raw, before=before, current=after, extremities=[eid]))
        rows = await pool.fetch(
            """SELECT e.event_id, i.retired FROM invites i
               JOIN events e ON e.event_nid = i.invite_event_nid"""
        )
        assert [(r["event_id"], r["retired"]) for r in rows] == [("$inv_carol", m == "join")]
        prev = eid
    code = await pool.fetchval(
        """SELECT m.membership FROM memberships m JOIN state_keys k ON k.state_key_nid = m.target_nid
           WHERE k.state_key = '@carol:test'"""
    )
    assert code == 3


async def test_merge_is_a_small_delta_over_a_parent(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    ids = await _linear_room(store)
    tips = []
    for branch in ("x", "y"):
        ev, raw = make_event(
            ROOM,
            f"$topic_{branch}",
            "m.room.topic",
            "",
            prev=[ids["msg"]],
            content={"topic": branch},
        )
        before = (await store.state_after([ids["msg"]]))[ids["msg"]]
        after = store.apply(before, {key(ev): ev.event_id})
        await store.persist(write(ev, raw, before=before, current=after, extremities=[ev.event_id]))
        tips.append(ev.event_id)
    handles = await store.state_after(tips)
    maps = [await store.materialize(handles[t]) for t in tips]
    resolved = {**maps[0], **maps[1]}
    merged = await store.handle_from_map(ROOM, resolved)
    assert isinstance(merged, PgState) and merged.snapshot_nid != 0 and len(merged.delta) <= 1
    ev, raw = make_event(ROOM, "$merge", "m.room.message", prev=sorted(tips))
    await store.persist(write(ev, raw, before=merged, current=merged, extremities=["$merge"]))
    snap = await pool.fetchrow(
        """SELECT s.rank, s.parent_nid FROM events e
           JOIN state_snapshots s ON s.snapshot_nid = e.before_snapshot_nid
           WHERE e.event_id = '$merge'"""
    )
    assert snap is not None and snap["rank"] >= 0 and snap["parent_nid"] != 0
    assert (
        await PostgresStore(pool).materialize((await store.state_after(["$merge"]))["$merge"])
        == resolved
    )


async def test_names_asked_for_meanwhile_are_created_in_one_transaction(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """Rooms handled side by side ask `ensure_names` for the same new names at once: the
    first request runs alone, the rest share one more transaction, and every name asked for
    gets its NID (cached, and the same as stored)."""
    asks = [
        [("m.room.member", f"@u{i % 3}:test"), ("m.room.history_visibility", "")] for i in range(40)
    ]
    await asyncio.gather(*(store.ensure_names(a) for a in asks))
    names = store._names
    assert names.calls <= 2 and names.requests == 40
    known, miss_t, miss_k = store.nids.known(
        {"m.room.member", "m.room.history_visibility"}, {f"@u{i}:test" for i in range(3)}
    )
    assert not miss_t and not miss_k
    rows = await pool.fetch(
        "SELECT state_key, state_key_nid FROM state_keys WHERE state_key LIKE '@u_:test'"
    )
    assert {r[0]: r[1] for r in rows} == known.keys


async def test_a_read_the_caches_answer_takes_no_connection(
    store: PostgresStore, pool: asyncpg.Pool
) -> None:
    """`diff`, `lookup` and `materialize` read lazily: answered from the caches, they do not
    wait for a pooled connection (here all of them are taken); a read that needs a query
    takes one, and gives it back."""
    ids = await _linear_room(store)
    current = await store.current_state(ROOM)
    assert current is not None
    before = await store.state_after([ids["pl"]])
    # Warm the caches (what the pipeline's reads leave there).
    await store.diff(before[ids["pl"]], current)
    await store.lookup(current, [("m.room.member", "@bob:test")])
    await store.materialize(current)
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        async with asyncio.timeout(5):
            added, removed = await store.diff(before[ids["pl"]], current)
            found = await store.lookup(current, [("m.room.member", "@bob:test")])
            state = await store.materialize(current)
    finally:
        for conn in held:
            await pool.release(conn)
    assert added == [ids["join_bob"]] and removed == []
    assert found[("m.room.member", "@bob:test")].event_id == ids["join_bob"]
    assert state[("m.room.member", "@bob:test")] == ids["join_bob"]
    store.forget_purged(ROOM)
    store.caches.layers.clear()
    assert (await store.materialize(current)) == state
    assert pool.get_idle_size() == pool.get_size()
