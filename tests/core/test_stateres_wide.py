"""The paths state resolution takes only for big inputs give the same answers as the others.

Set-at-a-time auth-chain walks (`events._WIDE`), the mainline ordering by single-key sorts
(`ordering._MANY_TO_SORT`) and the reuse of what the walks saw (`v2._MANY`) start at sizes
that the random rooms of the differential tests never reach. Lowering the thresholds makes
every resolution take them; the answers must not change (those of the default paths are
checked against Synapse in `test_stateres_differential.py`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from test_stateres_harness import Dag, ours_resolve, random_forked_dag

from worker.core.stateres import events, ordering, resolve, v2

VERSIONS = [str(v) for v in range(1, 13)]


@pytest.mark.parametrize("version", VERSIONS)
def test_big_input_paths_agree(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dags = [random_forked_dag(random.Random(seed), version) for seed in range(60)]
    default = [ours_resolve(dag) for dag in dags]
    monkeypatch.setattr(events, "_WIDE", 1)
    monkeypatch.setattr(ordering, "_MANY_TO_SORT", 0)
    monkeypatch.setattr(v2, "_MANY", 0)
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
