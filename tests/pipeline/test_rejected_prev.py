"""An event rejected on its own auth events keeps the state before it, so the events built on
it are processed like any other: a rejected prev is never a gap (DESIGN §2).

The expected outcomes are Synapse's, computed here with `synapse.event_auth` on the same PDUs
rather than with our own rules: Synapse checks an event against its own auth events (a
rejected one among them rejects it), then against the state before it, and a `new` event
also against the room's current state (soft failure). For a rejected event Synapse keeps a
state group whose state is the state before it: the rejected event never enters state, so
the state after it is the state before it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from synapse.api.errors import SynapseError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.event_auth import check_state_dependent_auth_rules, check_state_independent_auth_rules
from synapse.events import EventBase, make_event_from_dict

from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import Harness, started
from tests.pipeline.fakes import FakeState
from worker.core.events import StateKey
from worker.core.outcomes import Outcome


class _Recorder:
    """A federation client that records every request and has nothing to give."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def event_auth(self, room_id: str, event_id: str) -> list[Mapping[str, object]]:
        self.asked.append("event_auth")
        return []

    async def missing_events(
        self, room_id: str, earliest: Sequence[str], latest: Sequence[str], limit: int
    ) -> list[Mapping[str, object]]:
        self.asked.append("missing_events")
        return []

    async def state_ids(self, room_id: str, event_id: str) -> tuple[list[str], list[str]]:
        self.asked.append("state_ids")
        return [], []

    async def state(
        self, room_id: str, event_id: str
    ) -> tuple[list[Mapping[str, object]], list[Mapping[str, object]]]:
        self.asked.append("state")
        return [], []

    async def event(self, room_id: str, event_id: str) -> Mapping[str, object] | None:
        self.asked.append("event")
        return None


class _SynapseRoom:
    """The same PDUs as Synapse events, with Synapse's verdicts."""

    def __init__(self, b: RoomBuilder) -> None:
        self.b = b
        self.rv = KNOWN_ROOM_VERSIONS[b.version]
        self.rejected: set[str] = set()

    def event(self, eid: str) -> EventBase:
        data = copy.deepcopy(self.b.events[eid])
        data.pop("event_id", None)
        reason = "rejected" if eid in self.rejected else None
        ev = make_event_from_dict(data, self.rv, rejected_reason=reason)
        assert ev.event_id == eid
        return ev

    async def get_events(self, event_ids: Any, *args: Any, **kwargs: Any) -> dict[str, EventBase]:
        return {e: self.event(e) for e in event_ids if e in self.b.events}

    async def allowed(self, eid: str, *states: Mapping[StateKey, str]) -> str | None:
        """Synapse's verdict: None when allowed, else the first check that refused it."""
        ev = self.event(eid)
        try:
            await check_state_independent_auth_rules(self, ev)
        except SynapseError:
            return "own auth events"
        for n, state in enumerate(states):
            try:
                check_state_dependent_auth_rules(ev, [self.event(s) for s in state.values()])
            except SynapseError:
                return "state before" if n == 0 else "current state"
        return None


async def test_events_built_on_a_rejected_event_get_synapses_outcomes() -> None:
    b = started("10")
    syn = _SynapseRoom(b)
    fed = _Recorder()
    harness = Harness(federation=fed)
    for eid in list(b.events):
        assert (await harness.send(b, eid)).outcome is Outcome.ACCEPTED
    before = dict(b.state)  # the state before the rejected events (and after them)
    create = before[("m.room.create", "")]
    join_bob = before[("m.room.member", "@bob:test")]
    # bob (power 0) raises himself: rejected against the state before it.
    bad_pl = b.power_levels("bob", users={"alice": 100, "bob": 100}, apply=False)
    # bob's message citing that power levels event: rejected, for its rejected auth event.
    rejected = b.message("bob", auth=[create, bad_pl, join_bob], prev=[bad_pl])
    for eid, code in ((bad_pl, "insufficient_power"), (rejected, "auth_event_rejected")):
        assert await syn.allowed(eid, before) is not None
        syn.rejected.add(eid)
        result = await harness.send(b, eid)
        assert (result.outcome, result.reason_code) == (Outcome.REJECTED, code)

    # Ten events, each with the rejected message as its only prev.
    on_it = {"prev": [rejected]}
    children = [
        b.message("alice", **on_it),
        b.message("bob", **on_it),
        b.topic("alice", "alice's topic", **on_it),
        b.topic("bob", "bob's topic", **on_it),  # bob has power 0, state_default 50
        b.message("mallory", **on_it),  # never joined
        b.message("bob", auth=[create, bad_pl, join_bob], **on_it),  # cites the rejected PL
        b.join("carol", **on_it),
        b.message("carol", **on_it),  # her join is a sibling, not in the state before
        b.kick("alice", "bob", **on_it),
        # bob's message citing his join: allowed by its auth events and by the state before
        # it, but the kick is in the room's current state by then.
        b.message("bob", auth=[create, before[("m.room.power_levels", "")], join_bob], **on_it),
    ]
    # Synapse's current state: the accepted children are forward extremities beside the
    # last accepted event before the rejected ones; none of them changes a key another one
    # changes, so their resolution is the state before plus each accepted state event.
    current = dict(before)
    expected: list[Outcome] = []
    for eid in children:
        verdict = await syn.allowed(eid, before, current)
        if verdict is None:
            expected.append(Outcome.ACCEPTED)
            key = b.event(eid).state_tuple
            if key is not None:
                current[key] = eid
        elif verdict == "current state":
            expected.append(Outcome.SOFT_FAILED)
        else:
            expected.append(Outcome.REJECTED)
            syn.rejected.add(eid)
    # The case is only worth something if it holds every outcome.
    assert set(expected) == {Outcome.ACCEPTED, Outcome.REJECTED, Outcome.SOFT_FAILED}

    outcomes = [(await harness.send(b, eid)).outcome for eid in children]

    assert outcomes == expected
    assert fed.asked == []
    for eid, outcome in zip(children, outcomes, strict=True):
        assert harness.store.stored[eid].has_state, eid
        assert harness.store.stored[eid].outcome is outcome
    # The rejected message's state is the state before it; nothing of it entered state.
    after_rejected = (await harness.store.state_after([rejected]))[rejected]
    assert isinstance(after_rejected, FakeState) and after_rejected.entries == before
    assert harness.state(b.room_id) == current
