"""Differential test: our state resolution against Synapse's, over random forked DAGs.

`ROOMSERVER_FUZZ_DAGS` DAGs (default 1,200; `make fuzz` sets 100,000) are spread over room
versions 1 (v1), 2, 6, 10, 11 (v2) and 12 (v2.1). Each DAG is resolved three ways: Synapse's
`synapse/state/v1.py` / `v2.py`; ours with our auth rules (the whole stack); and ours with
Synapse's auth rules plugged into the `Authorizer` port (the algorithm alone). All three must
agree on every DAG: there is no excused disagreement.

Some DAGs hold rejected events (`Dag.rejected`): events that failed the auth rules and that
later events use as prev events, and events that passed them on another server, sit in that
server's fork of the state and are rejected here (with the events citing them). Synapse
never admits a previously rejected event into state during resolution, nor reads one as an
auth event, and neither do we (docs/interop.md).
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest
from test_stateres_harness import (
    ours_resolve,
    random_forked_dag,
    synapse_resolve,
)

from worker.core.stateres.events import Events

VERSIONS = ("1", "2", "6", "10", "11", "12")
DAGS = int(os.environ.get("ROOMSERVER_FUZZ_DAGS", "1200"))


# `make fuzz` runs 100,000 DAGs: lift the suite's 300 s timeout in proportion.
@pytest.mark.timeout(max(300, DAGS // 10))
def test_differential_against_synapse() -> None:
    counts: Counter[str] = Counter()
    failures: list[str] = []
    for i in range(DAGS):
        version = VERSIONS[i % len(VERSIONS)]
        seed = i // len(VERSIONS)
        dag = random_forked_dag(random.Random(seed), version)
        theirs = synapse_resolve(dag)
        ours, stats = ours_resolve(dag)
        isolated, _ = ours_resolve(dag, synapse_auth=True)
        counts["conflicted"] += stats.conflicted > 0
        counts["rejected"] += bool(dag.rejected)
        counts["rejected in a state set"] += any(
            eid in dag.rejected for st in dag.state_sets for eid in st.values()
        )
        if ours != isolated:
            failures.append(f"v{version} seed {seed}: our auth rules and Synapse's disagree")
        elif ours != theirs:
            keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            failures.append(f"v{version} seed {seed}: differs on {keys}")
    assert not failures, f"{len(failures)} disagreements:\n" + "\n".join(failures[:20])
    # The generator must actually produce conflicts and rejected events, or this test
    # proves little.
    assert counts["conflicted"] >= 0.8 * DAGS, counts
    assert counts["rejected"] >= 0.2 * DAGS, counts
    assert counts["rejected in a state set"] >= 0.05 * DAGS, counts


def test_generator_exercises_v2_1() -> None:
    """Some generated v12 DAGs resolve differently under v2 and v2.1 (MSC4297 matters)."""
    from worker.core.stateres import SpecAuthorizer
    from worker.core.stateres.v2 import V2Flags, resolve_v2

    differ = 0
    for seed in range(400):
        dag = random_forked_dag(random.Random(seed), "12")
        results = [
            resolve_v2(
                dag.state_sets,
                Events(dag.rules, dag.ours.get, None, dag.rejected),
                SpecAuthorizer(),
                V2Flags(on, on),
            )[0]
            for on in (False, True)
        ]
        differ += results[0] != results[1]
    assert differ > 0
