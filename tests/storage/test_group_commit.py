"""Group commit: writes of several rooms made at the same time share a transaction, store
exactly what one transaction per room would, and one room's failure stays its own."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from tests.storage.helpers import make_event, member, write
from worker.pipeline.ports import EventWrite, OutputRecord
from worker.storage import PostgresStore
from worker.storage import snapshots as snap_sql
from worker.storage.fence import RoomView, StaleRoomView
from worker.storage.handles import PgState
from worker.storage.run_write import StaleWrite

ROOMS = 12


def _creation(store: PostgresStore, room: str) -> tuple[list[EventWrite], PgState]:
    """The writes that create `room` with alice joined and post two messages."""
    create, raw = make_event(room, f"$c{room}", "m.room.create", "", content={"creator": "@alice:test"})
    empty = PgState(room, 0)
    s1 = store.apply(empty, {("m.room.create", ""): create.event_id})
    join, raw_join = member(room, f"$j{room}", "@alice:test", prev=[create.event_id], auth=[create.event_id])
    s2 = store.apply(s1, {("m.room.member", "@alice:test"): join.event_id})
    writes = [
        write(create, raw, before=empty, current=s1, extremities=[create.event_id]),
        write(join, raw_join, before=s1, current=s2, extremities=[join.event_id]),
    ]
    prev = join.event_id
    for i in range(2):
        msg, raw_msg = make_event(room, f"$m{i}{room}", "m.room.message", prev=[prev], auth=[create.event_id])
        writes.append(write(msg, raw_msg, before=s2, current=s2, extremities=[msg.event_id]))
        prev = msg.event_id
    return writes, s2


async def _write_one_by_one(store: PostgresStore, writes: list[EventWrite]) -> None:
    for w in writes:
        await store.persist(w)


async def _stored(pool: asyncpg.Pool, room: str) -> tuple[object, ...]:
    fresh = PostgresStore(pool)  # nothing cached: everything is read back
    current = await fresh.current_state(room)
    assert current is not None
    return (await fresh.extremities(room), await fresh.materialize(current))


async def test_rooms_written_at_once_share_transactions_and_store_the_same(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresStore(pool, concurrency=1)
    grouped: list[int] = []
    real = store.group_commit.group_run_txn

    async def spy(conn: asyncpg.Connection, commits: list) -> list:  # type: ignore[type-arg]
        grouped.append(len(commits))
        return await real(conn, commits)

    store.group_commit.group_run_txn = spy  # type: ignore[method-assign]
    rooms = [f"!g{i}:test" for i in range(ROOMS)]
    plans = {room: _creation(store, room) for room in rooms}
    await asyncio.gather(*(_write_one_by_one(store, plans[r][0]) for r in rooms))
    # One slot: while one transaction ran, the other rooms' writes queued and went together,
    # through the multi-room statements.
    assert store.group_commit.commits.requests == ROOMS * 4
    assert store.group_commit.commits.calls < ROOMS * 4
    assert grouped and max(grouped) > 1
    for room in rooms:
        extremities, state = await _stored(pool, room)
        assert extremities == [f"$m1{room}"]
        assert state == await store.materialize(plans[room][1])
    async with pool.acquire() as c:
        assert await c.fetchval("SELECT count(*) FROM events") == ROOMS * 4


async def test_one_rooms_failure_does_not_fail_the_others_of_its_group(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresStore(pool, concurrency=1)
    good = [f"!ok{i}:test" for i in range(4)]
    bad = "!bad:test"
    plans = {room: _creation(store, room) for room in [*good, bad]}
    # The bad room is created; then a run that repeats a stored event is refused (StaleWrite).
    await _write_one_by_one(store, plans[bad][0])
    writes, state = plans[bad]
    again = writes[-1]
    late, raw = make_event(bad, "$late", "m.room.message", prev=[again.event.event_id])
    rerun = [again, write(late, raw, before=state, current=state, extremities=["$late"])]

    blocker = asyncio.Event()
    real_txn = store.group_commit.group_txn

    async def slow_first(conn: asyncpg.Connection, commits: list) -> list:  # type: ignore[type-arg]
        await blocker.wait()
        return await real_txn(conn, commits)

    store.group_commit.group_txn = slow_first  # type: ignore[method-assign]
    # The first write holds the only slot; everything else queues behind it as one group.
    first = asyncio.create_task(store.persist(plans[good[0]][0][0]))
    await asyncio.sleep(0.05)
    others = [asyncio.create_task(_write_one_by_one(store, plans[r][0])) for r in good[1:]]
    failing = asyncio.create_task(store.persist_many(rerun))
    await asyncio.sleep(0.05)
    blocker.set()
    await first
    await _write_one_by_one(store, plans[good[0]][0][1:])
    await asyncio.gather(*others)
    with pytest.raises(StaleWrite):
        await failing
    for room in good:
        assert (await _stored(pool, room))[0] == [f"$m1{room}"]
    assert await store.events(["$late"]) == {}
    assert (await _stored(pool, bad))[0] == [f"$m1{bad}"]


class _Refusing(PostgresStore):
    """Fences every write; the rooms in `refuse` with a view no room has."""

    refuse: frozenset[str] = frozenset()

    async def _view_of(self, room_id: str, first: EventWrite) -> RoomView:
        if room_id in self.refuse:
            return RoomView(-1, ())
        return await super()._view_of(room_id, first)


async def test_each_rooms_writes_are_checked_against_their_own_fence(pool: asyncpg.Pool) -> None:
    store = _Refusing(pool, concurrency=1, fence_writes=True)
    rooms = [f"!ctx{i}:test" for i in range(5)]
    store.refuse = frozenset({rooms[2]})
    plans = {room: _creation(store, room) for room in rooms}
    results = await asyncio.gather(
        *(store.persist_many(plans[r][0][:1]) for r in rooms), return_exceptions=True
    )
    assert [isinstance(r, StaleRoomView) for r in results] == [False, False, True, False, False]
    assert sorted(await store.events([f"$c{r}" for r in rooms])) == sorted(
        f"$c{r}" for i, r in enumerate(rooms) if i != 2
    )
    assert store.stale_views == 1


def _busy_room(store: PostgresStore, room: str) -> list[list[EventWrite]]:
    """A room's writes in commits (as a batch would hand them over): creation; then bob is
    invited and joins, carol joins and leaves in one commit (a target changed twice), and
    messages with outputs."""
    writes, state = _creation(store, room)
    c = f"$c{room}"
    commits: list[list[EventWrite]] = [writes[:2], writes[2:]]
    prev = writes[-1].event.event_id
    steps: list[list[tuple[str, str, str]]] = [
        [("@bob:test", "invite", "inv"), ("@bob:test", "join", "bj")],
        [("@carol:test", "join", "cj"), ("@carol:test", "leave", "cl")],
        # The same changes one commit each: an invite retired, a member who then vanishes
        # from the state (below), by statements shared between the rooms of a group.
        [("@dave:test", "invite", "di")],
        [("@dave:test", "join", "dj")],
        [("@erin:test", "join", "ej"), ("@frank:test", "join", "fj")],
    ]
    for step in steps:
        commit = []
        for user, membership, name in step:
            eid = f"${name}{room}"
            ev, raw = member(room, eid, user, membership, prev=[prev], auth=[c])
            after = store.apply(state, {("m.room.member", user): eid})
            out = OutputRecord(f"out-{eid}", "new_room_event", eid.encode())
            commit.append(write(ev, raw, before=state, current=after, extremities=[eid], outputs=(out,)))
            state, prev = after, eid
        commits.append(commit)
    # A merge that drops erin from the state (her membership row goes), with a note.
    gone, raw = make_event(room, f"$gone{room}", "m.room.message", prev=[prev], auth=[c])
    without = store.apply(state, {("m.room.member", "@erin:test"): ""})
    dropped = write(gone, raw, before=state, current=without, extremities=[gone.event_id])
    commits.append([dataclasses.replace(dropped, notes={"state_resets": "1"})])
    state, prev = without, gone.event_id
    msg, raw = make_event(room, f"$last{room}", "m.room.message", prev=[prev], auth=[c])
    out = OutputRecord(f"out-$last{room}", "new_room_event", b"m")
    commits.append([write(msg, raw, before=state, current=state, extremities=[msg.event_id], outputs=(out,))])
    return commits


async def _fingerprint(pool: asyncpg.Pool, room: str) -> object:
    """Everything stored for a room, with the room's ID replaced by ROOM and NIDs by IDs."""
    fresh = PostgresStore(pool)
    current = await fresh.current_state(room)
    assert current is not None
    state = await fresh.materialize(current)
    async with pool.acquire() as c:
        nid = await c.fetchval("SELECT room_nid FROM rooms WHERE room_id = $1", room)
        events = [
            tuple(r)
            for r in await c.fetch(
                "SELECT e.event_id, e.kind, e.outcome, e.membership,"
                " (SELECT array_agg(a.event_id ORDER BY a.event_id) FROM events a"
                "  WHERE a.event_nid = ANY(e.auth_event_nids)),"
                " (SELECT array_agg(p.prev_event_id ORDER BY p.prev_event_id) FROM event_prevs p"
                "  WHERE p.event_nid = e.event_nid),"
                " e.before_snapshot_nid IS NOT NULL"
                " FROM events e WHERE e.room_nid = $1 ORDER BY e.event_id",
                nid,
            )
        ]
        members = [
            tuple(r)
            for r in await c.fetch(
                "SELECT k.state_key, m.membership, e.event_id FROM memberships m"
                " JOIN state_keys k ON k.state_key_nid = m.target_nid"
                " JOIN events e ON e.event_nid = m.event_nid WHERE m.room_nid = $1 ORDER BY 1",
                nid,
            )
        ]
        invites = [
            tuple(r)
            for r in await c.fetch(
                "SELECT e.event_id, i.retired FROM invites i JOIN events e"
                " ON e.event_nid = i.invite_event_nid WHERE i.room_nid = $1 ORDER BY 1",
                nid,
            )
        ]
        outbox = [
            tuple(r)
            for r in await c.fetch(
                "SELECT output_id, output_type, payload FROM outbox WHERE room_id = $1 ORDER BY seq",
                room,
            )
        ]
        logged = await c.fetchval("SELECT count(*) FROM write_log WHERE room_nid = $1", nid)
        notes = await c.fetchval("SELECT notes::text FROM rooms WHERE room_nid = $1", nid)
    befores = {}
    for eid in [e[0] for e in events]:
        after = (await fresh.state_after([eid])).get(eid)
        befores[eid] = sorted((await fresh.materialize(after)).items()) if after else None
    found = (
        await fresh.extremities(room), sorted(state.items()), events, members, invites,
        outbox, logged, notes, sorted(befores.items()),
    )
    return _renamed(found, room)


def _renamed(value: object, room: str) -> object:
    if isinstance(value, str):
        return value.replace(room, "ROOM")
    if isinstance(value, bytes):
        return value.replace(room.encode(), b"ROOM")
    if isinstance(value, (list, tuple)):
        return [_renamed(v, room) for v in value]
    return value


async def test_a_grouped_commit_stores_exactly_what_room_by_room_commits_store(
    pool: asyncpg.Pool,
) -> None:
    """Memberships (a target changed twice in one commit, an invite retired), outbox rows,
    write log, states after each event: the same whether rooms commit together or alone."""
    store = PostgresStore(pool, concurrency=1)
    alone = "!alone:test"
    for commit in _busy_room(store, alone):
        await store.persist_many(commit)
    grouped_rooms = [f"!grp{i}:test" for i in range(6)]
    plans = {room: _busy_room(store, room) for room in grouped_rooms}
    calls = store.group_commit.commits.calls

    async def room_commits(room: str) -> None:
        for commit in plans[room]:
            await store.persist_many(commit)

    await asyncio.gather(*(room_commits(r) for r in grouped_rooms))
    assert store.group_commit.commits.calls - calls < sum(len(p) for p in plans.values())
    # Shared for real: no group failed over to room-by-room commits (which store the same).
    assert store.groups_split == 0
    want = await _fingerprint(pool, alone)
    for room in grouped_rooms:
        assert await _fingerprint(pool, room) == want


async def test_a_group_whose_planned_layer_is_stored_already_is_redone_room_by_room(
    pool: asyncpg.Pool,
) -> None:
    """A group writes its new state layers together at its end, under NIDs reserved up
    front. A worker that forgot what it wrote (a restart) may plan a layer that is stored
    already; then the group is redone room by room, where layers deduplicate, and every
    stored reference names a stored snapshot."""
    rooms = [f"!again{i}:test" for i in range(3)]
    first = PostgresStore(pool)
    for room in rooms:
        writes, _ = _creation(first, room)
        await first.persist_many(writes[:2])  # create, then join: a layer over the create's
    restarted = PostgresStore(pool, concurrency=1)  # nothing cached

    async def again(room: str) -> list[EventWrite]:
        # The state after the join as a restarted worker reads it back: the create's
        # snapshot plus the join, exactly the layer stored for the join.
        joined = (await restarted.state_after([f"$j{room}"]))[f"$j{room}"]
        msg, raw = make_event(room, f"$late{room}", "m.room.message", prev=[f"$j{room}"],
                              auth=[f"$c{room}"])
        return [write(msg, raw, before=joined, current=joined, extremities=[msg.event_id])]

    writes = [await again(r) for r in rooms]
    # Submitted together: the first commit starts alone (one at a time), the two others
    # wait for it and go as one group.
    await asyncio.gather(*(restarted.persist_many(w) for w in writes))
    # The first room went alone; the other two were a group, which split.
    assert restarted.groups_split == 1
    fresh = PostgresStore(pool)
    for room in rooms:
        joined = (await fresh.state_after([f"$j{room}"]))[f"$j{room}"]
        late = (await fresh.state_after([f"$late{room}"]))[f"$late{room}"]
        assert await fresh.materialize(late) == await fresh.materialize(joined)
    async with pool.acquire() as c:
        dangling = await c.fetchval(
            "SELECT count(*) FROM events e WHERE coalesce(e.before_snapshot_nid, 0) <> 0"
            " AND NOT EXISTS (SELECT 1 FROM state_snapshots s"
            "                 WHERE s.snapshot_nid = e.before_snapshot_nid)"
        )
        assert dangling == 0
        # The layer planned again is the stored one: each room has its two snapshots only.
        counts = await c.fetch(
            "SELECT count(*) AS n FROM state_snapshots s JOIN rooms r USING (room_nid)"
            " WHERE r.room_id = ANY($1) GROUP BY r.room_id", rooms,
        )
        assert [r["n"] for r in counts] == [2, 2, 2]


async def test_new_rooms_of_a_group_have_their_first_snapshots_written_together(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The roots of new rooms (the state after each create event) are written for the whole
    group in two statements, and the rooms read back as room-by-room commits store them."""
    together: list[int] = []
    alone: list[int] = []
    real_together, real_alone = snap_sql.write_roots_txn, snap_sql._write_root_txn

    async def spy_together(conn: asyncpg.Connection, roots: list) -> list:  # type: ignore[type-arg]
        together.append(len(roots))
        return await real_together(conn, roots)

    async def spy_alone(conn: asyncpg.Connection, room_nid: int, state: dict) -> tuple:  # type: ignore[type-arg]
        alone.append(room_nid)
        return await real_alone(conn, room_nid, state)

    monkeypatch.setattr(snap_sql, "write_roots_txn", spy_together)
    monkeypatch.setattr(snap_sql, "_write_root_txn", spy_alone)
    single = PostgresStore(pool)
    await single.persist_many(_creation(single, "!single:test")[0])
    assert alone and not together  # a room alone writes its root as before
    alone.clear()
    store = PostgresStore(pool, concurrency=1)
    rooms = [f"!new{i}:test" for i in range(ROOMS)]
    plans = {room: _creation(store, room) for room in rooms}
    await asyncio.gather(*(store.persist_many(plans[r][0]) for r in rooms))
    assert store.groups_split == 0
    # The first commit went alone (one slot), the others queued behind it as groups.
    assert together and max(together) > 1
    assert sum(together) + len(alone) == ROOMS
    fresh = PostgresStore(pool)  # nothing cached: read back
    want = await _fingerprint(pool, "!single:test")
    for room in rooms:
        extremities, state = await _stored(pool, room)
        assert extremities == [f"$m1{room}"]
        assert state == await fresh.materialize(plans[room][1])
        assert await _fingerprint(pool, room) == want
        after_create = (await fresh.state_after([f"$c{room}"]))[f"$c{room}"]
        assert await fresh.materialize(after_create) == {("m.room.create", ""): f"$c{room}"}
    async with pool.acquire() as c:
        # One root per room, each over one block of its own room.
        roots = await c.fetch(
            "SELECT r.room_id, s.block_nids, b.room_nid = s.room_nid AS own FROM state_snapshots s"
            " JOIN rooms r USING (room_nid) JOIN state_blocks b ON b.block_nid = s.block_nids[1]"
            " WHERE s.rank = -1 AND r.room_id = ANY($1)",
            rooms,
        )
        assert sorted(r["room_id"] for r in roots) == sorted(rooms)
        assert all(len(r["block_nids"]) == 1 and r["own"] for r in roots)
