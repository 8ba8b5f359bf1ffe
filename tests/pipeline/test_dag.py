"""Forks, merges, soft-failure, rejection, invites, redactions, outliers and old events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import pytest

from tests.pipeline.conftest import Harness, builder, started
from worker.core.outcomes import Outcome
from worker.messages import RetireInviteEvent


async def test_rejected_event_is_stored_with_reason_and_announces_nothing(
    harness: Harness,
) -> None:
    b = started("10")
    await harness.send_all(b)
    published = len(harness.relay.published)
    # carol never joined: her message fails auth against its own auth events.
    msg = b.message("carol")
    result = await harness.send(b, msg)
    assert result.outcome is Outcome.REJECTED and result.reason_code
    assert harness.store.stored[msg].outcome is Outcome.REJECTED
    assert len(harness.relay.published) == published
    assert msg not in harness.store.latest[b.room_id]


async def test_event_failing_only_state_before_is_rejected(harness: Harness) -> None:
    b = started("10")
    fork = b.fork()
    ban = b.ban("alice", "bob")
    # bob's topic change on a branch after the ban, citing his old join as auth: its own
    # auth events allow it, the state before it (which has the ban) does not.
    topic = fork.topic("bob", "mine", prev=[ban])
    await harness.send_all(b)
    result = await harness.send(fork, topic)
    assert result.outcome is Outcome.REJECTED


async def test_soft_failed_event_is_stored_but_not_an_extremity(harness: Harness) -> None:
    b = started("10")
    fork = b.fork()
    ban = b.ban("alice", "bob")
    await harness.send_all(b)
    # bob writes on a branch that does not know of the ban: fine there, not in current state.
    msg = fork.message("bob")
    result = await harness.send(fork, msg)
    assert result.outcome is Outcome.SOFT_FAILED
    assert harness.store.stored[msg].outcome is Outcome.SOFT_FAILED
    assert harness.store.latest[b.room_id] == [ban]
    assert all(o.new_room_event is None or msg not in bytes(o.new_room_event.event).decode()
               for o in harness.outputs())


async def test_fork_and_merge_resolve_state(harness: Harness) -> None:
    b = started("10")
    base = list(b.latest)
    fork = b.fork()
    topic_a = b.topic("alice", "A")
    name_b = fork.state_event("m.room.name", "", {"name": "B"}, "alice")
    for eid in b.events:
        if eid != name_b:
            await harness.send(b, eid)
    await harness.send(fork, name_b)
    assert sorted(harness.store.latest[b.room_id]) == sorted([topic_a, name_b])
    merge = b.message("alice", prev=[topic_a, name_b])
    result = await harness.send(b, merge)
    assert result.outcome is Outcome.ACCEPTED
    assert harness.store.latest[b.room_id] == [merge]
    state = harness.state(b.room_id)
    assert state[("m.room.topic", "")] == topic_a
    assert state[("m.room.name", "")] == name_b
    assert base  # the fork point existed
    out = harness.outputs("new_room_event")[-1].new_room_event
    assert out is not None and out.latest_event_ids == (merge,)


async def test_concurrent_fork_current_state_resolved_over_extremities(harness: Harness) -> None:
    b = started("10")
    fork = b.fork()
    topic_a = b.topic("alice", "A")
    topic_b = fork.topic("alice", "B")
    for eid in b.events:
        if eid != topic_b:
            await harness.send(b, eid)
    result = await harness.send(fork, topic_b)
    assert result.outcome is Outcome.ACCEPTED
    state = harness.state(b.room_id)
    # Both topics are by alice at the same power: v2 orders by origin_server_ts, later wins.
    assert state[("m.room.topic", "")] == topic_b
    out = harness.outputs("new_room_event")[-1].new_room_event
    assert out is not None
    assert sorted(out.latest_event_ids) == sorted([topic_a, topic_b])
    assert out.adds_state_event_ids == (topic_b,)
    assert out.removes_state_event_ids == (topic_a,)


async def test_invite_then_join_retires_the_invite(harness: Harness) -> None:
    b = started("10")
    b.join_rules("alice", "invite")
    invite = b.invite("alice", "carol")
    join = b.join("carol")
    invite_dave = b.invite("alice", "dave")
    decline = b.leave("dave")
    await harness.send_all(b)
    invites = harness.outputs("new_invite_event")
    assert len(invites) == 2
    retired = [o.retire_invite_event for o in harness.outputs("retire_invite_event")]
    assert [(r.event_id, r.retired_by_event_id, r.membership) for r in retired if r] == [
        (invite, join, "join"),
        (invite_dave, decline, "leave"),
    ]
    # Invite outputs precede the new_room_event of the same event.
    types = [o.type for o in harness.outputs()]
    i = types.index("retire_invite_event")
    assert types[i + 1] == "new_room_event"


async def test_redaction_after_its_target(harness: Harness) -> None:
    b = started("10")
    msg = b.message("bob")
    red = b.redact("alice", msg)
    await harness.send_all(b)
    outs = [o.redacted_event for o in harness.outputs("redacted_event")]
    assert [o.redacted_event_id for o in outs if o] == [msg]
    assert (red, msg) in harness.store.applied_redactions
    stored = msgspec.json.decode(harness.store.json[msg])
    assert stored["content"] == {}


async def test_redaction_before_its_target(harness: Harness) -> None:
    b = started("10")
    fork = b.fork()
    msg = fork.message("bob")
    red = b.redact("alice", msg)
    for eid in b.events:
        if eid != msg:
            await harness.send(b, eid)
    assert harness.outputs("redacted_event") == []
    await harness.send(fork, msg)
    outs = harness.outputs("redacted_event")
    assert len(outs) == 1 and outs[0].redacted_event is not None
    assert outs[0].redacted_event.redacted_event_id == msg
    assert (red, msg) in harness.store.applied_redactions


async def test_unauthorised_redaction_is_not_applied(harness: Harness) -> None:
    b = started("10")
    b.join("@eve:other")
    msg = b.message("alice")
    red = b.redact("@eve:other", msg)
    results = await harness.send_all(b)
    assert results[-1].outcome is Outcome.ACCEPTED
    assert harness.outputs("redacted_event") == []
    assert (red, msg) not in harness.store.applied_redactions


async def test_missing_prev_events_are_refused_and_not_stored(harness: Harness) -> None:
    b = started("10")
    await harness.send_all(b)
    gap = b.message("alice")
    msg = b.message("bob")
    result = await harness.send(b, msg)
    assert result.outcome is Outcome.REJECTED
    assert result.reason_code == "missing_prev_events"
    assert msg not in harness.store.stored
    await harness.send(b, gap)
    assert (await harness.send(b, msg)).outcome is Outcome.ACCEPTED


async def test_unknown_room_and_bad_input_are_refused(harness: Harness) -> None:
    b = started("10")
    msg = b.message("bob")
    unknown = await harness.send(b, msg)
    assert (unknown.outcome, unknown.reason_code) == (Outcome.REJECTED, "room_unknown")
    for eid in list(b.events)[:-1]:
        await harness.send(b, eid)
    from worker.messages import InputRoomEvent

    bad = await harness.pipeline.handle(
        b.room_id, InputRoomEvent(kind="new", event=msgspec.Raw(b"{not json"))
    )
    assert bad.outcome is Outcome.INVALID and bad.reason_code == "bad_json"
    pdu = dict(b.events[msg])
    pdu["event_id"] = "$forged"
    forged = await harness.pipeline.handle(
        b.room_id, InputRoomEvent(kind="new", event=msgspec.Raw(msgspec.json.encode(pdu)))
    )
    assert forged.outcome is Outcome.INVALID and forged.reason_code == "event_id_mismatch"


async def test_federated_join_outliers_then_join_with_state(harness: Harness) -> None:
    remote = started("10")
    remote.topic("alice", "remote room")
    state_ids = sorted(set(remote.state.values()), key=lambda e: remote.events[e]["depth"])
    for eid in state_ids:
        result = await harness.send(remote, eid, kind="outlier")
        assert result.outcome is Outcome.OUTLIER
    assert harness.outputs() == []
    state_before = list(remote.state.values())
    join = remote.join("@zed:here")
    result = await harness.send(remote, join, state_event_ids=tuple(state_before))
    assert result.outcome is Outcome.ACCEPTED
    out = harness.outputs("new_room_event")[-1].new_room_event
    assert out is not None and out.rewrites_state
    assert sorted(out.adds_state_event_ids) == sorted([*state_before, join])
    assert harness.store.latest[remote.room_id] == [join]
    assert harness.state(remote.room_id) == remote.state
    # The room then moves on normally.
    msg = remote.message("@zed:here")
    assert (await harness.send(remote, msg)).outcome is Outcome.ACCEPTED


async def test_old_event_is_announced_without_touching_current_state(harness: Harness) -> None:
    b = started("10")
    fork = b.fork()
    b.message("alice")
    await harness.send_all(b)
    latest = list(harness.store.latest[b.room_id])
    current = harness.state(b.room_id)
    old = fork.message("bob")
    result = await harness.send(fork, old, kind="old")
    assert result.outcome is Outcome.ACCEPTED
    assert harness.store.latest[b.room_id] == latest
    assert harness.state(b.room_id) == current
    assert len(harness.outputs("old_room_event")) == 1


class _Federation:
    def __init__(self, pdus: Mapping[str, Mapping[str, object]]) -> None:
        self.pdus = pdus
        self.asked: list[str] = []

    async def event_auth(self, room_id: str, event_id: str) -> list[Mapping[str, object]]:
        self.asked.append("event_auth")
        return []

    async def missing_events(
        self, room_id: str, earliest: Sequence[str], latest: Sequence[str], limit: int
    ) -> list[Mapping[str, object]]:
        self.asked.append("missing_events")
        return list(self.pdus.values())


async def test_gap_filled_through_the_federation_port() -> None:
    b = started("10")
    events = list(b.events)
    gap = b.message("bob")
    msg = b.message("alice")
    fed = _Federation({gap: b.events[gap]})
    harness = Harness(federation=fed)
    for eid in events:
        await harness.send(b, eid)
    result = await harness.send(b, msg)
    assert fed.asked == ["missing_events"]
    assert result.outcome is Outcome.ACCEPTED
    assert harness.store.stored[gap].kind == "old"
    # The gap's events descend from the old extremity: it must not linger beside `msg`.
    assert harness.store.latest[b.room_id] == [msg]


async def test_v2_room_with_carried_ids() -> None:
    harness = Harness()
    b = builder("2")
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.message("alice")
    results = await harness.send_all(b)
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 4


def test_state_reset_detector_flags_only_unexplained_losses() -> None:
    from worker.pipeline.memberships import detect_resets

    b = started("10")
    before_join = b.state[("m.room.member", "@bob:test")]
    pl_old = b.state[("m.room.power_levels", "")]
    join_key = ("m.room.member", "@bob:test")
    kick = b.kick("alice", "bob")
    pl_new = b.power_levels("alice", users={"alice": 100})
    events = {eid: b.event(eid) for eid in b.events}
    removed = [events[before_join], events[pl_old]]
    # Kicked by an event that cites the join: not a reset.
    explained = {join_key: kick, ("m.room.power_levels", ""): pl_new}
    assert detect_resets(removed, explained, events) == []
    # The join simply vanished from the resolved state: a reset.
    vanished = {("m.room.power_levels", ""): pl_new}
    assert [f["kind"] for f in detect_resets(removed, vanished, events)] == ["join_removed"]
    # Power lowered by an older power levels event that does not descend from the lost one.
    older = b.power_levels("alice", users={"alice": 100, "bob": 10}, auth=[])
    raised = b.power_levels("alice", users={"alice": 100, "bob": 50})
    events = {eid: b.event(eid) for eid in b.events}
    found = detect_resets([events[raised]], {("m.room.power_levels", ""): older}, events)
    assert [(f["kind"], f["user_id"]) for f in found] == [("power_lowered", "@bob:test")]


async def test_second_create_event_for_a_room_is_refused(harness: Harness) -> None:
    b = started("10")
    await harness.send_all(b)
    again = b.create("mallory")
    result = await harness.send(b, again)
    assert (result.outcome, result.reason_code) == (Outcome.REJECTED, "room_exists")
    assert again not in harness.store.stored
    # The original create, delivered again, is still just a duplicate.
    first = await harness.send(b, next(iter(b.events)))
    assert first.duplicate and first.outcome is Outcome.ACCEPTED


async def test_big_resolutions_run_off_the_event_loop(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlog.testing import capture_logs

    from worker.pipeline import state

    monkeypatch.setattr(state, "OFFLOAD_EVENTS", 0)
    b = started("10")
    fork = b.fork()
    topic = b.topic("alice", "A")
    name = fork.state_event("m.room.name", "", {"name": "B"}, "alice")
    for eid in b.events:
        if eid != name:
            await harness.send(b, eid)
    with capture_logs() as logs:
        await harness.send(fork, name)
    assert any(entry["event"] == "state_resolution_offloaded" for entry in logs)
    assert harness.state(b.room_id)[("m.room.topic", "")] == topic


async def test_outcomes_are_counted(harness: Harness) -> None:
    from worker.observability.metrics import DUPLICATES, EVENTS_PROCESSED

    def count(kind: str, outcome: str) -> float:
        value = EVENTS_PROCESSED.labels(kind, outcome)._value.get()
        assert isinstance(value, float)
        return value

    before = (count("new", "accepted"), count("new", "rejected"), DUPLICATES._value.get())
    b = started("10")
    await harness.send_all(b)
    await harness.send(b, b.message("mallory"))
    await harness.send(b, next(iter(b.events)))
    after = (count("new", "accepted"), count("new", "rejected"), DUPLICATES._value.get())
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (6, 1, 1)


async def test_missing_auth_events_fetched_as_outliers() -> None:
    b = started("10")
    base = list(b.events)
    join = b.join("carol")
    msg = b.message("carol", prev=[base[-1]])

    class AuthOnly(_Federation):
        async def event_auth(self, room_id: str, event_id: str) -> list[Mapping[str, object]]:
            self.asked.append("event_auth")
            return [b.events[join]]

    fed = AuthOnly({})
    harness = Harness(federation=fed)
    for eid in base:
        await harness.send(b, eid)
    result = await harness.send(b, msg)
    assert fed.asked == ["event_auth"]
    assert harness.store.stored[join].kind == "outlier"
    # Its own auth events now allow it; the state before it (no join of carol) does not.
    assert result.outcome is Outcome.REJECTED and result.reason_code != "missing_auth_events"


async def test_an_old_event_on_another_branch_keeps_that_branch_an_extremity(
    harness: Harness,
) -> None:
    # Extremities [e1, t2]; an old event hangs off t2; then x extends e1. t2's branch (and
    # its topic) must stay: x does not descend from it.
    b = started("10")
    await harness.send_all(b)
    other = b.fork()
    e1 = b.message("alice")
    t2 = other.topic("alice", "kept")
    await harness.send(b, e1)
    await harness.send(other, t2)
    old = other.message("bob")
    assert (await harness.send(other, old, kind="old")).outcome is Outcome.ACCEPTED
    x = b.message("alice")
    assert (await harness.send(b, x)).outcome is Outcome.ACCEPTED
    assert sorted(harness.store.latest[b.room_id]) == sorted([t2, x])
    assert harness.state(b.room_id)[("m.room.topic", "")] == t2


async def test_an_outlier_redacted_before_it_joins_the_dag_stays_redacted(
    harness: Harness,
) -> None:
    b = started("10")
    fork = b.fork()
    msg = fork.message("bob", "SECRET")
    red = b.redact("alice", msg)
    for eid in b.events:
        if eid not in (msg, red):
            await harness.send(b, eid)
    await harness.send(fork, msg, kind="outlier")
    await harness.send(b, red)
    assert (red, msg) in harness.store.applied_redactions
    assert b"SECRET" not in harness.store.json[msg]
    # Now the outlier arrives as part of the DAG: what is published is the redacted event.
    assert (await harness.send(fork, msg)).outcome is Outcome.ACCEPTED
    published = [
        msgspec.json.decode(o.new_room_event.event) for o in harness.outputs("new_room_event")
        if o.new_room_event is not None
    ]
    [joined] = [e for e in published if e["event_id"] == msg]
    assert "body" not in joined["content"], "the redacted content must not be published"
    assert b"SECRET" not in harness.store.json[msg]


async def test_a_redaction_that_arrives_first_applies_to_an_outlier_target(
    harness: Harness,
) -> None:
    b = started("10")
    fork = b.fork()
    msg = fork.message("bob", "SECRET")
    red = b.redact("alice", msg)
    for eid in b.events:
        if eid != msg:
            await harness.send(b, eid)
    await harness.send(fork, msg, kind="outlier")
    assert (red, msg) in harness.store.applied_redactions
    assert b"SECRET" not in harness.store.json[msg]


def test_an_invite_dropped_from_state_by_a_merge_is_retired() -> None:
    from worker.core.events import Event
    from worker.pipeline.memberships import invite_outputs

    b = started("10")
    invite = b.invite("alice", "carol")
    ev = Event(b.events[invite], invite, b.rules)
    [retired] = invite_outputs(b.room_id, "10", added=[], removed=[ev], cause="$merge")
    assert isinstance(retired, RetireInviteEvent)
    assert (retired.event_id, retired.target_user_id, retired.retired_by_event_id,
            retired.membership) == (invite, "@carol:test", "$merge", "leave")
    # Replaced by a join: retired by the join, as before; not twice.
    join = b.join("carol")
    joined = Event(b.events[join], join, b.rules)
    outs = invite_outputs(b.room_id, "10", added=[joined], removed=[ev], cause=join)
    assert [(o.event_id, o.membership) for o in outs if isinstance(o, RetireInviteEvent)] == [
        (invite, "join")
    ]
