"""Realistic rooms end to end: publish to NATS, read outputs like a real consumer, and check
what the store holds afterwards."""

from __future__ import annotations

import msgspec
import pytest

from tests.e2e.conftest import Client, WorkerRun, event_id_of
from tests.pipeline.conftest import started
from worker.core.outcomes import Outcome


async def _state(worker: WorkerRun, room_id: str) -> dict[tuple[str, str], str]:
    assert worker.store is not None
    current = await worker.store.current_state(room_id)
    assert current is not None
    return await worker.store.materialize(current)


async def test_linear_room_end_to_end(worker: WorkerRun, client: Client) -> None:
    b = started("10")
    b.topic("alice", "hello")
    msg = b.message("bob")
    replies = [await client.send(b, eid) for eid in list(b.events)]
    assert [r.outcome for r in replies] == ["accepted"] * len(b.events)
    outs = await client.outputs(at_least=len(b.events))
    assert [event_id_of(o) for o in outs] == list(b.events)
    assert worker.store is not None
    assert await worker.store.extremities(b.room_id) == [msg]
    assert await _state(worker, b.room_id) == b.state


async def test_a_busy_room(worker: WorkerRun, client: Client) -> None:
    """Power changes, bans, kicks, invites accepted and declined, a fork merged by a
    multi-prev event, redactions in both orders, rejected and soft-failed events."""
    b = started("10")
    sent: dict[str, str] = {}

    async def send(builder_: object, eid: str, kind: str = "new") -> str:
        reply = await client.send(b if builder_ is None else builder_, eid, kind)  # type: ignore[arg-type]
        sent[eid] = reply.outcome
        return reply.outcome

    for eid in list(b.events):
        await send(None, eid)
    await send(None, b.power_levels("alice", users={"alice": 100, "bob": 40}))
    await send(None, b.join("carol"))
    await send(None, b.kick("alice", "carol"))
    await send(None, b.join_rules("alice", "invite"))
    invite_dave = b.invite("alice", "dave")
    join_dave = b.join("dave")
    invite_erin = b.invite("bob", "erin")
    decline = b.leave("erin")
    for eid in (invite_dave, join_dave, invite_erin, decline):
        await send(None, eid)
    # bob (40) may not ban (50): rejected. Nobody builds on a rejected event.
    latest = list(b.latest)
    assert await send(None, b.ban("bob", "dave", apply=False)) == "rejected"
    b.latest = latest
    # A fork: alice's topic on one branch, bob's message + a redaction-to-be on the other.
    fork = b.fork()
    topic = b.topic("alice", "main branch")
    msg = fork.message("bob", "to be redacted")
    red_early = b.redact("alice", msg)  # on the main branch: arrives before its target
    await send(None, topic)
    await send(None, red_early)
    await send(fork, msg)
    merge = b.message("alice", "merged", prev=[red_early, msg])
    assert await send(None, merge) == "accepted"
    late = b.message("dave", "oops")
    red_late = b.redact("alice", late)
    await send(None, late)
    await send(None, red_late)
    # A soft-failed event: dave is banned in current state, but writes on an old branch.
    stale = b.fork()
    await send(None, b.ban("alice", "dave"))
    assert await send(stale, stale.message("dave", "from the past")) == "soft_failed"

    accepted = [eid for eid, outcome in sent.items() if outcome == "accepted"]
    outs = await client.outputs(at_least=len(accepted))
    redacted = sorted(o.redacted_event.redacted_event_id for o in outs if o.redacted_event)
    assert redacted == sorted([msg, late])
    retired = [o.retire_invite_event for o in outs if o.retire_invite_event]
    assert [(r.event_id, r.retired_by_event_id, r.membership) for r in retired] == [
        (invite_dave, join_dave, "join"), (invite_erin, decline, "leave"),
    ]
    assert sum(1 for o in outs if o.new_invite_event) == 2
    announced = [event_id_of(o) for o in outs if o.new_room_event]
    assert announced == accepted
    assert worker.store is not None
    stored = await worker.store.events(list(sent))
    assert {eid: se.outcome.value for eid, se in stored.items()} == sent
    assert stored[msg].redacted and stored[late].redacted
    state = await _state(worker, b.room_id)
    assert state[("m.room.member", "@dave:test")] == b.state[("m.room.member", "@dave:test")]
    assert state[("m.room.topic", "")] == topic
    assert worker.store is not None
    assert await worker.store.extremities(b.room_id) == [b.state[("m.room.member", "@dave:test")]]


async def test_federated_join_and_old_events(worker: WorkerRun, client: Client) -> None:
    remote = started("10")
    history = remote.fork()
    remote.topic("alice", "remote room")
    state_ids = sorted(set(remote.state.values()), key=lambda e: remote.events[e]["depth"])
    for eid in state_ids:
        assert (await client.send(remote, eid, kind="outlier")).outcome == "outlier"
    before = list(remote.state.values())
    join = remote.join("@zed:here")
    reply = await client.send(remote, join, state_event_ids=tuple(before))
    assert reply.outcome == "accepted"
    msg = remote.message("@zed:here")
    assert (await client.send(remote, msg)).outcome == "accepted"
    # Backfill: an old event whose prev state is known (the join rules event's).
    old = history.message("alice", "long ago")
    assert (await client.send(remote, old, kind="old")).outcome == "accepted"
    outs = await client.outputs(at_least=3)
    rewrite = outs[0].new_room_event
    assert rewrite is not None and rewrite.rewrites_state
    assert sorted(rewrite.adds_state_event_ids) == sorted([*before, join])
    assert [o.type for o in outs] == ["new_room_event", "new_room_event", "old_room_event"]
    assert worker.store is not None
    assert await worker.store.extremities(remote.room_id) == [msg]
    assert await _state(worker, remote.room_id) == remote.state
    stored = await worker.store.events([old, state_ids[0]])
    assert stored[old].kind == "old" and stored[old].outcome is Outcome.ACCEPTED
    assert stored[state_ids[0]].kind == "outlier"
    body = msgspec.json.decode(outs[2].old_room_event.event)  # type: ignore[union-attr]
    assert body["event_id"] == old


async def test_outlier_later_delivered_as_new_joins_the_dag(
    worker: WorkerRun, client: Client
) -> None:
    b = started("10")
    for eid in list(b.events):
        await client.send(b, eid)
    msg = b.message("bob", "first seen as an outlier")
    assert (await client.send(b, msg, kind="outlier")).outcome == "outlier"
    # Nats-Msg-Id is the event ID by default, and JetStream would drop the second input as
    # a duplicate within its window: the producer must give the promotion its own ID.
    again = await client.send(b, msg, msg_id=msg + ":new")
    assert again.outcome == "accepted" and not again.duplicate
    outs = await client.outputs(at_least=len(b.events))
    assert event_id_of(outs[-1]) == msg
    assert worker.store is not None
    assert await worker.store.extremities(b.room_id) == [msg]
    stored = await worker.store.events([msg])
    assert stored[msg].kind == "new" and stored[msg].has_state


async def test_redactions_of_outliers_in_either_order(worker: WorkerRun, client: Client) -> None:
    b = started("10")
    for eid in list(b.events):
        await client.send(b, eid)
    fork = b.fork()
    first = fork.message("bob", "SECRET one")  # outlier, then its redaction, then new
    second = fork.message("bob", "SECRET two")  # redaction first, then the outlier
    red_first = b.redact("alice", first)
    red_second = b.redact("alice", second)
    assert (await client.send(fork, first, kind="outlier")).outcome == "outlier"
    assert (await client.send(b, red_first)).outcome == "accepted"
    assert (await client.send(b, red_second)).outcome == "accepted"
    assert (await client.send(fork, second, kind="outlier")).outcome == "outlier"
    assert worker.store is not None
    stored = await worker.store.events([first, second])
    assert stored[first].redacted and stored[second].redacted
    assert "body" not in stored[second].event.pdu["content"]
    joined = await client.send(fork, first, msg_id=first + ":new")
    assert joined.outcome == "accepted"
    outs = await client.outputs(at_least=len(b.events) + 1)
    published = [o for o in outs if o.new_room_event and event_id_of(o) == first]
    assert published and b"SECRET" not in bytes(published[0].new_room_event.event)


@pytest.mark.parametrize("version", ["1", "12"])
async def test_fork_redaction_invite_in_oldest_and_newest_versions(
    version: str, worker: WorkerRun, client: Client
) -> None:
    b = started(version)
    fork = b.fork()
    topic = b.topic("alice", "main")
    msg = fork.message("bob", "side message")
    b.message("alice", "merge", prev=[topic, msg])
    b.redact("alice", msg)
    b.invite("alice", "carol")
    ban = b.ban("alice", "carol")
    replies = [await client.send(b, eid) for eid in b.events]
    assert [r.outcome for r in replies] == ["accepted"] * len(b.events)
    outs = await client.outputs(at_least=len(b.events) + 3)
    types = [o.type for o in outs]
    assert types.count("redacted_event") == 1 and types.count("new_invite_event") == 1
    assert types.count("retire_invite_event") == 1
    assert worker.store is not None
    assert await worker.store.extremities(b.room_id) == [ban]
    assert await _state(worker, b.room_id) == b.state
