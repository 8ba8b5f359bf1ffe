"""A previously rejected event never re-enters state through the pipeline's merges.

Two guards keep it out, as in Synapse (docs/interop.md): a given state (`state_event_ids`)
drops the rejected events it names, and state resolution, which gets every stored event's
outcome (`pipeline/state.py`), never applies a rejected event nor reads one as an auth event
(pinned on its own by the core's differential tests).
"""

from __future__ import annotations

from tests.pipeline.conftest import Harness, started
from worker.core.outcomes import Outcome


async def test_a_rejected_event_in_a_given_state_does_not_win_the_merge(
    harness: Harness,
) -> None:
    b = started("10")
    remote = b.fork()
    base = list(remote.latest)
    # Bob (level 0) changes the power levels: rejected here. Alice's topic cites that event
    # as its power levels auth event: rejected too, although Alice may set the topic.
    pl = remote.power_levels("bob", users={"alice": 100, "bob": 100})
    topic = remote.topic("alice", "from a rejected branch", prev=base)
    last = b.message("alice")
    await harness.send_all(b)
    assert (await harness.send(remote, pl)).outcome is Outcome.REJECTED
    assert (await harness.send(remote, topic)).outcome is Outcome.REJECTED
    # Another server's view of the room holds both, and a child of the topic arrives with
    # that state (its own auth events are fine).
    child = b.message("alice", prev=[topic])
    given = tuple(remote.state.values())
    result = await harness.send(b, child, state_event_ids=given)
    assert result.outcome is Outcome.ACCEPTED
    # A merge of the two forks resolves their states: the spec's text would check the topic
    # again and let it in (Alice may set it); Synapse, and so we, never admit it.
    merge = b.message("alice", prev=[last, child])
    assert (await harness.send(b, merge)).outcome is Outcome.ACCEPTED
    assert harness.store.latest[b.room_id] == [merge]
    state = harness.state(b.room_id)
    assert ("m.room.topic", "") not in state
    assert state[("m.room.power_levels", "")] == b.state[("m.room.power_levels", "")]
