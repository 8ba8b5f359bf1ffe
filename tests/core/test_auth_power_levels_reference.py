"""Rule 10 (9 in v8-v11) against a literal reading of it.

`check_power_levels` skips work where the outcome cannot depend on it (levels read only when
a value is not an integer, pairs of equal or identical values, maps that hold the same
levels, the caller's `PowerLevels` reused). `_reference` below reads the rule step by step
with none of that; both must give the same answer, the same rejection (code, rule and
reason) included, on random contents of every room version.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.auth.common import CREATE_KEY, POWER_LEVELS_KEY, is_valid_user_id, reject
from worker.core.auth.create import creators
from worker.core.auth.power_levels import (
    NAMED_DEFAULTS,
    PowerLevels,
    check_power_levels,
    parse_level,
)
from worker.core.events import Event, StateKey
from worker.core.outcomes import Rejection
from worker.core.versions import RoomRules, rules_for


def _levels(value: Any, rules: RoomRules) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {k: lv for k, v in value.items() if (lv := parse_level(v, rules)) is not None}


def _reference(event: Event, auth_events: dict[StateKey, Event]) -> Rejection | None:
    """Rule 10, step by step, every level parsed and every map compared entry by entry."""
    rules = event.rules
    content = event.content
    for name in NAMED_DEFAULTS:
        if name in content and parse_level(content[name], rules) is None:
            return reject(
                "bad_power_levels", "m.room.power_levels/1", f"content.{name} is not an integer."
            )
    maps = ("events", "notifications") if rules.limit_notifications_power_levels else ("events",)
    for name in maps:
        if name in content:
            value = content[name]
            if not isinstance(value, dict) or any(
                parse_level(v, rules) is None for v in value.values()
            ):
                return reject(
                    "bad_power_levels",
                    "m.room.power_levels/2",
                    f"content.{name} must be an object whose values are integers.",
                )
    if "users" in content:
        users = content["users"]
        if not isinstance(users, dict) or any(
            not is_valid_user_id(k) or parse_level(v, rules) is None for k, v in users.items()
        ):
            return reject(
                "bad_power_levels",
                "m.room.power_levels/3",
                "content.users must map valid user IDs to integers.",
            )
    users = content.get("users")
    users = users if isinstance(users, dict) else {}
    if rules.privileged_creators:
        create = auth_events.get(CREATE_KEY)
        if create is not None:
            for creator in sorted(creators(create)):
                if creator in users:
                    return reject(
                        "creator_in_power_levels",
                        "m.room.power_levels/4",
                        f"Room creator {creator} must not appear in content.users.",
                    )
    current = auth_events.get((POWER_LEVELS_KEY[0], event.state_key or ""))
    if current is None:
        return None
    sender_level = PowerLevels.from_auth_events(rules, auth_events).user_level(event.sender)
    old_content, new_content = current.content, content
    for name in NAMED_DEFAULTS:
        old = parse_level(old_content.get(name), rules) if name in old_content else None
        new = parse_level(new_content.get(name), rules) if name in new_content else None
        if old == new:
            continue
        if (old is not None and old > sender_level) or (new is not None and new > sender_level):
            return reject(
                "insufficient_power",
                "m.room.power_levels/6",
                f"Changing {name} needs a power level of at least the old and new values.",
            )
    for name in maps:
        olds = _levels(old_content.get(name), rules)
        news = _levels(new_content.get(name), rules)
        for key in sorted(olds.keys() | news.keys()):
            old, new = olds.get(key), news.get(key)
            if old == new:
                continue
            if old is not None and old > sender_level:
                return reject(
                    "insufficient_power",
                    "m.room.power_levels/7",
                    f"Changing {name}[{key!r}] from {old} is above the sender's level.",
                )
            if new is not None and new > sender_level:
                return reject(
                    "insufficient_power",
                    "m.room.power_levels/8",
                    f"Setting {name}[{key!r}] to {new} is above the sender's level.",
                )
    olds = _levels(old_content.get("users"), rules)
    news = _levels(users, rules)
    for user in sorted(olds.keys() | news.keys()):
        old, new = olds.get(user), news.get(user)
        if old == new:
            continue
        if user != event.sender and old is not None and old >= sender_level:
            return reject(
                "insufficient_power",
                "m.room.power_levels/9",
                f"Cannot change the level of {user}, who is not below the sender.",
            )
        if new is not None and new > sender_level:
            return reject(
                "insufficient_power",
                "m.room.power_levels/10",
                f"Cannot give {user} a level above the sender's.",
            )
    return None


# Levels as every version may meet them: mostly integers (small ones are shared objects,
# big ones are not) so that contents often pass rules 10.1-10.3, then booleans, numeric and
# other strings, floats, and values that are no level; few distinct ones, so that old and
# new contents often hold equal values of different types (`true` and 1, 1.0 and 1).
_INTS = st.sampled_from([0, 1, 50, 100, 101, 2**40, 2**53 - 1])
_OTHERS = st.sampled_from(
    [True, False, 1.0, 50.0, 2.5, float("nan"), float("inf"), "50", " 1", "+1", "x", None, [1]]
)
_VALUES = st.one_of(_INTS, _INTS, _INTS, _OTHERS)
_USERS = st.sampled_from(["@alice:x", "@bob:x", "@carol:x", "@dan:x", "bad"])
_MAPS = st.one_of(
    st.dictionaries(st.sampled_from(["m.room.name", "m.room.topic", "room"]), _VALUES, max_size=3),
    st.none(),
    st.just(1),
)
_USER_MAPS = st.one_of(
    st.dictionaries(_USERS, _VALUES, max_size=4),
    st.dictionaries(_USERS, _INTS, max_size=4),
    st.none(),
)
_CONTENT_KEYS = [*NAMED_DEFAULTS, "events", "notifications", "users"]


@st.composite
def _content(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(_CONTENT_KEYS), unique=True, max_size=6)):
        if key == "users":
            out[key] = draw(_USER_MAPS)
        elif key in ("events", "notifications"):
            out[key] = draw(_MAPS)
        else:
            out[key] = draw(_VALUES)
    return out


def _event(rules: RoomRules, eid: str, etype: str, sender: str, content: Any) -> Event:
    pdu = {
        "room_id": "!r:x",
        "type": etype,
        "state_key": "",
        "sender": sender,
        "content": content,
        "auth_events": [],
        "prev_events": [],
        "depth": 1,
        "origin_server_ts": 1,
    }
    return Event(pdu, eid, rules)


@settings(max_examples=3000, deadline=None)
@given(
    version=st.sampled_from([str(v) for v in range(1, 13)]),
    old=_content(),
    change=_content(),
    mode=st.sampled_from(["fresh", "shared", "copied", "none"]),
    sender=_USERS,
    creator=_USERS,
)
def test_rule_10_reads_as_the_literal_rule(
    version: str, old: dict[str, Any], change: dict[str, Any], mode: str, sender: str, creator: str
) -> None:
    rules = rules_for(version)
    assert rules is not None
    if mode == "shared":
        # The new content shares the old one's objects where unchanged (as clients send it).
        new = {**old, **change}
    elif mode == "copied":
        # Equal objects, none shared.
        new = {k: (dict(v) if isinstance(v, dict) else v) for k, v in old.items()} | change
    else:
        new = change
    create = _event(rules, "$create", "m.room.create", creator, {"creator": creator})
    auth_events: dict[StateKey, Event] = {CREATE_KEY: create}
    if mode != "none":
        auth_events[POWER_LEVELS_KEY] = _event(rules, "$pl0", "m.room.power_levels", creator, old)
    event = _event(rules, "$pl1", "m.room.power_levels", sender, new)
    expected = _reference(event, auth_events)
    assert check_power_levels(event, auth_events) == expected
    power = PowerLevels.from_auth_events(rules, auth_events)
    assert check_power_levels(event, auth_events, power) == expected


_EQUAL_BUT_NOT_SAME = [
    (True, 1),
    (1, True),
    (1.0, 1),
    (1, 1.0),
    ("1", 1),
    (False, 0),
    (2**40, 2**40),
]


@pytest.mark.parametrize("version", [str(v) for v in range(1, 13)])
@pytest.mark.parametrize(("old", "new"), _EQUAL_BUT_NOT_SAME)
@pytest.mark.parametrize("where", ["ban", "events", "users"])
def test_equal_values_of_other_types_are_read_as_levels(
    version: str, old: Any, new: Any, where: str
) -> None:
    """Values that compare equal in Python but are different levels in some versions (or
    no level at all) are told apart as the literal rule tells them apart."""
    rules = rules_for(version)
    assert rules is not None
    base: dict[str, Any] = {"users": {"@alice:x": 100}}

    def content(value: Any) -> dict[str, Any]:
        if where == "ban":
            return base | {"ban": value}
        if where == "events":
            return base | {"events": {"m.room.name": value}}
        return {"users": {"@alice:x": 100, "@bob:x": value}}

    create = _event(rules, "$create", "m.room.create", "@alice:x", {"creator": "@alice:x"})
    auth_events: dict[StateKey, Event] = {
        CREATE_KEY: create,
        POWER_LEVELS_KEY: _event(rules, "$pl0", "m.room.power_levels", "@alice:x", content(old)),
    }
    # A sender of level 0 (users_default), so that any change to 1 is refused.
    event = _event(rules, "$pl1", "m.room.power_levels", "@carol:x", content(new))
    assert check_power_levels(event, auth_events) == _reference(event, auth_events)
