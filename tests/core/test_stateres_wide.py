"""The paths state resolution takes only for big inputs give the same answers as the others.

Set-at-a-time auth-chain walks (`events._WIDE`), the mainline ordering by single-key sorts
(`ordering._MANY_TO_SORT`) and the reuse of what the walks saw (`v2._MANY`) start at sizes
that the random rooms of the differential tests never reach. Lowering the thresholds makes
every resolution take them; the answers must not change (those of the default paths are
checked against Synapse in `test_stateres_differential.py`).
"""

from __future__ import annotations

import random

import pytest
from test_stateres_harness import ours_resolve, random_forked_dag

from worker.core.stateres import events, ordering, v2

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
