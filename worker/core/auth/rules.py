"""`check_auth`: the authorisation rules of rooms v1 to v12, in the spec's order.

Spec: https://spec.matrix.org/latest/rooms/v12/#authorisation-rules and the "Authorisation
rules" section of each version page (https://spec.matrix.org/latest/rooms/v1/ to /v11/). The
steps are numbered as in the v12 text; where an earlier version numbers a step differently the
rule module says so.
"""

from __future__ import annotations

from worker.core.auth.common import (
    ALIASES,
    CREATE,
    CREATE_KEY,
    POWER_LEVELS,
    REDACTION,
    THIRD_PARTY_INVITE,
    AuthEvents,
    reject,
)
from worker.core.auth.create import check_create, check_room_id
from worker.core.auth.member import check_member
from worker.core.auth.other import (
    check_aliases,
    check_federate,
    check_redaction,
    check_required_level,
    check_sender_joined,
    check_third_party_invite_event,
    check_user_state_key,
)
from worker.core.auth.power_levels import PowerLevels, check_power_levels
from worker.core.events import MEMBER, Event
from worker.core.outcomes import Rejection


def check_auth(event: Event, auth_events: AuthEvents) -> Rejection | None:
    """Whether `event` is allowed given `auth_events`; None when it is, a `Rejection` if not.

    `auth_events` maps (type, state_key) to the events in force: the event's own auth events,
    the state before it, or the current state. It always holds the create event under
    ("m.room.create", ""), also in v12 where the create event is not listed in `auth_events`.
    Only `.get` is ever called on it, for keys of `auth_types_for_event(event)`.
    Rule 2/3 (the `auth_events` list itself) is `check_auth_event_list`.
    """
    rules = event.rules
    # 1 (all versions): m.room.create is judged on its own.
    if event.type == CREATE:
        return check_create(event)
    create = auth_events.get(CREATE_KEY)
    # 2.4 (v1-v11): there is a create event. Callers always provide it, so this guards
    # against a room that has none in the given state (e.g. a bogus state snapshot).
    if create is None:
        return reject("missing_create", "auth_events/4", "No create event in the auth events.")
    # 2 (v12+): the room ID is the create event's ID.
    if rules.room_id_from_create_event:
        bad = check_room_id(event, create)
        if bad is not None:
            return bad
    # 3 (v1-v11) / 4 (v12): m.federate.
    # (Only a room created with `m.federate` set can fail it; checked inline first because
    # state resolution runs these rules for thousands of events.)
    if "m.federate" in create.content:
        bad = check_federate(event, create)
        if bad is not None:
            return bad
    # 4 (v1-v5): m.room.aliases has its own rule and skips everything after it.
    if event.type == ALIASES and rules.special_case_aliases_auth:
        return check_aliases(event)
    # 5 (4 in v8-v11): membership events have their own rules and skip everything after.
    if event.type == MEMBER:
        return check_member(event, auth_events)
    # 6: the sender is joined.
    bad = check_sender_joined(event, auth_events)
    if bad is not None:
        return bad
    power = PowerLevels.from_auth_events(rules, auth_events)
    # 7: m.room.third_party_invite needs the invite level and nothing else.
    if event.type == THIRD_PARTY_INVITE:
        return check_third_party_invite_event(event, power)
    # 8: the required power level of the event type.
    bad = check_required_level(event, power)
    if bad is not None:
        return bad
    # 9: state keys that are user IDs belong to that user.
    bad = check_user_state_key(event)
    if bad is not None:
        return bad
    # 10: "if type is m.room.power_levels", whatever the state key (see `check_power_levels`
    # for which previous event one with a state key other than "" is compared with).
    if event.type == POWER_LEVELS:
        return check_power_levels(event, auth_events, power)
    # 11 (v1-v2): redactions; a no-op from v3 (see `check_redaction`).
    if event.type == REDACTION:
        return check_redaction(event, power)
    # 12 (v1-v2) / 11 (v3+): otherwise, allow.
    return None
