"""`PostgresStore.events_and_redactions`: the pipeline's two first reads in one round trip,
answering exactly what `events` and `pending_redactions` answer apart; and `state_after`
from memory for events the store just wrote."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.storage.helpers import VERSION, make_event, write
from tests.storage.test_store import ROOM, _linear_room
from worker.pipeline.ports import ReadAheadStore, RoomInfo, StoredEvent
from worker.storage import PostgresStore


def _view(events: dict[str, StoredEvent]) -> dict[str, tuple[Any, ...]]:
    """Events compare by identity: compare what was read instead."""
    return {
        eid: (s.event.event_id, s.event.pdu, s.outcome, s.reason_code, s.reason, s.kind,
              s.has_state, s.redacted)
        for eid, s in events.items()
    }


async def test_events_and_redactions_matches_the_two_reads(store: PostgresStore) -> None:
    assert isinstance(store, ReadAheadStore)
    await _linear_room(store)
    before = (await store.state_after(["$msg"]))["$msg"]
    # Two redactions of an event not stored yet, and one of a stored event.
    for rid, target in (("$red2", "$later"), ("$red1", "$later"), ("$red3", "$msg")):
        red, raw = make_event(
            ROOM, rid, "m.room.redaction", prev=["$msg"], redacts=target,
            content={"redacts": target},
        )
        await store.persist(write(red, raw, before=before, current=before, extremities=[rid]))

    cases = [
        (["$later", "$msg", "$create", "$nope"], ["$later"]),
        (["$msg", "$red1"], ["$msg", "$later", "$nope"]),
        ([], ["$later"]),
        (["$msg"], []),
    ]
    for event_ids, targets in cases:
        events, pending = await store.events_and_redactions(event_ids, targets)
        assert _view(events) == _view(await store.events(event_ids))
        assert pending == await store.pending_redactions(targets)
    _, pending = await store.events_and_redactions([], ["$later"])
    assert pending == {"$later": ["$red1", "$red2"]}


async def test_state_after_of_a_written_event_equals_the_stored_one(
    store: PostgresStore,
) -> None:
    await _linear_room(store)
    ids = ["$create", "$join_alice", "$pl", "$join_bob", "$msg"]
    remembered = await store.state_after(ids)
    fresh = PostgresStore(store.pool)  # a new process: nothing in memory
    stored = await fresh.state_after(ids)
    assert set(remembered) == set(stored) == set(ids)
    for eid in ids:
        assert await store.materialize(remembered[eid]) == await fresh.materialize(stored[eid])
    # Forgetting the room drops what was remembered; the answers stay the same.
    store.forget_room(ROOM)
    again = await store.state_after(ids)
    for eid in ids:
        assert await store.materialize(again[eid]) == await fresh.materialize(stored[eid])


async def test_held_events_come_without_their_json_unless_redacted_meanwhile(
    store: PostgresStore, monkeypatch: Any
) -> None:
    from worker.storage import event_rows as store_module
    from worker.storage import events as ev_sql

    await _linear_room(store)
    ids = ["$create", "$join_alice", "$pl", "$join_bob", "$msg"]
    # Looking the state up makes `store` hold the state events (not the message).
    state = (await store.state_after(["$msg"]))["$msg"]
    await store.lookup(state, list(await store.materialize(state)))
    decoded: list[str] = []
    decode = ev_sql.decode_event

    def counting(event_id: str, json: bytes, version: str) -> Any:
        decoded.append(event_id)
        return decode(event_id, json, version)

    monkeypatch.setattr(store_module.ev_sql, "decode_event", counting)
    held, _ = await store.events_and_redactions(ids, [])
    assert decoded == ["$msg"]
    decoded.clear()
    fresh = PostgresStore(store.pool)  # holds nothing: every row brings its JSON
    assert _view(held) == _view((await fresh.events_and_redactions(ids, []))[0])
    assert sorted(decoded) == sorted(ids)

    # Another worker redacts $join_bob, which `store` holds: its copy is stale, and the row
    # says so.
    before = (await fresh.state_after(["$msg"]))["$msg"]
    red, raw = make_event(
        ROOM, "$red", "m.room.redaction", prev=["$msg"], redacts="$join_bob",
        content={"redacts": "$join_bob"},
    )
    await fresh.persist(
        write(red, raw, before=before, current=before, extremities=["$red"],
              redactions=(("$red", "$join_bob"),))
    )
    decoded.clear()
    again, _ = await store.events_and_redactions(ids, [])
    assert sorted(decoded) == ["$join_bob", "$msg"]  # the redacted JSON, not the held copy
    assert again["$join_bob"].redacted
    assert _view(again) == _view(await PostgresStore(store.pool).events(ids))


async def test_room_rows_asked_for_at_once_are_read_together(store: PostgresStore) -> None:
    await _linear_room(store)
    reader = PostgresStore(store.pool, concurrency=1)  # one read at a time
    asked = [ROOM, "!missing:test", ROOM, "!other:test"]
    rooms, states, extremities = await asyncio.gather(
        asyncio.gather(*(reader.room(r) for r in asked)),
        asyncio.gather(*(reader.current_state(r) for r in asked)),
        asyncio.gather(*(reader.extremities(r) for r in asked)),
    )
    # The first ran alone; the eleven others waited for it and went in one read.
    assert (reader.reads.room_reads.calls, reader.reads.room_reads.requests) == (2, 12)
    known = RoomInfo(ROOM, VERSION)
    assert rooms == [known, None, known, None]
    assert [s is not None for s in states] == [True, False, True, False]
    assert extremities == [["$msg"], [], ["$msg"], []]
