"""`worker.core.joins`: what a joining server holds residents' answers to (no services)."""

from __future__ import annotations

import copy
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.builder import RoomBuilder
from worker.core.joins import (
    auth_order,
    check_room_events,
    check_template,
    fill_template,
    stripped_state,
)
from worker.core.outcomes import Rejection
from worker.core.versions import rules_for

RULES = rules_for("10")
assert RULES is not None
JOINER = "@bob:hs.test"


def room(members: int = 5) -> RoomBuilder:
    b = RoomBuilder("10", real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"@alice:test": 100})
    b.join_rules("alice", "public")
    for i in range(members):
        b.join(f"m{i}")
    return b


def template(b: RoomBuilder, **changes: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "type": "m.room.member", "room_id": b.room_id, "sender": JOINER, "state_key": JOINER,
        "content": {"membership": "join"}, "depth": 10, "origin_server_ts": 1,
        "prev_events": list(b.latest), "auth_events": [b.state[("m.room.create", "")]],
        "signatures": {"test": {"ed25519:x": "sig"}}, "hashes": {"sha256": "x"},
    }
    pdu.update(changes)
    return pdu


def answer(b: RoomBuilder) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    state = [copy.deepcopy(b.events[e]) for e in b.state.values()]
    return state, []


def test_a_good_template_is_cleaned_and_filled_with_our_content() -> None:
    b = room()
    checked = check_template(template(b), RULES, room_id=b.room_id, user_id=JOINER,
                             membership="join")
    assert isinstance(checked, dict)
    assert "signatures" not in checked and "hashes" not in checked
    pdu = fill_template(checked, origin="hs.test", origin_server_ts=5,
                        content={"displayname": "Bob", "membership": "leave"},
                        event_id_hint="", rules=RULES)
    # The template's membership wins over ours.
    assert pdu["content"] == {"displayname": "Bob", "membership": "join"}
    assert (pdu["origin"], pdu["origin_server_ts"]) == ("hs.test", 5)


def test_templates_for_something_else_are_refused() -> None:
    b = room()
    cases = {
        "wrong_room": template(b, room_id="!other:test"),
        "wrong_user": template(b, state_key="@eve:hs.test"),
        "bad_template": template(b, type="m.room.message"),
        "wrong_membership": template(b, content={"membership": "invite"}),
    }
    for code, pdu in cases.items():
        got = check_template(pdu, RULES, room_id=b.room_id, user_id=JOINER, membership="join")
        assert isinstance(got, Rejection) and got.code == code, (code, got)
    assert isinstance(check_template([], RULES, room_id=b.room_id, user_id=JOINER,
                                     membership="join"), Rejection)


def test_an_honest_answer_is_ordered_auth_events_first() -> None:
    b = room(20)
    state, chain = answer(b)
    random.Random(1).shuffle(state)
    snap = check_room_events(state, chain, RULES, b.room_id, max_events=100)
    assert not isinstance(snap, Rejection)
    assert sorted(snap.state_ids) == sorted(b.state.values())
    position = {e.event_id: i for i, e in enumerate(snap.events)}
    for e in snap.events:
        assert all(position[a] < position[e.event_id] for a in e.auth_event_ids)


def test_bad_answers_are_refused_with_their_reason() -> None:
    b = room()
    state, chain = answer(b)

    def spoiled(change: Any) -> str:
        s = copy.deepcopy(state)
        change(s)
        got = check_room_events(s, chain, RULES, b.room_id, max_events=100)
        assert isinstance(got, Rejection)
        return got.code

    def forge(s: list[dict[str, Any]]) -> None:
        next(p for p in s if p["type"] == "m.room.join_rules")["content"]["sneaked"] = True

    def drop_power(s: list[dict[str, Any]]) -> None:
        s.remove(next(p for p in s if p["type"] == "m.room.power_levels"))

    def drop_create(s: list[dict[str, Any]]) -> None:
        s.remove(next(p for p in s if p["type"] == "m.room.create"))

    assert spoiled(forge) == "bad_content_hash"
    assert spoiled(drop_power) == "missing_auth_events"
    assert spoiled(drop_create) == "no_create_event"
    assert spoiled(lambda s: s.append("not an event")) == "not_object"
    got = check_room_events(state, chain, RULES, b.room_id, max_events=3)
    assert isinstance(got, Rejection) and got.code == "oversized_state"


def test_an_event_failing_its_own_auth_refuses_the_answer() -> None:
    b = room()
    # A stranger's state event: cited auth events exist, but the rules refuse it.
    b.add("m.room.topic", "mallory", {"topic": "mine"}, state_key="")
    state, chain = answer(b)
    got = check_room_events(state, chain, RULES, b.room_id, max_events=100)
    assert isinstance(got, Rejection)


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_auth_order_does_not_depend_on_input_order(rnd: random.Random) -> None:
    b = room(8)
    events = [b.event(e) for e in b.state.values()]
    first = auth_order(events)
    rnd.shuffle(events)
    second = auth_order(events)
    assert not isinstance(first, Rejection) and not isinstance(second, Rejection)
    assert [e.event_id for e in first] == [e.event_id for e in second]


def test_stripped_state_keeps_four_keys_in_a_fixed_order() -> None:
    b = room(0)
    stripped = stripped_state(b.event(e) for e in reversed(list(b.state.values())))
    assert [s["type"] for s in stripped] == sorted(s["type"] for s in stripped)
    assert set(stripped[0]) == {"type", "state_key", "sender", "content"}
