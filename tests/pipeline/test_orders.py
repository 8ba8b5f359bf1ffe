"""Determinism (STYLE R9): the branches of a fork delivered in any interleaving give the same
stored state, extremities and announced event set."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import Harness, started
from worker.core.outcomes import Outcome


def _dag() -> tuple[RoomBuilder, list[str], list[str], list[str], str]:
    b = started("10")
    base = list(b.events)
    fork = b.fork()
    left = [
        b.topic("alice", "L1"),
        b.state_event("m.room.name", "", {"name": "L"}, "alice"),
        b.message("bob", "left"),
    ]
    right = [
        fork.topic("alice", "R1"),
        fork.join("carol"),
        fork.message("carol", "right"),
    ]
    merge = b.message("alice", "merge", prev=[left[-1], right[-1]])
    return b, base, left, right, merge


DAG = _dag()
_REFERENCE: list[tuple[dict[tuple[str, str], str], list[str], set[str]]] = []


@settings(max_examples=12, deadline=None)
@given(st.permutations([0, 0, 0, 1, 1, 1]))
def test_interleavings_agree(order: list[int]) -> None:
    b, base, left, right, merge = DAG

    async def run() -> tuple[dict[tuple[str, str], str], list[str], set[str]]:
        harness = Harness()
        for eid in base:
            await harness.send(b, eid)
        queues = [list(left), list(right)]
        for side in order:
            result = await harness.send(b, queues[side].pop(0))
            assert result.outcome is Outcome.ACCEPTED
        await harness.send(b, merge)
        room = b.room_id
        announced = {r.output_id for r in harness.relay.published}
        return harness.state(room), harness.store.latest[room], announced

    state, latest, announced = asyncio.run(run())
    assert latest == [merge]
    if not _REFERENCE:
        _REFERENCE.append(asyncio.run(_reference()))
    expected_state, _, expected_announced = _REFERENCE[0]
    assert state == expected_state
    assert announced == expected_announced


async def _reference() -> tuple[dict[tuple[str, str], str], list[str], set[str]]:
    b, base, left, right, merge = DAG
    harness = Harness()
    for eid in [*base, *left, *right, merge]:
        await harness.send(b, eid)
    room = b.room_id
    return (
        harness.state(room),
        harness.store.latest[room],
        {r.output_id for r in harness.relay.published},
    )
