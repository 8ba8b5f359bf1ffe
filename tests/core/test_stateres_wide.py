"""The paths state resolution takes only for big inputs give the same answers as the others.

Set-at-a-time auth-chain walks (`events._WIDE`), the mainline ordering by single-key sorts
(`ordering._MANY_TO_SORT`), the reuse of what the walks saw (`v2._MANY`) and the self-joins
decided together (`join_runs.BATCH`) start at sizes that the random rooms of the
differential tests never reach. Lowering the thresholds makes every resolution take them;
the answers must not change (those of the default paths are checked against Synapse in
`test_stateres_differential.py`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from test_stateres_harness import Dag, DagBuilder, ours_resolve, random_forked_dag, synapse_resolve

from worker.core.events import StateKey
from worker.core.stateres import events, join_runs, ordering, resolve, v2

VERSIONS = [str(v) for v in range(1, 13)]


@pytest.mark.parametrize("version", VERSIONS)
def test_big_input_paths_agree(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dags = [random_forked_dag(random.Random(seed), version) for seed in range(60)]
    default = [ours_resolve(dag) for dag in dags]
    monkeypatch.setattr(events, "_WIDE", 1)
    monkeypatch.setattr(ordering, "_MANY_TO_SORT", 0)
    monkeypatch.setattr(v2, "_MANY", 0)
    monkeypatch.setattr(join_runs, "BATCH", 1)
    assert [ours_resolve(dag) for dag in dags] == default


def test_mainline_orders_agree_on_many_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both orderings on events citing several power levels events, ties in timestamps."""
    rng = random.Random(7)
    for seed in range(40):
        dag = random_forked_dag(random.Random(seed), "10")
        ids = sorted(dag.ours)
        chosen = rng.sample(ids, min(len(ids), rng.randint(1, 60)))
        pls = [e for e in ids if dag.ours[e].type == "m.room.power_levels"] + [None]
        base = rng.choice(pls)
        small = ordering.Mainline(events.Events(dag.rules, dag.ours.get, None, frozenset()), base)
        want = small.order(chosen)
        monkeypatch.setattr(ordering, "_MANY_TO_SORT", 0)
        big = ordering.Mainline(events.Events(dag.rules, dag.ours.get, None, frozenset()), base)
        assert big.order(chosen) == want
        # Input in timestamp order already (how state sets usually list events).
        by_ts = sorted(chosen, key=lambda e: (dag.ours[e].origin_server_ts, e))
        assert big.order(by_ts) == want
        monkeypatch.setattr(ordering, "_MANY_TO_SORT", 10**9)
        assert want == sorted(
            chosen,
            key=lambda e: (-small.position(dag.ours[e]), dag.ours[e].origin_server_ts, e),
        )


def _chain_index(dag: Dag) -> Callable[[str], frozenset[str]]:
    """Every event's auth chain, as a store's index would answer it."""
    memo: dict[str, frozenset[str]] = {}

    def chain(eid: str) -> frozenset[str]:
        got = memo.get(eid)
        if got is None:
            ev = dag.ours[eid]
            refs = list(ev.auth_event_ids)
            if dag.rules.room_id_from_create_event and ev.type != "m.room.create":
                refs.append("$" + ev.room_id[1:])
            got = memo[eid] = frozenset(refs).union(*map(chain, refs))
        return got

    return chain


@pytest.mark.parametrize("version", VERSIONS)
def test_chain_index_on_many_roots_agrees(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an auth chain index, many roots are closed over what they cite (`_WIDE`)."""
    dags = [random_forked_dag(random.Random(seed), version) for seed in range(60)]
    default = [ours_resolve(dag) for dag in dags]
    monkeypatch.setattr(events, "_WIDE", 1)
    got = [
        resolve(
            dag.rules,
            dag.state_sets,
            dag.ours.get,
            _chain_index(dag),
            rejected=frozenset(dag.rejected),
        )
        for dag in dags
    ]
    assert [state for state, _ in got] == [state for state, _ in default]


def _stale_fork(
    version: str, members: int, changed: int, swap: bool, older_changed: bool = False
) -> Dag:
    """A room where `members` users joined, and a fork where the first `changed` of them
    sent a new member event (citing their old one, which the stale side still holds), a
    few of them leaving; `swap` lists the newer state set first. `older_changed`: the last
    member changed their member event twice on the stale side, so that side has a
    conflicted event the other does not cite, whose chain holds an event of neither set."""
    b = DagBuilder(version, random.Random(0))
    state: dict[StateKey, str] = {}
    creator = "@creator:b"
    create_content: dict[str, Any] = {"room_version": version}
    if not b.rules.implicit_room_creator:
        create_content["creator"] = creator
    last = b.add("m.room.create", creator, "", create_content, state, [], 1)
    assert last is not None
    for etype, skey, content in (
        ("m.room.member", creator, {"membership": "join"}),
        # (v12+: creators are above power levels, and not listed in them.)
        (
            "m.room.power_levels",
            "",
            {"users": {} if b.rules.privileged_creators else {creator: 100}},
        ),
        ("m.room.join_rules", "", {"join_rule": "public"}),
    ):
        got = b.add(etype, creator, skey, content, state, [last], 2)
        assert got is not None
        last = got
    users = [f"@u{i}:b" for i in range(members)]
    for ts, u in enumerate(users, 3):
        got = b.add("m.room.member", u, u, {"membership": "join"}, state, [last], ts)
        assert got is not None
        last = got
    stale, fresh = dict(state), dict(state)
    if older_changed:
        u = users[-1]
        for n in range(2):
            content = {"membership": "join", "displayname": f"old {n}"}
            got = b.add("m.room.member", u, u, content, stale, [last], 2 + members + n)
            assert got is not None
    for ts, u in enumerate(users[:changed], 3 + members):
        content = {"membership": "leave"} if ts % 5 == 0 else {"membership": "join", "n": ts}
        got = b.add("m.room.member", u, u, content, fresh, [last], ts)
        assert got is not None
        last = got
    b.dag.state_sets = [fresh, stale] if swap else [stale, fresh]
    return b.dag


@pytest.mark.parametrize("version", ["2", "10", "12"])
@pytest.mark.parametrize("swap", [False, True])
def test_stale_fork_with_a_chain_index_agrees_with_synapse(
    version: str, swap: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given an auth chain index, a stale fork's newer events cite every conflicted event
    of the older set, and the union and intersection of their chains are taken apart
    (`v2._union_and_intersection`); the answer is Synapse's, either set first."""
    dag = _stale_fork(version, members=80, changed=50, swap=swap)
    taken = []
    real = events.Events.closure_citing

    def spy(
        self: events.Events, roots: set[str], covered: set[str]
    ) -> tuple[set[str], set[str]] | None:
        got = real(self, roots, covered)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(events.Events, "closure_citing", spy)
    state, _ = resolve(dag.rules, dag.state_sets, dag.ours.get, _chain_index(dag))
    assert any(taken)
    assert state == synapse_resolve(dag)
    assert state == ours_resolve(dag)[0]


@pytest.mark.parametrize("version", ["2", "10", "12"])
@pytest.mark.parametrize("swap", [False, True])
def test_fork_changed_on_both_sides_with_a_chain_index_agrees(version: str, swap: bool) -> None:
    """When the newer events do not cite every conflicted event of the older set, the
    chains are merged in full: the same state and the same auth difference as the walk."""
    dag = _stale_fork(version, members=80, changed=50, swap=swap, older_changed=True)
    indexed = resolve(dag.rules, dag.state_sets, dag.ours.get, _chain_index(dag))
    walked = ours_resolve(dag)
    assert indexed == walked
    assert walked[1].auth_difference > 0
    assert indexed[0] == synapse_resolve(dag)
