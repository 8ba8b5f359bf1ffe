"""Power levels: the PowerLevels view and its defaults, and rule 10 (9 in v8-v11)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.auth_rooms import code, room
from tests.fixtures.builder import RoomBuilder
from worker.core.auth import CREATOR_LEVEL, PowerLevels, parse_level
from worker.core.auth.power_levels import _level_map, _same_levels
from worker.core.versions import rules_for

ALL = [str(v) for v in range(1, 13)]
PRE_V6 = [str(v) for v in range(1, 6)]
PRE_V10 = [str(v) for v in range(1, 10)]
V6_PLUS = [str(v) for v in range(6, 13)]
V10_PLUS = ["10", "11", "12"]
PRE_V12 = [str(v) for v in range(1, 12)]


def rules(version: str) -> Any:
    r = rules_for(version)
    assert r is not None
    return r


def current_content(b: RoomBuilder) -> dict[str, Any]:
    content: dict[str, Any] = b.events[b.state[("m.room.power_levels", "")]]["content"]
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in content.items()}


# -- parse_level ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_integers_are_levels(version: str) -> None:
    assert parse_level(50, rules(version)) == 50
    assert parse_level(-3, rules(version)) == -3
    # JSON booleans: not levels from v10; before, `true` is 1 as Synapse reads it.
    boolean = None if rules(version).integer_power_levels else 1
    assert parse_level(True, rules(version)) == boolean
    assert parse_level(None, rules(version)) is None
    assert parse_level([1], rules(version)) is None


@pytest.mark.parametrize("version", PRE_V10)
def test_stringy_levels_before_v10(version: str) -> None:
    r = rules(version)
    for text, value in [("100", 100), ("000100", 100), ("+100", 100), ("-100", -100), (" 42 ", 42)]:
        assert parse_level(text, r) == value
    for text in ["1.5", "1e3", "", "+-1", "ten", "1_000", "٣"]:
        assert parse_level(text, r) is None


@pytest.mark.parametrize("version", PRE_V10)
def test_stringy_level_too_long_for_int_is_not_a_level(version: str) -> None:
    assert parse_level("9" * 5000, rules(version)) is None


@pytest.mark.parametrize("version", V10_PLUS)
def test_no_stringy_levels_from_v10(version: str) -> None:
    assert parse_level("100", rules(version)) is None


@pytest.mark.parametrize("version", PRE_V6)
def test_floaty_levels_before_v6(version: str) -> None:
    assert parse_level(50.57, rules(version)) == 50
    assert parse_level(5.114698e4, rules(version)) == 51146
    assert parse_level(float("inf"), rules(version)) is None


@pytest.mark.parametrize("version", V6_PLUS)
def test_no_floats_from_v6(version: str) -> None:
    assert parse_level(50.0, rules(version)) is None


# -- PowerLevels defaults ---------------------------------------------------------------------


@pytest.mark.parametrize("version", PRE_V12)
def test_defaults_without_power_levels_event(version: str) -> None:
    b = RoomBuilder(version)
    b.create("alice")
    power = PowerLevels.from_auth_events(b.rules, b.state_events())
    assert power.user_level("@alice:test") == 100
    assert power.user_level("@bob:test") == 0
    assert power.required_level("m.room.topic", True) == 50
    assert power.required_level("m.room.message", False) == 0
    assert [power.named(n) for n in ("invite", "kick", "ban", "redact")] == [0, 50, 50, 50]


def test_v12_creators_have_infinite_level() -> None:
    b = RoomBuilder("12")
    b.create("alice", additional_creators=["@bob:test"])
    power = PowerLevels.from_auth_events(b.rules, b.state_events())
    assert power.user_level("@alice:test") == CREATOR_LEVEL
    assert power.user_level("@bob:test") == CREATOR_LEVEL
    assert power.user_level("@carol:test") == 0
    b.power_levels("alice", users={"carol": 2**53 - 1})
    power = PowerLevels.from_auth_events(b.rules, b.state_events())
    assert power.user_level("@carol:test") < power.user_level("@bob:test")


@pytest.mark.parametrize("version", ALL)
def test_power_levels_event_values_and_defaults(version: str) -> None:
    b = room(version, users_default=5, events={"m.room.topic": 20}, events_default=1)
    power = PowerLevels.from_auth_events(b.rules, b.state_events())
    assert power.user_level("@bob:test") == 50
    assert power.user_level("@zed:test") == 5
    assert power.required_level("m.room.topic", True) == 20
    assert power.required_level("m.room.name", True) == 50
    assert power.required_level("m.room.message", False) == 1
    assert power.named("ban") == 50


# -- rule 10 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_first_power_levels_event_is_not_compared(version: str) -> None:
    b = RoomBuilder(version)
    b.create("alice")
    b.join("alice")
    users = {"bob": 100} if version == "12" else {"alice": 100, "bob": 1000}
    assert code(b, b.power_levels("alice", users=users, ban=1000)) is None


@pytest.mark.parametrize("version", ALL)
def test_power_levels_needs_the_required_level(version: str) -> None:
    b = room(version)
    content = current_content(b)
    failure = b.check(b.power_levels("carol", apply=False, **content))
    assert failure is not None and failure.code == "insufficient_power" and failure.rule == "room/8"


@pytest.mark.parametrize("version", V10_PLUS)
@pytest.mark.parametrize("field", ["users_default", "ban", "state_default", "invite"])
def test_named_levels_must_be_integers_from_v10(version: str, field: str) -> None:
    b = room(version)
    content = current_content(b) | {field: "50"}
    assert code(b, b.power_levels("alice", apply=False, **content)) == "bad_power_levels"


@pytest.mark.parametrize("version", PRE_V10)
def test_stringy_named_levels_accepted_before_v10(version: str) -> None:
    b = room(version)
    content = current_content(b) | {"ban": " 50 ", "kick": "+050"}
    assert code(b, b.power_levels("alice", apply=False, **content)) is None


@pytest.mark.parametrize("version", PRE_V10)
def test_unusable_named_level_rejected_before_v10(version: str) -> None:
    b = room(version)
    content = current_content(b) | {"ban": "fifty"}
    assert code(b, b.power_levels("alice", apply=False, **content)) == "bad_power_levels"


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize("field", ["events", "notifications"])
def test_events_and_notifications_must_map_to_integers(version: str, field: str) -> None:
    b = room(version)
    content = current_content(b) | {field: {"x": "abc"}}
    eid = b.power_levels("alice", apply=False, **content)
    if field == "notifications" and version in PRE_V6:
        assert code(b, eid) is None  # v1-v5 do not look at notifications at all
    else:
        assert code(b, eid) == "bad_power_levels"
    assert code(b, b.power_levels("alice", apply=False, **(current_content(b) | {field: 3}))) == (
        None if field == "notifications" and version in PRE_V6 else "bad_power_levels"
    )


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize("users", [{"bob": "x"}, {"not-a-user": 5}, {"@nocolon": 5}, {"bob": None}])
def test_users_must_map_user_ids_to_integers(version: str, users: dict[str, Any]) -> None:
    b = room(version)
    content = current_content(b)
    content["users"] = content["users"] | {
        (f"@{k}:test" if k.isalpha() else k): v for k, v in users.items()
    }
    # `add`, not `power_levels`: the latter would turn bare names into user IDs
    eid = b.add("m.room.power_levels", "alice", content, state_key="", apply=False)
    assert code(b, eid) == "bad_power_levels"


def test_v12_creators_must_not_be_in_users() -> None:
    b = RoomBuilder("12")
    b.create("alice", additional_creators=["@bob:test"])
    b.join("alice")
    assert code(b, b.power_levels("alice", users={"alice": 100}, apply=False)) == (
        "creator_in_power_levels"
    )
    assert code(b, b.power_levels("alice", users={"bob": 100}, apply=False)) == (
        "creator_in_power_levels"
    )
    assert code(b, b.power_levels("alice", users={"carol": 100})) is None


@pytest.mark.parametrize("version", PRE_V12)
def test_creator_may_be_in_users_before_v12(version: str) -> None:
    b = RoomBuilder(version)
    b.create("alice")
    b.join("alice")
    assert code(b, b.power_levels("alice", users={"alice": 100})) is None


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize(
    ("change", "ok"),
    [
        ({"ban": 50}, True),  # ban 50 -> 50 is no change... bob (50) may set it
        ({"ban": 40}, True),  # changed, old 50 and new 40 <= 50
        ({"ban": 60}, False),  # new above bob
        ({"kick": None}, True),  # removed: old value 50 <= 50
        ({"redact": 51}, False),
        ({"state_default": None, "events_default": 50}, True),
    ],
)
def test_named_level_changes(version: str, change: dict[str, Any], ok: bool) -> None:
    b = room(version, ban=50, kick=50, events={"m.room.power_levels": 50})
    content = current_content(b)
    for k, v in change.items():
        if v is None:
            content.pop(k, None)
        else:
            content[k] = v
    assert (code(b, b.power_levels("bob", apply=False, **content)) is None) is ok


@pytest.mark.parametrize("version", ALL)
def test_named_level_above_sender_cannot_be_removed(version: str) -> None:
    b = room(version, invite=75, events={"m.room.power_levels": 50})
    content = current_content(b)
    del content["invite"]
    failure = b.check(b.power_levels("bob", apply=False, **content))
    assert failure is not None and failure.rule == "m.room.power_levels/6"


@pytest.mark.parametrize("version", ALL)
def test_events_entry_changes(version: str) -> None:
    b = room(version, events={"m.room.power_levels": 50, "m.room.name": 75, "m.room.topic": 10})
    content = current_content(b)
    # adding / changing within the sender's level
    ok = content | {"events": content["events"] | {"m.room.topic": 50, "x.y": 20}}
    assert code(b, b.power_levels("bob", apply=False, **ok)) is None
    # changing an entry above the sender
    high = content | {"events": content["events"] | {"m.room.name": 20}}
    failure = b.check(b.power_levels("bob", apply=False, **high))
    assert failure is not None and failure.rule == "m.room.power_levels/7"
    # removing an entry above the sender
    removed = content | {
        "events": {k: v for k, v in content["events"].items() if k != "m.room.name"}
    }
    assert code(b, b.power_levels("bob", apply=False, **removed)) == "insufficient_power"
    # adding an entry above the sender
    added = content | {"events": content["events"] | {"x.y": 51}}
    failure = b.check(b.power_levels("bob", apply=False, **added))
    assert failure is not None and failure.rule == "m.room.power_levels/8"


@pytest.mark.parametrize("version", ALL)
def test_notifications_changes(version: str) -> None:
    b = room(version, events={"m.room.power_levels": 50}, notifications={"room": 75})
    content = current_content(b) | {"notifications": {"room": 20}}
    result = code(b, b.power_levels("bob", apply=False, **content))
    # v6+ compare notifications like events; v1-v5 ignore them
    assert result == (None if version in PRE_V6 else "insufficient_power")


@pytest.mark.parametrize("version", ALL)
def test_users_entry_changes(version: str) -> None:
    b = room(version, users={"carol": 10, "dave": 50}, events={"m.room.power_levels": 50})
    content = current_content(b)

    def with_users(**users: Any) -> dict[str, Any]:
        new = dict(content["users"])
        for k, v in users.items():
            if v is None:
                new.pop(f"@{k}:test", None)
            else:
                new[f"@{k}:test"] = v
        return content | {"users": new}

    # raise someone below to the sender's level; lower oneself; add a user
    assert code(b, b.power_levels("bob", apply=False, **with_users(carol=50))) is None
    assert code(b, b.power_levels("bob", apply=False, **with_users(bob=10))) is None
    assert code(b, b.power_levels("bob", apply=False, **with_users(erin=50))) is None
    # 10.9: change or remove a user at the sender's level
    failure = b.check(b.power_levels("bob", apply=False, **with_users(dave=10)))
    assert failure is not None and failure.rule == "m.room.power_levels/9"
    assert code(b, b.power_levels("bob", apply=False, **with_users(dave=None))) == (
        "insufficient_power"
    )
    # 10.10: give someone (or oneself) more than the sender has
    failure = b.check(b.power_levels("bob", apply=False, **with_users(carol=51)))
    assert failure is not None and failure.rule == "m.room.power_levels/10"
    assert code(b, b.power_levels("bob", apply=False, **with_users(bob=51))) == "insufficient_power"


def test_v12_creator_may_set_any_level() -> None:
    b = room("12", events={"m.room.power_levels": 100})
    content = current_content(b) | {"users": {"@bob:test": 2**53 - 1}, "ban": 2**53 - 1}
    assert code(b, b.power_levels("alice", apply=False, **content)) is None


@pytest.mark.parametrize("version", ALL)
def test_power_levels_with_other_state_key_is_not_compared(version: str) -> None:
    # Rule 10 applies to the type, but "the previous power levels event" is the one of the
    # same state key, as Synapse reads it (docs/interop.md): a state key other than "" has
    # none, so only rules 8 and 10.1-10.4 apply.
    b = room(version)
    eid = b.state_event("m.room.power_levels", "x", {"users": {"@carol:test": 99}}, "bob")
    assert code(b, eid) is None


_LEVEL_VALUES = st.one_of(
    st.integers(-3, 3),
    st.booleans(),
    st.sampled_from([1.0, 0.0, 2.5, "1", " 2", "x"]),
    st.none(),
)
_LEVEL_OBJECTS = st.one_of(
    st.dictionaries(st.sampled_from(["@a:x", "@b:x", "m.room.name"]), _LEVEL_VALUES, max_size=3),
    st.none(),
    st.integers(0, 1),
    st.lists(st.integers(0, 1), max_size=1),
)


@settings(max_examples=500, deadline=None)
@given(
    version=st.sampled_from([str(v) for v in range(1, 13)]),
    old=_LEVEL_OBJECTS,
    new=_LEVEL_OBJECTS,
    copy=st.booleans(),
)
def test_same_levels_means_the_same_parsed_levels(
    version: str, old: Any, new: Any, copy: bool
) -> None:
    """The shortcut of rules 10.7-10.10 (skip maps that cannot differ) never skips a map
    whose levels differ, `true == 1` and `1.0 == 1` included."""
    rules = rules_for(version)
    assert rules is not None
    if copy and isinstance(old, dict):
        # Equal objects with values of other types that compare equal.
        new = {k: (float(v) if type(v) is int else v) for k, v in old.items()}
    if _same_levels(old, new):
        assert _level_map(old, rules) == _level_map(new, rules)
    if isinstance(old, dict) and set(map(type, old.values())) <= {int}:
        assert _same_levels(old, dict(old))
