"""The iterative auth checks give the same states with and without the self-membership table.

`iterative_auth_checks` decides by `SelfMembershipTable` only when the authorizer's check is
`check_auth` itself; an authorizer that wraps the very same rule functions turns it off. Both
run over random rooms of every version (the differential harness's DAGs), random orders of
their state events, random starting states with keys missing (so that the fallback to an
event's own auth events is exercised) and random sets of rejected events.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_stateres_harness import random_forked_dag

from worker.core.auth import auth_types_for_event, check_auth
from worker.core.events import Event, StateKey
from worker.core.outcomes import Rejection
from worker.core.stateres import SpecAuthorizer, join_runs
from worker.core.stateres.events import Events
from worker.core.stateres.iterative import iterative_auth_checks


class FullRules:
    """The spec's rules, but not by identity: the iterative checks run them for every event."""

    def auth_types(self, event: Event) -> Iterable[StateKey]:
        return auth_types_for_event(event)

    def check(self, event: Event, auth_events: Mapping[StateKey, Event]) -> Rejection | None:
        return check_auth(event, auth_events)


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    version=st.sampled_from([str(v) for v in range(1, 13)]),
    batch=st.sampled_from([join_runs.BATCH, 1, 2]),
)
def test_shortcut_gives_the_full_rules_states(seed: int, version: str, batch: int) -> None:
    """`batch`: from how many self-joins in a row the table decides them together (the
    default is met only by big rooms)."""
    rng = random.Random(seed)
    dag = random_forked_dag(rng, version)
    state_events = sorted(eid for eid, ev in dag.ours.items() if ev.state_key is not None)
    # A random order of (mostly) state events, with repeats: later copies see earlier ones.
    order = [rng.choice(state_events) for _ in range(rng.randint(1, 3 * len(state_events)))]
    start = dict(rng.choice([*dag.state_sets, *dag.linear_states]))
    for key in sorted(start):
        # Keys missing from the state fall back to each event's own auth events; the
        # create event is kept most of the time (without it nothing passes anyway).
        if rng.random() < (0.05 if key == ("m.room.create", "") else 0.3):
            del start[key]
    rejected = frozenset(e for e in state_events if rng.random() < 0.1)

    def run(authz: SpecAuthorizer | FullRules) -> tuple[dict[StateKey, str], int]:
        state = dict(start)
        events = Events(dag.rules, dag.ours.get, None, rejected)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(join_runs, "BATCH", batch)
            checked = iterative_auth_checks(events, authz, order, state)
        return state, checked

    assert run(SpecAuthorizer()) == run(FullRules())
