"""Gap filling through a fake federation service on NATS: the pipeline over the
in-memory store, the real `NatsFederationClient`, and a responder serving a built room."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from tests.federation.conftest import Rig, enc
from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import started
from worker.core.hashes import compute_event_id, content_hash, unpadded_b64
from worker.core.outcomes import Outcome
from worker.errors import RetryableError
from worker.messages import OutputEvent
from worker.observability.metrics import GAPS


def gaps(path: str) -> float:
    value = GAPS.labels(path)._value.get()
    assert isinstance(value, float)
    return value


def ids_of(outputs: list[OutputEvent]) -> list[tuple[str, str]]:
    out = []
    for o in outputs:
        payload = o.new_room_event or o.old_room_event
        if payload is not None:
            out.append((o.type, msgspec.json.decode(payload.event)["event_id"]))
    return out


async def send_base(rig: Rig, b: Any, ids: list[str]) -> int:
    for eid in ids:
        assert (await rig.send(b, eid)).outcome is Outcome.ACCEPTED
    rig.fed.asked.clear()
    return len(rig.harness.outputs())


async def test_small_gap_closed_with_get_missing_events(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    gap = [b.message("bob", f"missed {i}") for i in range(3)]
    topic = b.topic("alice", "set while we were away")
    latest = b.message("alice")
    rig.fed.serve(b)
    seen = await send_base(rig, b, base)
    closed = gaps("closed")

    result = await rig.send(b, latest)

    assert result.outcome is Outcome.ACCEPTED
    assert rig.fed.asked == ["get_missing_events"]
    stored = rig.harness.store.stored
    assert all(stored[e].kind == "old" and stored[e].has_state for e in [*gap, topic])
    # The gap events are announced as history, oldest first, then the event itself.
    assert ids_of(rig.harness.outputs()[seen:]) == [
        *[("old_room_event", e) for e in [*gap, topic]],
        ("new_room_event", latest),
    ]
    assert latest in rig.harness.store.latest[b.room_id]
    assert rig.harness.state(b.room_id)[("m.room.topic", "")] == topic
    # The state before the event came from its prev events, the topic among them.
    assert rig.harness.store.before[latest][("m.room.topic", "")] == topic
    assert gaps("closed") == closed + 1


@pytest.mark.parametrize(("joins", "path"), [(2, "state_ids"), (24, "state")])
async def test_big_gap_takes_the_state_before_from_the_service(
    rig: Rig, joins: int, path: str
) -> None:
    b = started("10")
    base = list(b.events)
    tip = base[-1]
    for i in range(25):
        b.message("bob", f"missed {i}")
    topic = b.topic("alice", "set in the gap")
    joined = [b.join(f"user{i}") for i in range(joins)]
    state = dict(b.state)
    latest = b.message("alice")
    rig.fed.serve(b)
    rig.fed.remember_state(b, latest, state)
    seen = await send_base(rig, b, base)
    before = gaps(path)

    result = await rig.send(b, latest)

    assert result.outcome is Outcome.ACCEPTED, result
    assert rig.fed.asked[:2] == ["get_missing_events", "state_ids"]
    assert ("state" in rig.fed.asked) == (path == "state")
    assert gaps(path) == before + 1
    store = rig.harness.store
    # The state's events are stored as outliers; the messages of the gap are not stored.
    assert all(store.stored[e].kind == "outlier" for e in [topic, *joined])
    assert sum(1 for e in b.events if e not in store.stored) == 25
    assert store.before[latest] == state
    # Merged with the room's other extremity by resolution, not a rewrite.
    assert store.latest[b.room_id] == sorted([tip, latest])
    current = rig.harness.state(b.room_id)
    assert current == state
    new = [o.new_room_event for o in rig.harness.outputs()[seen:] if o.new_room_event]
    assert len(new) == 1 and not new[0].rewrites_state
    assert sorted(new[0].latest_event_ids) == sorted([tip, latest])
    assert sorted(new[0].adds_state_event_ids) == sorted([topic, *joined])


async def test_missing_auth_events_fetched_and_stored_as_outliers(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    join = b.join("carol")
    # Carol's message cites her join as an auth event, but not as a prev event.
    msg = b.message("carol", prev=[base[-1]])
    rig.fed.serve(b)
    seen = await send_base(rig, b, base)
    before = gaps("auth")

    result = await rig.send(b, msg)

    assert rig.fed.asked == ["event_auth"]
    assert gaps("auth") == before + 1
    stored = rig.harness.store.stored
    assert (stored[join].kind, stored[join].outcome) == ("outlier", Outcome.OUTLIER)
    # Allowed by its own auth events, but carol has not joined in the state before it.
    assert result.outcome is Outcome.REJECTED and result.reason_code != "missing_auth_events"
    assert rig.harness.outputs()[seen:] == []
    assert ("m.room.member", "@carol:test") not in rig.harness.state(b.room_id)


async def test_unreachable_service_retries_then_refuses(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    b.message("bob", "missed")
    latest = b.message("alice")
    seen = await send_base(rig, b, base)
    await rig.fed.stop()
    failed = gaps("failed")

    for delivery in (1, 2):
        with pytest.raises(RetryableError) as err:
            await rig.send(b, latest, delivery=delivery)
        assert err.value.code == "federation_unavailable"
    result = await rig.send(b, latest, delivery=3)

    assert (result.outcome, result.reason_code) == (Outcome.REJECTED, "missing_prev_events")
    assert "after 3 tries (federation_unavailable" in result.reason
    assert gaps("failed") == failed + 1
    assert latest not in rig.harness.store.stored
    # The room goes on with events whose prev events are known.
    other = b.message("bob", prev=[base[-1]])
    assert (await rig.send(b, other)).outcome is Outcome.ACCEPTED
    assert ids_of(rig.harness.outputs()[seen:]) == [("new_room_event", other)]


async def test_slow_service_keeps_the_message_alive(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    gap = b.message("bob", "missed")
    latest = b.message("alice")
    rig.fed.serve(b)
    await send_base(rig, b, base)

    async def slow(req: dict[str, Any]) -> bytes:
        # Answers only once the gap filler has told JetStream it is still working.
        await rig.touched.wait()
        return rig.fed.answer("get_missing_events", req)

    rig.fed.answers["get_missing_events"] = slow
    result = await rig.send(b, latest)

    assert result.outcome is Outcome.ACCEPTED
    assert rig.touches >= 1
    assert rig.harness.store.stored[gap].kind == "old"


async def test_service_slower_than_the_timeout_is_retried(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    b.message("bob", "missed")
    latest = b.message("alice")
    rig.fed.serve(b)
    await send_base(rig, b, base)
    release = asyncio.Event()

    async def stuck(req: dict[str, Any]) -> bytes:
        await release.wait()
        return enc({})

    rig.fed.answers["get_missing_events"] = stuck
    rig.client.timeout = 0.2
    try:
        with pytest.raises(RetryableError) as err:
            await rig.send(b, latest)
    finally:
        release.set()
    assert "did not answer" in str(err.value)
    assert latest not in rig.harness.store.stored


def _rehash(pdu: dict[str, Any]) -> dict[str, Any]:
    """`pdu` with a correct content hash and ID for room version 10."""
    from worker.core.versions import rules_for

    rules = rules_for("10")
    assert rules is not None
    body = {k: v for k, v in pdu.items() if k != "event_id"}
    body["hashes"] = {"sha256": unpadded_b64(content_hash(body))}
    body["event_id"] = compute_event_id(body, rules)
    return body


def _wrong_room(pdu: dict[str, Any]) -> dict[str, Any]:
    return _rehash({**pdu, "room_id": "!elsewhere:test"})


def _bad_hash(pdu: dict[str, Any]) -> dict[str, Any]:
    # The reference hash (the ID) does not cover a message's content: only the content hash
    # tells the forgery apart.
    return {**pdu, "content": {"msgtype": "m.text", "body": "forged"}}


def _oversize(pdu: dict[str, Any]) -> dict[str, Any]:
    return _rehash({**pdu, "content": {"msgtype": "m.text", "body": "x" * 70_000}})


@pytest.mark.parametrize("forge", [_wrong_room, _bad_hash, _oversize])
async def test_malicious_missing_events_store_nothing(rig: Rig, forge: Any) -> None:
    b = started("10")
    base = list(b.events)
    gap = [b.message("bob", f"missed {i}") for i in range(3)]
    latest = b.message("alice")
    rig.fed.serve(b)
    seen = await send_base(rig, b, base)

    async def lying(req: dict[str, Any]) -> bytes:
        honest = msgspec.json.decode(rig.fed.answer("get_missing_events", req))["events"]
        return enc({"events": [*honest[:-1], forge(honest[-1])]})

    rig.fed.answers["get_missing_events"] = lying
    result = await rig.send(b, latest)

    assert (result.outcome, result.reason_code) == (Outcome.REJECTED, "missing_prev_events")
    # The honest events of the lying answer are not stored either; no state was on offer.
    assert rig.fed.asked == ["get_missing_events", "state_ids"]
    assert not any(e in rig.harness.store.stored for e in [*gap, latest])
    assert rig.harness.outputs()[seen:] == []


async def test_gap_event_passed_on_redacted_is_used(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    gap = b.message("bob", "its content hash failed upstream")
    latest = b.message("alice")
    rig.fed.serve(b)
    # The federation service redacts an event whose content hash fails (DESIGN §1).
    rig.fed.served[gap] = {**b.events[gap], "content": {}}
    await send_base(rig, b, base)

    result = await rig.send(b, latest)

    assert result.outcome is Outcome.ACCEPTED
    assert rig.harness.store.stored[gap].event.content == {}


async def test_too_many_missing_events_is_no_answer(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    gap = [b.message("bob", f"missed {i}") for i in range(25)]
    latest = b.message("alice")
    rig.fed.serve(b)
    await send_base(rig, b, base)

    async def flood(req: dict[str, Any]) -> bytes:
        return enc({"events": [b.events[e] for e in gap]})

    rig.fed.answers["get_missing_events"] = flood
    result = await rig.send(b, latest)
    assert result.reason_code == "missing_prev_events"
    assert not any(e in rig.harness.store.stored for e in gap)


async def test_state_answer_from_another_room_stores_nothing(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    for i in range(25):
        b.message("bob", f"missed {i}")
    joined = [b.join(f"user{i}") for i in range(3)]
    state = dict(b.state)
    latest = b.message("alice")
    rig.fed.serve(b)
    rig.fed.remember_state(b, latest, state)
    rig.fed.served[joined[0]] = _wrong_room(b.events[joined[0]])
    await send_base(rig, b, base)

    result = await rig.send(b, latest)

    assert result.reason_code == "missing_prev_events"
    assert "event" in rig.fed.asked
    assert not any(e in rig.harness.store.stored for e in [*joined, latest])


async def test_fetched_auth_event_that_fails_auth_is_stored_rejected(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    # Carol "joins" on dave's behalf: her membership event fails the auth rules.
    forged = b.member("carol", "dave", "join")
    msg = b.message("dave", prev=[base[-1]])
    rig.fed.serve(b)
    seen = await send_base(rig, b, base)

    result = await rig.send(b, msg)

    stored = rig.harness.store.stored
    assert (stored[forged].kind, stored[forged].outcome) == ("outlier", Outcome.REJECTED)
    assert (result.outcome, result.reason_code) == (Outcome.REJECTED, "auth_event_rejected")
    assert rig.harness.outputs()[seen:] == []
    assert ("m.room.member", "@dave:test") not in rig.harness.state(b.room_id)


async def test_fetched_state_event_that_fails_auth_is_left_out(rig: Rig) -> None:
    b = started("10")
    base = list(b.events)
    for i in range(25):
        b.message("bob", f"missed {i}")
    forged = b.member("carol", "dave", "join")
    state = dict(b.state)
    latest = b.message("alice")
    rig.fed.serve(b)
    rig.fed.remember_state(b, latest, state)
    await send_base(rig, b, base)

    result = await rig.send(b, latest)

    assert result.outcome is Outcome.ACCEPTED
    assert rig.harness.store.stored[forged].outcome is Outcome.REJECTED
    assert ("m.room.member", "@dave:test") not in rig.harness.store.before[latest]
    assert ("m.room.member", "@dave:test") not in rig.harness.state(b.room_id)


async def test_v2_room_with_carried_ids(rig: Rig) -> None:
    # v1/v2 IDs are not hashes: the content hash is the only check on what was fetched.
    b = RoomBuilder("2", real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    base = list(b.events)
    gap = b.message("alice", "missed")
    latest = b.message("alice")
    rig.fed.serve(b)
    await send_base(rig, b, base)
    result = await rig.send(b, latest)
    assert result.outcome is Outcome.ACCEPTED
    assert rig.harness.store.stored[gap].kind == "old"
