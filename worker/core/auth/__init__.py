"""Authorisation rules for room versions 1 to 12 (pure, synchronous).

Spec: https://spec.matrix.org/latest/rooms/ ("Authorisation rules" on each version page) and
https://spec.matrix.org/latest/server-server-api/#auth-events-selection.

- `auth_types_for_event(event)`: the state keys that authorise an event, in a fixed order.
- `check_auth_event_list(event, listed)`: rule 2 (v1-v11) / 3 (v12) on the event's own list.
- `check_auth(event, auth_events)`: every other rule; `auth_events` always has the create event.
- `check_soft_fail(event, current_state)`: `check_auth` against current state, codes prefixed.
- `PowerLevels`: power levels with the spec's defaults (v12 creators are above everyone).
"""

from worker.core.auth.common import AuthEvents
from worker.core.auth.create import creators
from worker.core.auth.power_levels import CREATOR_LEVEL, PowerLevels, parse_level
from worker.core.auth.rules import check_auth
from worker.core.auth.selection import auth_types_for_event, check_auth_event_list
from worker.core.auth.softfail import SOFT_FAIL_PREFIX, check_soft_fail

__all__ = [
    "CREATOR_LEVEL",
    "SOFT_FAIL_PREFIX",
    "AuthEvents",
    "PowerLevels",
    "auth_types_for_event",
    "check_auth",
    "check_auth_event_list",
    "check_soft_fail",
    "creators",
    "parse_level",
]
