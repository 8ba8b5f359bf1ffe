"""Golden state-resolution scenarios, built with `RoomBuilder` (readable event IDs).

`python -m tests.golden.scenarios` rewrites `tests/golden/*.json` from these definitions:
each file holds the PDUs, the state sets (as lists of event IDs), the `expect`ed entries
written here by hand with the reason they hold, and the full `expected_state` snapshot.
`test_golden.py` resolves every file and compares against both; it also checks that the
files are exactly what this module generates, so they cannot drift apart.

The classic scenarios follow the ideas of Synapse's `tests/state/test_v2.py` (ban vs power
levels, topic reset, join rule evasion, ...), rebuilt here on our builder. The MSC4297
scenarios are built once for room version 11 (state resolution v2) and once for room version
12 (v2.1), with the same readable IDs, to show where the two algorithms answer differently.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.builder import RoomBuilder
from worker.core.events import Event, StateKey
from worker.core.stateres import resolve

HERE = Path(__file__).parent


@dataclass
class Scenario:
    description: str
    builder: RoomBuilder
    state_sets: list[dict[StateKey, str]]
    # (type, state_key) -> the event ID it must resolve to, or None for "absent".
    expect: dict[StateKey, str | None] = field(default_factory=dict)


def _id(b: RoomBuilder, stem: str) -> str:
    """A readable event ID in the room version's style (v1/v2 IDs carry a server)."""
    return f"${stem}:test" if b.rules.reference_pairs else f"${stem}"


def _base(version: str, bob: int = 50, creators: tuple[str, ...] = ()) -> RoomBuilder:
    """create (alice), alice joins, power levels, public join rules, bob joins."""
    b = RoomBuilder(version)
    if creators:
        b.create("alice", additional_creators=[f"@{c}:test" for c in creators])
    else:
        b.create("alice")
    b.join("alice")
    users = {"bob": bob} if b.rules.privileged_creators else {"alice": 100, "bob": bob}
    b.power_levels("alice", users=users)
    b.join_rules("alice", "public")
    b.join("bob")
    return b


def ban_vs_pl() -> Scenario:
    b = _base("2")
    a, c = b.fork(), b.fork()
    a.ban("alice", "bob")
    c.power_levels("bob", users={"alice": 100, "bob": 50})
    return Scenario(
        "Alice bans Bob while Bob, concurrently, sends power levels. Alice's ban sorts first "
        "(power 100 > 50); Bob's power levels then fail because Bob is banned.",
        b,
        [a.state, c.state],
        {("m.room.member", "@bob:test"): "$ban_bob:test", ("m.room.power_levels", ""): "$pl:test"},
    )


def v1_ban_vs_pl() -> Scenario:
    b = _base("1")
    a, c = b.fork(), b.fork()
    a.ban("alice", "bob")
    c.power_levels("bob", users={"alice": 100, "bob": 50})
    return Scenario(
        "Room v1, the ban-vs-power-levels DAG: v1 has no power ordering. Power levels go "
        "first, by ascending depth: Alice's older one enters R, then Bob's is checked "
        "against R, which holds no membership for Bob (his key is conflicted, and conflicted "
        "entries are left out of R), so it fails. Then Bob's membership: his join, then the "
        "deeper ban, which Alice may send.",
        b,
        [a.state, c.state],
        {
            ("m.room.member", "@bob:test"): "$ban_bob:test",
            ("m.room.power_levels", ""): "$pl:test",
        },
    )


def v1_join_rule_evasion() -> Scenario:
    b = _base("1")
    a, c = b.fork(), b.fork()
    a.join_rules("alice", "invite")
    c.join("evelyn")
    return Scenario(
        "Room v1, the join-rule-evasion DAG: in v1 a key present in only one state set is "
        "not a conflict, so Evelyn's join is never re-checked and stays, although the room "
        "became invite-only (v2 drops it; see join_rule_evasion).",
        b,
        [a.state, c.state],
        {
            ("m.room.join_rules", ""): "$join_rules_2:test",
            ("m.room.member", "@evelyn:test"): "$join_evelyn:test",
        },
    )


def topic_reset() -> Scenario:
    b = _base("2")
    b.topic("alice", "T1", stem="t1")
    a, c = b.fork(), b.fork()
    a.topic("bob", "T2", stem="t2")
    c.ban("alice", "bob")
    return Scenario(
        "Bob changes the topic while Alice bans him. The ban is a power event and is applied "
        "first; Bob's topic then fails, so the topic goes back to Alice's T1.",
        b,
        [a.state, c.state],
        {("m.room.topic", ""): "$t1:test", ("m.room.member", "@bob:test"): "$ban_bob:test"},
    )


def join_rule_evasion() -> Scenario:
    b = _base("2")
    a, c = b.fork(), b.fork()
    a.join_rules("alice", "invite")
    c.join("evelyn")
    return Scenario(
        "Alice makes the room invite-only while Evelyn joins. The join rules (power event) "
        "win and Evelyn's join is checked against them and dropped.",
        b,
        [a.state, c.state],
        {
            ("m.room.join_rules", ""): "$join_rules_2:test",
            ("m.room.member", "@evelyn:test"): None,
        },
    )


def offtopic_power_levels() -> Scenario:
    b = _base("2")
    b.join("charlie")
    a = b.fork()
    a.power_levels("bob", users={"alice": 100, "bob": 50, "charlie": 50}, event_id=_id(a, "pl_bob"))
    a.power_levels("alice", users={"alice": 100, "bob": 50, "charlie": 0}, event_id=_id(a, "pl_alice"))
    return Scenario(
        "Bob gives Charlie 50, then Alice (citing Bob's power levels) sets Charlie back to 0, "
        "against a stale fork that has seen neither. The auth DAG orders pl -> pl_bob -> "
        "pl_alice, so Alice's power levels hold.",
        b,
        [a.state, b.state],
        {("m.room.power_levels", ""): "$pl_alice:test"},
    )


def topic_basic() -> Scenario:
    b = _base("2")
    b.topic("alice", "T1", stem="t1")
    a, c = b.fork(), b.fork()
    a.topic("alice", "T2", stem="t2")
    a.power_levels("alice", users={"alice": 100, "bob": 0}, event_id=_id(a, "pa2"))
    c.power_levels("bob", users={"alice": 100, "bob": 50}, event_id=_id(c, "pb"))
    c.topic("bob", "T3", stem="t3")
    return Scenario(
        "Alice demotes Bob while Bob re-sends power levels and sets a topic. Alice's power "
        "levels sort first and win; Bob's power levels and topic then fail; T2 stays.",
        b,
        [a.state, c.state],
        {("m.room.power_levels", ""): "$pa2:test", ("m.room.topic", ""): "$t2:test"},
    )


def mainline_sort() -> Scenario:
    b = _base("2")
    b.topic("alice", "T1", stem="t1")
    a, c = b.fork(), b.fork()
    a.topic("alice", "T2", stem="t2")
    a.power_levels("alice", users={"alice": 100, "bob": 0}, event_id=_id(a, "pa2"))
    a.topic("alice", "T3", stem="t3")
    c.power_levels("bob", users={"alice": 100, "bob": 50}, event_id=_id(c, "pb"))
    c.topic("alice", "T4", stem="t4")
    return Scenario(
        "T4 is Alice's latest topic by timestamp, but it cites Bob's power levels (which "
        "lose) whose mainline position is older than that of T3, which cites the winning "
        "power levels. Mainline order puts T3 last, so T3 is the topic.",
        b,
        [a.state, c.state],
        {("m.room.power_levels", ""): "$pa2:test", ("m.room.topic", ""): "$t3:test"},
    )


def concurrent_joins() -> Scenario:
    b = _base("2")
    a, c, d = b.fork(), b.fork(), b.fork()
    a.join("carol")
    c.join("dave")
    d.join("erin")
    d.leave("erin")
    return Scenario(
        "Three users join on three forks (one leaves again). A key missing from some state "
        "sets is conflicted in v2; every membership passes on its own merits.",
        b,
        [a.state, c.state, d.state],
        {
            ("m.room.member", "@carol:test"): "$join_carol:test",
            ("m.room.member", "@dave:test"): "$join_dave:test",
            ("m.room.member", "@erin:test"): "$leave_erin:test",
        },
    )


def v12_creators() -> Scenario:
    b = _base("12", bob=0, creators=("bob",))
    b.join("carol")
    b.power_levels("alice", users={"carol": 100}, event_id=_id(b, "pl_carol"))
    a, c = b.fork(), b.fork()
    a.kick("carol", "bob")
    a.power_levels("carol", users={"carol": 100, "dave": 50}, event_id=_id(a, "pl_c"))
    c.power_levels("bob", users={"carol": 0}, event_id=_id(c, "pl_b"))
    c.topic("bob", "creator topic", stem="topic_b")
    return Scenario(
        "Room v12: Bob is an additional creator, Carol holds power level 100. Bob's power "
        "levels sort before all of Carol's events (a creator outranks any level) and demote "
        "her; her kick of Bob (who cannot be kicked by anyone but a creator anyway) and her "
        "power levels fail.",
        b,
        [a.state, c.state],
        {
            ("m.room.power_levels", ""): "$pl_b",
            ("m.room.member", "@bob:test"): "$join_bob",
            ("m.room.topic", ""): "$topic_b",
        },
    )


def _msc4297_empty_start(version: str) -> tuple[RoomBuilder, list[dict[StateKey, str]]]:
    b = RoomBuilder(version)
    b.create("alice")
    b.join("alice")
    users = {} if b.rules.privileged_creators else {"alice": 100}
    b.power_levels("alice", users=users, state_default=0)
    b.join_rules("alice", "public")
    b.join("carol")
    b.topic("alice", "old", stem="topic_old")
    base = dict(b.state)
    a = b.fork()
    a.topic("carol", "carol's", stem="topic_carol")
    a.leave("carol")
    stale = dict(base)
    stale[("m.room.member", "@carol:test")] = a.state[("m.room.member", "@carol:test")]
    return b, [a.state, stale]


def msc4297_empty_start(version: str) -> Callable[[], Scenario]:
    def build() -> Scenario:
        b, sets = _msc4297_empty_start(version)
        v21 = b.rules.state_res.value == "v2.1"
        topic = "$topic_carol" if v21 else "$topic_old"
        why = (
            "v2.1 starts the auth checks from an empty state, so Carol's topic is judged by "
            "its own auth events (Carol joined) and, being the later one, wins."
            if v21
            else "v2 starts from the unconflicted state, whose later `leave` of Carol vetoes "
            "her earlier topic: the topic falls back to Alice's."
        )
        return Scenario(
            "MSC4297, empty starting state. Fork A: Carol sets the topic, then leaves. The other "
            "state set has Carol's leave but the old topic, so the leave is unconflicted. " + why,
            b,
            sets,
            {("m.room.topic", ""): topic, ("m.room.member", "@carol:test"): "$leave_carol"},
        )

    return build


def msc4297_subgraph(version: str) -> Callable[[], Scenario]:
    def build() -> Scenario:
        b = RoomBuilder(version)
        b.create("alice")
        b.join("alice")
        v21 = b.rules.privileged_creators
        users: dict[str, Any] = {"bob": 50} if v21 else {"alice": 100, "bob": 50}
        pl_rule = {"events": {"m.room.power_levels": 50}}
        b.power_levels("alice", users=users, events_default=0, **pl_rule, event_id=_id(b, "pl0"))
        b.join_rules("alice", "public")
        b.join("bob")
        b.power_levels("bob", users=users, events_default=10, **pl_rule, event_id=_id(b, "pl1"))
        b.power_levels("alice", users=users, events_default=20, **pl_rule, event_id=_id(b, "pl2"))
        b.join("dave")
        b.power_levels("alice", users=users, events_default=30, **pl_rule, event_id=_id(b, "pl3"))
        stale = dict(b.state)
        stale[("m.room.power_levels", "")] = "$pl1"
        pl = "$pl3" if b.rules.state_res.value == "v2.1" else "$pl1"
        why = (
            "v2.1 adds the conflicted state subgraph (pl2, on the auth path pl3 -> pl2 -> pl1) "
            "to the full conflicted set, so pl1, pl2, pl3 are ordered by the auth DAG and pl3 "
            "holds."
            if pl == "$pl3"
            else "v2 misses pl2 (every state set's auth chain has it, via Dave's join), so "
            "nothing orders pl1 before pl3: Alice's pl3 sorts first by power, Bob's older pl1 "
            "is applied after it and passes: a state reset to old power levels."
        )
        return Scenario(
            "MSC4297, conflicted subgraph. Power levels pl1 (Bob) -> pl2 (Alice) -> Dave "
            "joins -> pl3 (Alice); one state set still holds pl1 but has Dave's join. " + why,
            b,
            [b.state, stale],
            {("m.room.power_levels", ""): pl},
        )

    return build


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "ban_vs_pl": ban_vs_pl,
    "v1_ban_vs_pl": v1_ban_vs_pl,
    "v1_join_rule_evasion": v1_join_rule_evasion,
    "topic_reset": topic_reset,
    "join_rule_evasion": join_rule_evasion,
    "offtopic_power_levels": offtopic_power_levels,
    "topic_basic": topic_basic,
    "mainline_sort": mainline_sort,
    "concurrent_joins": concurrent_joins,
    "v12_creators": v12_creators,
    "msc4297_empty_start_v2": msc4297_empty_start("11"),
    "msc4297_empty_start_v2_1": msc4297_empty_start("12"),
    "msc4297_subgraph_v2": msc4297_subgraph("11"),
    "msc4297_subgraph_v2_1": msc4297_subgraph("12"),
}


def key_name(key: StateKey) -> str:
    return f"{key[0]}|{key[1]}"


def render(s: Scenario) -> dict[str, Any]:
    """The JSON document of a scenario (its `expected_state` resolved by our code, and
    checked against the hand-written `expect` before it is written)."""
    b = s.builder
    views = {eid: Event(pdu, eid, b.rules) for eid, pdu in b.events.items()}
    state, _ = resolve(b.rules, s.state_sets, views.get)
    for key, want in s.expect.items():
        if state.get(key) != want:
            raise AssertionError(f"{s.description}: {key} resolved to {state.get(key)}, want {want}")
    return {
        "description": s.description,
        "room_version": b.version,
        "events": list(b.events.values()),
        "state_sets": [sorted(st.values()) for st in s.state_sets],
        "rejected": [],
        "expect": {key_name(k): v for k, v in sorted(s.expect.items())},
        "expected_state": [[t, k, e] for (t, k), e in sorted(state.items())],
    }


def dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main() -> int:
    for name, build in SCENARIOS.items():
        (HERE / f"{name}.json").write_text(dump(render(build())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
