"""Shared vocabulary of the auth rules: state keys, identifier helpers, the rejection helper.

Nothing here is a rule by itself; the rule modules (`create`, `member`, `power_levels`,
`third_party`, `other`, `selection`) cite the spec steps they implement.

Rule names (`Rejection.rule`) follow the numbering of the room version 12 text of the spec
(https://spec.matrix.org/latest/rooms/v12/#authorisation-rules), stable for anything that
exists in more than one version (earlier versions number some top-level rules one lower):

- top-level rules: "room/<n>" (room/2 room ID, room/4 m.federate, room/6 sender joined,
  room/7 m.room.third_party_invite, room/8 required power level, room/9 `@` state keys);
- within a rule family, "<family>/<sub-step>": "m.room.create/2" is step 1.2,
  "auth_events/1" is 3.1 (2.1 in v1-v11), "m.room.aliases/2" is 4.2 of v1-v5,
  "m.room.member/1" is 5.1, "m.room.power_levels/9" is 10.9, "m.room.redaction/3" is 11.3 of
  v1-v2;
- membership sub-rules by membership: "m.room.member/join/4" is 5.3.4,
  "m.room.member/invite/1.5" is 5.4.1.5, and so on (v8+ numbering inside rule 5).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from worker.core import ids
from worker.core.events import MEMBER, Event, StateKey
from worker.core.outcomes import Rejection

CREATE = "m.room.create"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
ALIASES = "m.room.aliases"
REDACTION = "m.room.redaction"

CREATE_KEY: StateKey = (CREATE, "")
POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")
JOIN_RULES_KEY: StateKey = (JOIN_RULES, "")

# The lookups the rules make. Callers may hand in a huge lazy view of room state (10,000
# members): the rules only ever call `.get(key)` on it, never iterate or copy it.
AuthEvents = Mapping[StateKey, Event]


def reject(code: str, rule: str, reason: str) -> Rejection:
    """A rejection value; argument order puts the stable parts first so call sites align."""
    return Rejection(code=code, reason=reason, rule=rule)


def domain_of(identifier: str) -> str:
    """The server part of a user, room or (v1, v2) event ID: everything after the first ':'.

    An identifier without ':' has no domain; "" never equals a real server name.
    """
    _, sep, domain = identifier.partition(":")
    return domain if sep else ""


def is_valid_user_id(value: Any) -> bool:
    """Whether `value` passes the user ID grammar applied to `sender`.

    `@localpart:server_name`, at most 255 bytes, historical localparts allowed, as
    `worker.core.ids` checks senders (https://spec.matrix.org/latest/appendices/#user-identifiers).
    """
    return isinstance(value, str) and _valid_user_id(value)


@functools.lru_cache(maxsize=65536)
def _valid_user_id(value: str) -> bool:
    # Memoised: every power levels event repeats the room's `users` table (thousands of
    # entries in big rooms), and state resolution checks each such event many times.
    return ids.is_valid_user_id(value, historical=True)


def membership_of(auth_events: AuthEvents, user_id: str) -> str | None:
    """The user's current membership according to the given auth events (None: no event)."""
    member = auth_events.get((MEMBER, user_id))
    if member is None:
        return None
    # `Event.membership`, read directly: the rules ask this several times per event.
    value = member.content.get("membership")
    return value if isinstance(value, str) else None
