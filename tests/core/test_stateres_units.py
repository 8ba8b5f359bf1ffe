"""Unit tests of the state-resolution machinery: sorting, mainline, separation, power,
rejected events, v1's rules, and the errors a caller can get."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from tests.fixtures.builder import RoomBuilder
from worker.core.events import Event, StateKey
from worker.core.stateres import ResolutionStats, UnknownEvent, resolve
from worker.core.stateres.events import Events
from worker.core.stateres.ordering import (
    CREATOR_POWER,
    Mainline,
    lexicographic_topo_sort,
    sender_power,
)
from worker.core.stateres.split import separate_v2
from worker.core.stateres.v1 import separate_v1


def _views(b: RoomBuilder) -> dict[str, Event]:
    return {eid: b.event(eid) for eid in b.events}


def _events(b: RoomBuilder, rejected: frozenset[str] = frozenset()) -> Events:
    return Events(b.rules, _views(b).get, None, rejected)


def _resolve(
    b: RoomBuilder, sets: list[Mapping[StateKey, str]], rejected: frozenset[str] = frozenset()
) -> tuple[dict[StateKey, str], ResolutionStats]:
    return resolve(b.rules, sets, _views(b).get, rejected=rejected)


def test_topo_sort_emits_auth_events_first_then_smallest_key() -> None:
    graph = {"c": {"a"}, "b": {"a"}, "a": set(), "d": set()}
    order = lexicographic_topo_sort(graph, key=lambda n: {"a": 3, "b": 2, "c": 1, "d": 4}[n])
    # a and d are ready first; a (3) < d (4); then c (1) and b (2) become ready before d.
    assert order == ["a", "c", "b", "d"]


def test_topo_sort_is_a_topological_order_for_any_key() -> None:
    graph = {str(i): {str(j) for j in range(i) if (i * j) % 3 == 1} for i in range(12)}
    order = lexicographic_topo_sort(graph, key=lambda n: (-int(n), n))
    pos = {n: i for i, n in enumerate(order)}
    assert sorted(order) == sorted(graph)
    assert all(pos[e] < pos[n] for n, edges in graph.items() for e in edges)


def test_separate_v2_treats_missing_keys_as_conflicted_and_v1_does_not() -> None:
    a = {("t", ""): "$1", ("m", "x"): "$2"}
    b = {("t", ""): "$1", ("m", "x"): "$3", ("n", ""): "$4"}
    unconflicted, conflicted = separate_v2([a, b])
    assert unconflicted == {("t", ""): "$1"}
    assert conflicted == {("m", "x"): ["$2", "$3"], ("n", ""): ["$4"]}
    unconflicted1, conflicted1 = separate_v1([a, b])
    assert unconflicted1 == {("t", ""): "$1", ("n", ""): "$4"}
    assert conflicted1 == {("m", "x"): ["$2", "$3"]}


def test_mainline_positions() -> None:
    b = RoomBuilder("10")
    b.create("alice")
    b.join("alice")
    p0 = b.power_levels("alice", users={"alice": 100})
    early = b.topic("alice", "early")
    side = b.fork()
    p1 = b.power_levels("alice", users={"alice": 100, "bob": 10})
    late = b.topic("alice", "late")
    p2 = side.power_levels("alice", users={"alice": 100, "carol": 10})
    off = side.topic("alice", "off mainline")
    mainline = Mainline(_events(b), p1)
    ev = b.event
    assert mainline.position(ev(late)) == 0  # cites p1 = P0
    assert mainline.position(ev(early)) == 1  # cites p0 = P1
    # `off` cites p2, which is not on the mainline of p1; p2 cites p0 (position 1).
    assert mainline.position(ev(off)) == 1
    assert mainline.position(ev(p2)) == 1
    assert mainline.position(ev(p0)) == float("inf")  # cites no power levels at all


def test_v12_creators_outrank_every_power_level() -> None:
    b = RoomBuilder("12")
    b.create("alice", additional_creators=["@bob:test"])
    b.join("alice")
    b.power_levels("alice", users={"carol": 100})
    b.join_rules("alice", "public")
    bob = b.join("bob")
    carol = b.join("carol")
    topic = b.topic("carol")
    events = _events(b)
    assert sender_power(events, b.event(bob)) == CREATOR_POWER
    assert sender_power(events, b.event(topic)) == 100
    assert sender_power(events, b.event(carol)) == 100


def test_v1_v10_creator_has_100_without_power_levels() -> None:
    b = RoomBuilder("10")
    b.create("alice")
    join = b.join("alice")
    assert sender_power(_events(b), b.event(join)) == 100
    b11 = RoomBuilder("11")
    b11.create("alice")
    join11 = b11.join("alice")
    assert sender_power(_events(b11), b11.event(join11)) == 100


def _room(version: str) -> RoomBuilder:
    b = RoomBuilder(version)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "public")
    return b


def test_no_conflict_returns_the_state_and_empty_stats() -> None:
    b = _room("10")
    state, stats = _resolve(b, [b.state, dict(b.state)])
    assert state == b.state
    assert stats == ResolutionStats()


def test_rejected_auth_events_are_not_used_as_fallback() -> None:
    """Spec "Iterative auth checks": a key missing from the state falls back to the event's
    own auth event only if that one was not rejected.

    Bob joins, names the room, sets the topic. Both state sets hold his room name (so his join
    is in every auth chain, hence not in the full conflicted set) but neither holds his
    membership; only one holds his topic. The topic can then only lean on his join.
    """
    b = _room("10")
    b.power_levels("alice", users={"alice": 100}, state_default=0)
    join = b.join("bob")
    b.state_event("m.room.name", "", {"name": "bob's"}, "bob")
    without = dict(b.state)
    a = b.fork()
    topic = a.topic("bob", "bob's topic")
    sets = [dict(a.state), without]
    for s in sets:
        del s[("m.room.member", "@bob:test")]
    state, _ = _resolve(b, sets)
    assert state.get(("m.room.topic", "")) == topic
    state, _ = _resolve(b, sets, rejected=frozenset({join}))
    assert ("m.room.topic", "") not in state


def test_previously_rejected_events_never_enter_state() -> None:
    """A conflicted event rejected before is not admitted again, as in Synapse (the spec's
    text would check it again; docs/interop.md)."""
    b = _room("10")
    base = dict(b.state)
    a = b.fork()
    topic = a.topic("alice", "was rejected once")
    state, _ = _resolve(b, [a.state, base])
    assert state[("m.room.topic", "")] == topic
    state, stats = _resolve(b, [a.state, base], rejected=frozenset({topic}))
    assert ("m.room.topic", "") not in state
    assert stats.auth_checked == 0


def test_a_rejected_state_event_is_not_read_as_an_auth_event() -> None:
    """Where the unconflicted state holds a rejected event, the checks read the event's own
    auth event for that key instead (Synapse's iterative auth checks)."""
    b = _room("10")
    b.power_levels("alice", users={"alice": 100, "bob": 50})
    join = b.join("bob")
    base = dict(b.state)
    a = b.fork()
    topic = a.topic("bob", "bob's topic")
    sets = [dict(a.state), base]
    state, _ = _resolve(b, sets)
    assert state[("m.room.topic", "")] == topic
    # Bob's join is unconflicted but rejected here, and his topic cites it: no membership.
    state, _ = _resolve(b, sets, rejected=frozenset({join}))
    assert ("m.room.topic", "") not in state
    assert state[("m.room.member", "@bob:test")] == join


def test_unknown_state_event_raises() -> None:
    b = _room("10")
    a = b.fork()
    a.topic("alice")
    views = _views(b)
    missing = dict(a.state)
    missing[("m.room.topic", "")] = "$nowhere"
    with pytest.raises(UnknownEvent) as info:
        resolve(b.rules, [missing, b.state], views.get)
    assert info.value.event_id == "$nowhere"


def test_v1_power_levels_chain_stops_at_first_refusal() -> None:
    """v1 step 2: ascending depth; each next power levels event must pass against R."""
    b = RoomBuilder("1")
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100, "bob": 50})
    b.join_rules("alice", "public")
    b.join("bob")
    a, c = b.fork(), b.fork()
    demote = a.power_levels("alice", users={"alice": 100, "bob": 0})
    # Deeper, but Bob lost the power to send it once Alice's (shallower) event is in R.
    c.topic("bob", "padding")
    bob_pl = c.power_levels("bob", users={"alice": 100, "bob": 50, "carol": 50})
    assert b.events[bob_pl]["depth"] > b.events[demote]["depth"]
    state, stats = _resolve(b, [a.state, c.state])
    assert state[("m.room.power_levels", "")] == demote
    # Only the two power levels: in v1 a key missing from one state set (the topic) is not
    # a conflict.
    assert stats.conflicted == 2


def test_v1_missing_key_is_not_a_conflict() -> None:
    b = RoomBuilder("1")
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "invite")
    a = b.fork()
    # Not allowed (invite-only), but v1 never checks an unconflicted entry.
    join = a.join("mallory")
    state, stats = _resolve(b, [a.state, b.state])
    assert state[("m.room.member", "@mallory:test")] == join
    assert stats.conflicted == 0


def test_v1_normal_events_take_the_deepest_that_passes() -> None:
    """v1 step 5: highest depth first, but only among events allowed against R."""
    b = RoomBuilder("1")
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    a, c = b.fork(), b.fork()
    shallow = a.topic("alice", "shallow")
    c.message("alice")
    deep = c.topic("alice", "deep")
    state, _ = _resolve(b, [a.state, c.state])
    assert state[("m.room.topic", "")] == deep
    # Mallory never joined: her deeper topic fails, and the shallower one is taken.
    d = b.fork()
    d.message("alice")
    d.message("alice")
    d.topic("mallory", "deepest")
    state, _ = _resolve(b, [a.state, d.state])
    assert state[("m.room.topic", "")] == shallow


def _members_room(members: int, changed: int) -> tuple[RoomBuilder, list[dict[StateKey, str]]]:
    b = _room("10")
    for i in range(members):
        b.join(f"u{i}")
    stale = dict(b.state)
    for i in range(changed):
        b.member(f"u{i}", f"u{i}", "join", displayname=f"new name {i}")
    return b, [stale, dict(b.state)]


def test_work_follows_the_conflicted_set_not_the_state() -> None:
    """Fast by design: with the same conflicts, a room 10x bigger costs no more lookups
    and no more auth checks (splitting the state maps is the only pass over all of it)."""
    counts = []
    for members in (100, 1_000):
        b, sets = _members_room(members, changed=5)
        views = _views(b)
        looked_up: list[str] = []

        def lookup(eid: str, views: dict[str, Event] = views, log: list[str] = looked_up) -> Event | None:
            log.append(eid)
            return views.get(eid)

        state, stats = resolve(b.rules, sets, lookup)
        assert state == sets[1]
        counts.append((len(looked_up), stats))
    assert counts[0] == counts[1]
    assert counts[0][1].auth_checked == 10
