"""The inspector's pure part: conflicts at merges, forks, layout and the SVG, without services."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from tests.fixtures.builder import RoomBuilder
from worker.core.events import Event, StateKey
from worker.inspect.model import EventInfo, RoomDump, forks, layout, merge_conflicts, summarize
from worker.inspect.svg import event_count, render

SVG = "{http://www.w3.org/2000/svg}"


def _info(b: RoomBuilder, eid: str, outcome: str = "accepted", code: str = "") -> EventInfo:
    return EventInfo(b.event(eid), "new", outcome, code, code and "because", True, None)


def _room() -> tuple[RoomBuilder, dict[str, str], dict[StateKey, str], dict[StateKey, str]]:
    """create/join/pl/join_rules/join bob, then a fork: alice's topic vs bob's leave."""
    b = RoomBuilder("10")
    b.create("alice"); b.join("alice")  # noqa: E702
    b.power_levels("alice", users={"alice": 100}); b.join_rules("alice", "public")  # noqa: E702
    base = b.join("bob")
    side = b.fork()
    ids = {"base": base, "topic": b.topic("alice"), "leave": side.leave("bob")}
    ids["merge"] = b.message("alice", prev=[ids["topic"], ids["leave"]])
    ids["rejected"] = b.message("mallory", apply=False)
    return b, ids, dict(b.state), dict(side.state)


def _dump(b: RoomBuilder, ids: Mapping[str, str], resolved: Mapping[StateKey, str],
          sides: list[dict[StateKey, str]]) -> RoomDump:
    infos = [_info(b, e) for e in b.events if e != ids["rejected"]]
    infos.append(_info(b, ids["rejected"], "rejected", "not_in_room"))
    return RoomDump(
        room_id=b.room_id, version="10", extremities=(ids["merge"],), events=tuple(infos),
        current_state=resolved, merge_inputs={ids["merge"]: (sides, resolved)},
    )


def test_conflicts_at_a_merge_name_the_candidates_and_the_winner() -> None:
    b, ids, main, side = _room()
    resolved = {**main, ("m.room.member", "@bob:test"): ids["leave"]}
    dump = _dump(b, ids, resolved, [main, side])
    summary = summarize(dump)
    [merge] = summary.merges
    by_key = {c.key: c for c in merge.conflicts}
    assert set(by_key) == {("m.room.member", "@bob:test"), ("m.room.topic", "")}
    bob = by_key[("m.room.member", "@bob:test")]
    assert bob.candidates == tuple(sorted([ids["base"], ids["leave"]]))
    assert bob.winner == ids["leave"]
    topic = by_key[("m.room.topic", "")]
    assert topic.candidates == ("", ids["topic"]) and topic.winner == ids["topic"]
    assert merge.resets == ()  # bob's leave replaced his join: no reset
    assert summary.forks == [ids["base"]]  # the rejected message does not make a fork
    assert summary.members == {"join": ["@alice:test"], "leave": ["@bob:test"]}
    assert [i.event_id for i in summary.refused] == [ids["rejected"]]


def test_a_join_lost_without_an_event_is_flagged_as_a_state_reset() -> None:
    b, ids, main, side = _room()
    reset = dict(main)
    del reset[("m.room.member", "@bob:test")]  # neither side's entry survived
    merge = merge_conflicts(ids["merge"], [main, side], reset,
                            {e: b.event(e) for e in b.events})
    assert [dict(r) for r in merge.resets] == [
        {"kind": "join_removed", "user_id": "@bob:test", "lost": ids["base"], "now": ""}
    ]
    svg = render(_dump(b, ids, reset, [main, side]))
    assert "⚠ state reset" in svg


def test_layout_puts_prev_events_above_and_branches_side_by_side() -> None:
    b, ids, main, side = _room()
    dump = _dump(b, ids, main, [main, side])
    pos = layout(dump)
    assert len(pos) == len(b.events)
    assert pos[ids["topic"]][0] == pos[ids["leave"]][0] == pos[ids["base"]][0] + 1
    assert pos[ids["topic"]][1] != pos[ids["leave"]][1]
    assert pos[ids["merge"]][0] == pos[ids["topic"]][0] + 1
    assert len(set(pos.values())) == len(pos)  # no two boxes in one place
    assert forks(dump) == [ids["base"]]


def test_svg_is_valid_with_one_node_per_event_and_deterministic() -> None:
    b, ids, main, side = _room()
    # An outlier whose prev event is not stored is drawn too (as a root).
    out_id = b.message("carol", prev=[], apply=False)
    pdu = {**b.events[out_id], "prev_events": ["$unknown"]}
    outlier = EventInfo(Event(pdu, out_id, b.rules), "outlier", "outlier", "", "", False, None)
    dump = _dump(b, ids, main, [main, side])
    dump = dataclasses.replace(
        dump, events=(*(i for i in dump.events if i.event_id != out_id), outlier)
    )
    svg = render(dump)
    root = ET.fromstring(svg)
    nodes = [g for g in root.iter(f"{SVG}g") if g.get("class", "").startswith("event ")]
    assert sorted(g.get("data-event-id") or "" for g in nodes) == sorted(b.events)
    assert event_count(svg) == len(b.events)
    titles = {g.get("data-event-id"): g.find(f"{SVG}title") for g in nodes}
    rejected = titles[ids["rejected"]]
    assert rejected is not None and "not_in_room: because" in (rejected.text or "")
    assert render(dump) == svg
