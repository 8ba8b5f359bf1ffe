"""Power levels: the `PowerLevels` view with the spec's defaults, and rule 10.

Spec: https://spec.matrix.org/latest/rooms/v12/#authorisation-rules (rule 10 and the note on
room creators), https://spec.matrix.org/latest/server-server-api/#definitions (required power
level, invite/kick/ban/redact levels and their defaults), and the `m.room.power_levels` event
schema (https://spec.matrix.org/latest/client-server-api/#mroompower_levels).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from worker.core.auth.common import (
    CREATE_KEY,
    POWER_LEVELS_KEY,
    AuthEvents,
    is_valid_user_id,
    reject,
)
from worker.core.auth.create import creators
from worker.core.events import Event
from worker.core.outcomes import Rejection
from worker.core.versions import RoomRules

# v12+: room creators have an infinitely high power level. Any integer above the largest value
# canonical JSON allows (2**53 - 1, enforced in v6+) behaves as infinity in every comparison.
CREATOR_LEVEL = 2**64

# The integer-valued top-level properties, with their defaults when the property is absent or
# when the room has no m.room.power_levels event at all (state_default is 50 in both cases).
NAMED_DEFAULTS: Mapping[str, int] = {
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
}

# v1-v9 accept integers written as strings: optional surrounding whitespace, one optional
# sign, base-10 digits with any leading zeros ("v1-stringy-power-levels" in the spec).
_STRINGY_INT = re.compile(r"[ \t\n\r\f\v]*[+-]?[0-9]+[ \t\n\r\f\v]*", re.ASCII)


def parse_level(value: Any, rules: RoomRules) -> int | None:
    """A power level value as an integer, or None when the version does not accept it.

    v10+: only JSON integers. v1-v9: also strings holding an integer. v1-v5 (no strict
    canonical JSON): also finite floats, truncated toward zero ("v1-floaty-power-levels").
    JSON booleans: never levels in v10+; in v1-v9 `true` is 1 and `false` 0, as Synapse
    reads them (Python's `int`), since reading them otherwise splits rooms (docs/interop.md).
    """
    if isinstance(value, bool):
        return None if rules.integer_power_levels else int(value)
    if isinstance(value, int):
        return value
    if rules.integer_power_levels:
        return None
    if isinstance(value, str):
        if not _STRINGY_INT.fullmatch(value):
            return None
        try:
            return int(value.strip(" \t\n\r\f\v"))
        except ValueError:
            # More digits than Python converts (sys.int_info.str_digits_check_threshold):
            # far outside any level a JSON integer could hold, so not a level.
            return None
    if isinstance(value, float) and not rules.strict_canonical_json and math.isfinite(value):
        return math.trunc(value)
    return None


def _level_map(value: Any, rules: RoomRules) -> dict[str, int]:
    """A `users`/`events`/`notifications` object as parsed levels, skipping unusable entries.

    Only used on power level events that are already in the room; those passed rule 10.1-10.3,
    so nothing is skipped in practice.
    """
    if not isinstance(value, dict):
        return {}
    out: dict[str, int] = {}
    for key, raw in value.items():
        level = parse_level(raw, rules)
        if level is not None:
            out[key] = level
    return out


def _same_levels(old: Any, new: Any) -> bool:
    """Whether `_level_map` surely reads the same levels from `old` and `new`: neither is
    an object, or both are equal objects of plain integers (equality alone would not do:
    `true == 1` and `1.0 == 1`, which some versions read as different levels)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return not isinstance(old, dict) and not isinstance(new, dict)
    return (
        old == new
        and set(map(type, old.values())) <= _INT_ONLY
        and set(map(type, new.values())) <= _INT_ONLY
    )


_INT_ONLY = frozenset({int})
# Marks a property missing from a content (any JSON value, None included, may be present).
_ABSENT: Any = object()


class PowerLevels:
    """Who may do what, according to the power levels and create events in force.

    Built from the auth events by lookups only. Every default comes from the spec: with no
    m.room.power_levels event the creator(s) have 100 (v1-v11) and everyone else 0.
    """

    __slots__ = ("_content", "_create", "_creators", "_has_event", "_rules", "_users")

    _users: Mapping[str, Any]
    _creators: frozenset[str] | None

    def __init__(self, rules: RoomRules, power_levels: Event | None, create: Event | None) -> None:
        self._rules = rules
        self._has_event = power_levels is not None
        self._content: Mapping[str, Any] = power_levels.content if power_levels else {}
        # Parsed per lookup, not up front: a big room's `users` can hold thousands of entries
        # and state resolution builds this view for every event it checks.
        users = self._content.get("users")
        self._users = users if isinstance(users, dict) else {}
        # The creators are worked out on first use: most checks (v1-v11 with a power levels
        # event) never ask, and state resolution builds this view for every event it checks.
        self._create = create
        self._creators = None

    def _creator_ids(self) -> frozenset[str]:
        found = self._creators
        if found is None:
            found = creators(self._create) if self._create is not None else frozenset()
            self._creators = found
        return found

    @classmethod
    def from_auth_events(cls, rules: RoomRules, auth_events: AuthEvents) -> PowerLevels:
        """The view the rules use: two lookups, whatever the size of `auth_events`."""
        return cls(rules, auth_events.get(POWER_LEVELS_KEY), auth_events.get(CREATE_KEY))

    def named(self, name: str) -> int:
        """`users_default`, `events_default`, `state_default`, `ban`, `kick`, `redact`, `invite`."""
        # An absent property takes its default (server-server API "Definitions"); so does an
        # unusable one, which only a power levels event accepted by another server could hold.
        level = parse_level(self._content.get(name), self._rules)
        return NAMED_DEFAULTS[name] if level is None else level

    def user_level(self, user_id: str) -> int:
        """The user's power level (the user-level part of the spec's definitions)."""
        # v12+: creators outrank everyone, whatever the power levels event says.
        if self._rules.privileged_creators and user_id in self._creator_ids():
            return CREATOR_LEVEL
        # With a power levels event: `users`, else `users_default` (the creator gets nothing
        # special in v1-v11 once power levels exist; createRoom lists them in `users`).
        if self._has_event:
            found = parse_level(self._users.get(user_id), self._rules)
            return self.named("users_default") if found is None else found
        # v1-v11 without a power levels event: the creator has 100, everyone else 0.
        return 100 if user_id in self._creator_ids() else 0

    def required_level(self, event_type: str, is_state: bool) -> int:
        """The *required power level* of an event type: `events`, else the state/event default."""
        # "The event type is either listed explicitly in the events section or given by either
        # state_default or events_default depending on if the event is a state event or not."
        events = self._content.get("events")
        if isinstance(events, dict) and event_type in events:
            level = parse_level(events[event_type], self._rules)
            if level is not None:
                return level
        return self.named("state_default" if is_state else "events_default")


def _check_structure(event: Event) -> Rejection | None:
    """Rules 10.1 to 10.3: every level in the new content is usable as an integer.

    v10+ spell this out (integers only). v1-v9 state it only for `users` (10.1 there) but
    compare every other property numerically in 10.3-10.5; a value that is not a level at all
    (e.g. "fifty", an object) cannot be compared, so we reject it rather than guess.
    """
    rules = event.rules
    content = event.content
    # Rule names use the v12 numbering (10.1 named levels, 10.2 events/notifications, 10.3
    # users); v10-v11 number them 9.1-9.3, and v1-v9 have only the `users` step (10.1/9.1).
    # 10.1 (v10+; v1-v9 by the comparison argument above): the named levels are integers.
    for name in NAMED_DEFAULTS:
        # (An integer is a level in every version: only other values need parsing.)
        if (
            name in content
            and type(value := content[name]) is not int
            and parse_level(value, rules) is None
        ):
            return reject(
                "bad_power_levels", "m.room.power_levels/1", f"content.{name} is not an integer."
            )
    # 10.2 (v10+; v6-v9 likewise): `events` and `notifications` map to integers. In v1-v5
    # `notifications` is never compared (MSC2209 came with v6), so it is not checked either.
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
    # 10.3 (all versions): `users` maps valid user IDs to integers (v1-v9: or to strings and,
    # v1-v5, floats that parse as levels). An invalid key could never match a sender, but
    # the spec rejects it so that every server reads the same table.
    if "users" in content:
        users = content["users"]
        if not isinstance(users, dict) or not _valid_users(users, rules):
            return reject(
                "bad_power_levels",
                "m.room.power_levels/3",
                "content.users must map valid user IDs to integers.",
            )
    return None


def _valid_users(users: dict[Any, Any], rules: RoomRules) -> bool:
    """Rule 10.3: every key of `users` is a valid user ID and every value a level.

    Tested a property at a time, in C where it can be: a big room's `users` holds
    thousands of entries, and every power levels event repeats them.
    """
    if not all(map(is_valid_user_id, users)):
        return False
    values = users.values()
    # (Integers are levels in every version; anything else is parsed.)
    return set(map(type, values)) <= _INT_ONLY or all(
        parse_level(v, rules) is not None for v in values
    )


def check_power_levels(
    event: Event, auth_events: AuthEvents, power: PowerLevels | None = None
) -> Rejection | None:
    """Rule 10 (rule 9 in v8-v11, 10 elsewhere): changes to m.room.power_levels.

    `power`, when given, is `PowerLevels.from_auth_events(event.rules, auth_events)`, which
    the caller built already.
    """
    rules = event.rules
    bad = _check_structure(event)
    if bad is not None:
        return bad
    users = event.content.get("users")
    users = users if isinstance(users, dict) else {}
    # 10.4 (v12+): creators cannot be given a level, so they cannot be demoted either; their
    # power comes from the create event alone, which nobody can change.
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
    # 10.5 (all versions; 10.2 in v1-v9): the first power levels event of a room is not
    # compared with anything: it may give anyone any level (createRoom sends it right after
    # the creator joins, and only the creator can send it: rule 8, state_default 50 < 100).
    # "Previous" is read as Synapse reads it, the event of the same state key: one with a
    # state key other than "" has none among its auth events, so it is never compared.
    # The spec compares it with the room's power levels; the two readings split rooms
    # (docs/interop.md).
    current = auth_events.get((POWER_LEVELS_KEY[0], event.state_key or ""))
    if current is None:
        return None
    # The sender's level comes from the current power levels, never from the new event:
    # otherwise an event could grant itself the power it needs.
    if power is None:
        power = PowerLevels.from_auth_events(rules, auth_events)
    sender_level = power.user_level(event.sender)
    old_content = current.content
    new_content = event.content

    # 10.6 (10.3 in v1-v9): each named level added, changed or removed may be neither above
    # the sender's level before nor after. An absent value is not replaced by its default:
    # "removed" checks only the old value, "added" only the new one (as Synapse and ruma do).
    # Values are compared as levels, so "50" -> 50 in v1-v9 is no change.
    for name in NAMED_DEFAULTS:
        old_value = old_content.get(name, _ABSENT)
        new_value = new_content.get(name, _ABSENT)
        # The same value (or absent from both) is the same level; so are equal integers.
        # Only other pairs are parsed.
        if old_value is new_value or (
            type(old_value) is int and type(new_value) is int and old_value == new_value
        ):
            continue
        old = parse_level(old_value, rules) if old_value is not _ABSENT else None
        new = parse_level(new_value, rules) if new_value is not _ABSENT else None
        if old == new:
            continue
        if (old is not None and old > sender_level) or (new is not None and new > sender_level):
            return reject(
                "insufficient_power",
                "m.room.power_levels/6",
                f"Changing {name} needs a power level of at least the old and new values.",
            )

    # 10.7 and 10.8 (10.4 and 10.5 in v1-v9): the same for each entry of `events` and (v6+)
    # `notifications`. Keys are visited in sorted order only so that the reported entry is
    # deterministic; the verdict does not depend on the order.
    maps = ("events", "notifications") if rules.limit_notifications_power_levels else ("events",)
    for name in maps:
        old_map, new_map = old_content.get(name), new_content.get(name)
        # (The same object, or absent from both, holds the same levels.)
        if old_map is new_map or _same_levels(old_map, new_map):
            continue
        olds = _level_map(old_map, rules)
        news = _level_map(new_map, rules)
        for key in sorted(olds.keys() | news.keys()):
            old, new = olds.get(key), news.get(key)
            if old == new:
                continue
            # 10.7: changed or removed entries: the current value is not above the sender.
            if old is not None and old > sender_level:
                return reject(
                    "insufficient_power",
                    "m.room.power_levels/7",
                    f"Changing {name}[{key!r}] from {old} is above the sender's level.",
                )
            # 10.8: added or changed entries: the new value is not above the sender.
            if new is not None and new > sender_level:
                return reject(
                    "insufficient_power",
                    "m.room.power_levels/8",
                    f"Setting {name}[{key!r}] to {new} is above the sender's level.",
                )

    # 10.9 and 10.10 (10.6 and 10.7 in v1-v9): user levels (none changed when both objects
    # hold the same integers, the usual case when another property changes).
    old_users = old_content.get("users")
    if old_users is new_content.get("users") or _same_levels(old_users, new_content.get("users")):
        return None
    olds = _level_map(old_users, rules)
    news = _level_map(users, rules)
    for user in sorted(olds.keys() | news.keys()):
        old, new = olds.get(user), news.get(user)
        if old == new:
            continue
        # 10.9: changed or removed entries of others: the current value is strictly below the
        # sender's, so that peers cannot demote each other. The sender's own entry is exempt:
        # anyone may lower themselves (10.10 still stops them raising it).
        if user != event.sender and old is not None and old >= sender_level:
            return reject(
                "insufficient_power",
                "m.room.power_levels/9",
                f"Cannot change the level of {user}, who is not below the sender.",
            )
        # 10.10: added or changed entries: the new value is not above the sender's.
        if new is not None and new > sender_level:
            return reject(
                "insufficient_power",
                "m.room.power_levels/10",
                f"Cannot give {user} a level above the sender's.",
            )
    # 10.11 (10.8 in v1-v9): otherwise, allow.
    return None
