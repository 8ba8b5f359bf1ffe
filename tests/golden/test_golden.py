"""Golden DAG scenarios: every `tests/golden/*.json` resolves to its committed answer.

Three checks per file: the hand-written `expect` entries hold, the full `expected_state`
snapshot matches, and the file is byte-for-byte what `scenarios.py` generates (so the
definitions, with their reasons, stay the source of truth). Scenarios in room versions with
carried event IDs (v1, v2) are also resolved by Synapse, which must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import make_event_from_dict

from tests.golden import scenarios
from worker.core.events import Event, StateKey
from worker.core.stateres import resolve
from worker.core.versions import rules_for

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("*.json"))


def _load(path: Path) -> tuple[dict[str, Any], dict[str, Event], list[dict[StateKey, str]]]:
    doc = json.loads(path.read_text())
    rules = rules_for(doc["room_version"])
    assert rules is not None
    events = {p["event_id"]: Event(p, p["event_id"], rules) for p in doc["events"]}
    sets = [{events[e].state_tuple: e for e in ids} for ids in doc["state_sets"]]
    return doc, events, sets  # type: ignore[return-value]


def test_every_scenario_has_a_file() -> None:
    assert {p.stem for p in FILES} == set(scenarios.SCENARIOS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    doc, events, sets = _load(path)
    rules = rules_for(doc["room_version"])
    assert rules is not None
    state, stats = resolve(rules, sets, events.get, rejected=frozenset(doc["rejected"]))
    for name, want in doc["expect"].items():
        etype, skey = name.split("|", 1)
        assert state.get((etype, skey)) == want, (name, doc["description"])
    assert [[t, k, e] for (t, k), e in sorted(state.items())] == doc["expected_state"]
    assert stats.conflicted > 0


@pytest.mark.parametrize("name", sorted(scenarios.SCENARIOS))
def test_files_are_generated(name: str) -> None:
    want = scenarios.dump(scenarios.render(scenarios.SCENARIOS[name]()))
    assert (HERE / f"{name}.json").read_text() == want, "run python -m tests.golden.scenarios"


@pytest.mark.parametrize(
    "path",
    [p for p in FILES if json.loads(p.read_text())["room_version"] in ("1", "2")],
    ids=lambda p: p.stem,
)
def test_synapse_agrees(path: Path) -> None:
    from tests.core.test_stateres_harness import Dag, synapse_resolve

    doc, events, sets = _load(path)
    rules = rules_for(doc["room_version"])
    assert rules is not None
    rv = KNOWN_ROOM_VERSIONS[doc["room_version"]]
    dag = Dag(doc["room_version"], rules, room_id=doc["events"][0]["room_id"])
    dag.ours = events
    dag.syn = {e: make_event_from_dict(dict(p), rv) for e, p in ((p["event_id"], p) for p in doc["events"])}
    dag.state_sets = sets
    assert synapse_resolve(dag) == dict(
        ((t, k), e) for t, k, e in doc["expected_state"]
    )


def test_msc4297_scenarios_differ_between_v2_and_v2_1() -> None:
    """The point of the MSC4297 pairs: same DAG shape and IDs, different answers."""
    for stem in ("msc4297_empty_start", "msc4297_subgraph"):
        v2 = json.loads((HERE / f"{stem}_v2.json").read_text())
        v21 = json.loads((HERE / f"{stem}_v2_1.json").read_text())
        assert v2["room_version"] == "11" and v21["room_version"] == "12"
        assert v2["expect"].keys() == v21["expect"].keys()
        assert v2["expect"] != v21["expect"]
