"""A linear room through the pipeline: outcomes, stored state, outputs and their deltas."""

from __future__ import annotations

import msgspec

from tests.pipeline.conftest import Harness, builder, started
from worker.core.outcomes import Outcome
from worker.errors import RetryableError


def _event_id(raw: msgspec.Raw) -> str:
    value = msgspec.json.decode(raw)["event_id"]
    assert isinstance(value, str)
    return value


async def test_linear_room_accepts_and_announces_each_event(harness: Harness) -> None:
    b = started("10")
    msg = b.message("bob")
    results = await harness.send_all(b)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 6
    assert not any(r.duplicate for r in results)
    assert harness.state(b.room_id) == b.state
    assert harness.store.latest[b.room_id] == [msg]
    outs = harness.outputs("new_room_event")
    assert [_event_id(o.new_room_event.event) for o in outs if o.new_room_event] == list(b.events)
    last = outs[-1].new_room_event
    assert last is not None
    assert last.latest_event_ids == (msg,)
    assert last.adds_state_event_ids == () and last.removes_state_event_ids == ()
    assert last.history_visibility == "shared"


async def test_state_deltas_of_a_replaced_entry(harness: Harness) -> None:
    b = started("10")
    first = b.topic("alice", "one")
    second = b.topic("alice", "two")
    await harness.send_all(b)
    out = harness.outputs("new_room_event")[-1].new_room_event
    assert out is not None
    assert out.adds_state_event_ids == (second,)
    assert out.removes_state_event_ids == (first,)
    # The state before the event had the old topic, not the new one.
    assert out.state_before_adds_event_ids == (first,)
    assert out.state_before_removes_event_ids == (second,)


async def test_create_event_starts_the_room_and_reports_its_version(harness: Harness) -> None:
    b = builder("12")
    create = b.create("alice")
    result = await harness.send(b, create)
    assert result.outcome is Outcome.ACCEPTED
    assert harness.store.rooms[b.room_id] == "12"
    assert harness.store.latest[b.room_id] == [create]


async def test_duplicate_gets_original_outcome_and_no_new_output(harness: Harness) -> None:
    b = started("10")
    await harness.send_all(b)
    before = len(harness.relay.published)
    persists = harness.store.persists
    again = await harness.send(b, list(b.events)[-1])
    assert again.duplicate and again.outcome is Outcome.ACCEPTED
    assert len(harness.relay.published) == before
    assert harness.store.persists == persists


async def test_history_visibility_is_the_one_before_the_event(harness: Harness) -> None:
    b = started("10")
    b.state_event("m.room.history_visibility", "", {"history_visibility": "joined"}, "alice")
    b.message("bob")
    await harness.send_all(b)
    outs = harness.outputs("new_room_event")
    assert outs[-2].new_room_event is not None
    assert outs[-2].new_room_event.history_visibility == "shared"
    assert outs[-1].new_room_event is not None
    assert outs[-1].new_room_event.history_visibility == "joined"


async def test_transaction_and_send_as_server_are_echoed(harness: Harness) -> None:
    from worker.messages import TransactionId

    b = started("10")
    msg = b.message("bob")
    for eid in list(b.events)[:-1]:
        await harness.send(b, eid)
    tid = TransactionId(session_id=7, id="txn1")
    await harness.send(b, msg, send_as_server="test", transaction_id=tid)
    out = harness.outputs("new_room_event")[-1].new_room_event
    assert out is not None
    assert out.transaction_id == tid and out.send_as_server == "test"


async def test_crash_before_commit_changes_nothing_and_retry_succeeds(harness: Harness) -> None:
    b = started("10")
    msg = b.message("bob")
    for eid in list(b.events)[:-1]:
        await harness.send(b, eid)
    harness.store.fail_next_persist = RetryableError("database went away")
    try:
        await harness.send(b, msg)
        raise AssertionError("the failure must propagate to the bus")
    except RetryableError:
        pass
    assert msg not in harness.store.stored
    result = await harness.send(b, msg)
    assert result.outcome is Outcome.ACCEPTED and not result.duplicate
    ids = [r.output_id for r in harness.relay.published]
    assert len(ids) == len(set(ids))
