"""The same story in every room version 1 to 12: forks merged, redaction, invite, ban."""

from __future__ import annotations

import pytest

from tests.pipeline.conftest import Harness, started
from worker.core.outcomes import Outcome
from worker.core.versions import ROOM_VERSIONS


@pytest.mark.parametrize("version", sorted(ROOM_VERSIONS, key=int))
async def test_story_in_every_version(version: str) -> None:
    harness = Harness()
    b = started(version)
    fork = b.fork()
    topic = b.topic("alice", "main")
    name = fork.state_event("m.room.name", "", {"name": "side"}, "alice")
    msg = fork.message("bob", "side message")
    merge = b.message("alice", "merge", prev=[topic, msg])
    red = b.redact("alice", msg)
    b.invite("alice", "carol")
    b.join("carol")
    ban = b.ban("alice", "carol")
    results = {eid: await harness.send(b, eid) for eid in b.events}
    assert all(r.outcome is Outcome.ACCEPTED for r in results.values()), {
        e: (r.outcome, r.reason_code) for e, r in results.items() if r.outcome is not Outcome.ACCEPTED
    }
    state = harness.state(b.room_id)
    assert state[("m.room.topic", "")] == topic
    assert state[("m.room.name", "")] == name
    assert state[("m.room.member", "@carol:test")] == ban
    assert harness.store.latest[b.room_id] == [ban]
    assert (red, msg) in harness.store.applied_redactions
    types = [o.type for o in harness.outputs()]
    assert types.count("redacted_event") == 1
    assert types.count("new_invite_event") == 1 and types.count("retire_invite_event") == 1
    assert merge in {e for e, r in results.items() if r.outcome is Outcome.ACCEPTED}
