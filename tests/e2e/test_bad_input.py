"""Bad input: every malformed or unauthorised input gets a clear reply and a dead letter or
a rejected record, while a healthy room keeps flowing beside them."""

from __future__ import annotations

import asyncio

import msgspec
import nats

from tests.e2e.conftest import Client, WorkerRun
from tests.fixtures.malformed import load_cases
from tests.pipeline.conftest import started
from worker.bus.subjects import Subjects
from worker.messages import InputReply, decode_reply

NOWHERE = "!nowhere:test"


def _envelope(data: bytes, room_version: str) -> bytes:
    # The PDU is spliced in as is, like a producer would: when it is not JSON at all the
    # whole message becomes undecodable, which is the bus's dead-letter path.
    head = msgspec.json.encode({"kind": "new", "room_version": room_version})
    return head[:-1] + b',"event":' + (data or b'""') + b"}"


async def _publish_raw(
    nc: nats.NATS, subjects: Subjects, room_id: str, body: bytes, inbox: str
) -> None:
    headers = {"Room-ID": room_id, "Reply-Inbox": inbox}
    await nc.jetstream().publish(
        subjects.input(room_id), body, stream=subjects.input_stream, headers=headers
    )


async def test_bad_input_corpus(worker: WorkerRun, client: Client) -> None:
    nc, subjects = client.nc, client.subjects
    cases = load_cases()
    replies: dict[str, InputReply] = {}
    done = asyncio.Event()
    expected = len(cases)

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        replies[msg.subject.rsplit(".", 1)[-1]] = decode_reply(msg.data)
        if len(replies) >= expected:
            done.set()

    inbox = nc.new_inbox()
    await nc.subscribe(inbox + ".*", cb=on_reply)
    healthy = started("10")
    healthy_ids = list(healthy.events)
    for i, case in enumerate(cases):
        room = case.pdu.get("room_id") if isinstance(case.pdu, dict) else None
        room_id = room if isinstance(room, str) and room.startswith("!") else NOWHERE
        body = _envelope(case.data, case.room_version)
        await _publish_raw(nc, subjects, room_id, body, f"{inbox}.{case.name}")
        if i < len(healthy_ids):
            await client.publish(healthy, healthy_ids[i])
    await asyncio.wait_for(done.wait(), 60)

    for case in cases:
        reply = replies[case.name]
        assert reply.outcome == "invalid", (case.name, reply)
        assert reply.reason_code and reply.reason, (case.name, reply)
        if case.pdu is not None and reply.reason_code != "undecodable":
            # PDUs that leave the envelope decodable reach the pipeline and get the core's
            # own reason code (the others, e.g. lone surrogates, are the bus's `undecodable`).
            assert reply.reason_code == case.expected_code, (case.name, reply)
    info = await nc.jetstream().stream_info(subjects.deadletter_stream)
    assert info.state.messages >= len(cases)
    # The healthy room was not held up by any of it.
    outs = await client.outputs(at_least=len(healthy_ids))
    assert len([o for o in outs if o.new_room_event]) == len(healthy_ids)


async def test_unauthorised_events_are_rejected_and_recorded(
    worker: WorkerRun, client: Client
) -> None:
    b = started("10")
    b.power_levels("alice", users={"alice": 100, "bob": 10}, state_default=50, ban=50)
    for eid in list(b.events):
        assert (await client.send(b, eid)).outcome == "accepted"
    latest = list(b.latest)
    makers = [
        lambda: b.message("mallory"),  # never joined
        lambda: b.topic("bob", "not allowed", apply=False),  # below state_default
        lambda: b.ban("bob", "alice", apply=False),  # below ban
        lambda: b.kick("bob", "alice", apply=False),  # below kick
        lambda: b.power_levels("bob", users={"bob": 100}, apply=False),  # raises own level
        lambda: b.join("@mallory:evil", extra={"sender": "@alice:test"}, apply=False),
        lambda: b.invite("mallory", "eve", apply=False),  # inviter not in the room
        lambda: b.state_event("m.room.name", "", {"name": "x"}, "@eve:test", apply=False),
    ]
    attempts = []
    for make in makers:
        # Every attempt builds on the healthy room, never on another attempt.
        b.latest = list(latest)
        attempts.append(make())
    assert worker.store is not None
    for eid in attempts:
        reply = await client.send(b, eid)
        assert reply.outcome == "rejected", (eid, reply)
        assert reply.reason_code and reply.reason
    stored = await worker.store.events(attempts)
    assert all(stored[e].outcome.value == "rejected" and stored[e].reason for e in attempts)
    # Nothing of it reached current state or the extremities.
    assert await worker.store.extremities(b.room_id) == latest
