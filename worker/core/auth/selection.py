"""Auth events selection, and the checks on an event's own `auth_events` list.

Spec: https://spec.matrix.org/latest/server-server-api/#auth-events-selection and rule 2
(v1-v11) / rule 3 (v12) of https://spec.matrix.org/latest/rooms/v12/#authorisation-rules.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.core.auth.common import (
    CREATE,
    CREATE_KEY,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    THIRD_PARTY_INVITE,
    reject,
)
from worker.core.events import MEMBER, Event, StateKey
from worker.core.outcomes import Rejection


def auth_types_for_event(event: Event) -> list[StateKey]:
    """The (type, state_key) pairs whose current events authorise `event`, in a fixed order.

    Order: create (v1-v11), power levels, sender's member, then for membership events the
    target's member, join rules, the third-party invite, the authorising user's member.
    Duplicates (sender = target) appear once. The create event itself selects nothing.
    """
    # "The auth_events for the m.room.create event in a room is empty."
    if event.type == CREATE:
        return []
    # A list, not a set: callers (the RoomBuilder, a future event creator) list auth events in
    # this order, and the order must not depend on hashing (STYLE R9).
    rules = event.rules
    sender_key: StateKey = (MEMBER, event.sender)
    # v1-v11: the create event; v12 derives it from the room ID instead, and it MUST NOT be
    # selected (v12 "auth events selection" note). All versions: the current power levels
    # and the sender's membership. (State resolution asks this for every event it checks,
    # so the common prefix is built in one step.)
    if rules.room_id_from_create_event:
        keys = [POWER_LEVELS_KEY, sender_key]
    else:
        keys = [CREATE_KEY, POWER_LEVELS_KEY, sender_key]
    target = event.state_key
    if event.type != MEMBER or target is None:
        return keys
    content = event.content
    membership = content.get("membership")
    # The target's current membership: bans, kicks and invites depend on it. Listed once
    # when the sender is the target (a join, a leave).
    if target != event.sender:
        keys.append((MEMBER, target))
    # join, invite and knock: the join rules. (Invites do not consult them in the auth
    # rules, but the selection lists them; leave and ban do not.)
    if membership in ("join", "invite", "knock"):
        keys.append(JOIN_RULES_KEY)
    # invite with `third_party_invite`: the m.room.third_party_invite named by the token.
    # A malformed `third_party_invite` selects nothing here; rule 5.4.1 rejects it.
    if membership == "invite":
        third_party = content.get("third_party_invite")
        signed = third_party.get("signed") if isinstance(third_party, dict) else None
        token = signed.get("token") if isinstance(signed, dict) else None
        if isinstance(token, str):
            keys.append((THIRD_PARTY_INVITE, token))
    # v8+ join with `join_authorised_via_users_server`: the authorising user's membership,
    # which 5.3.5.2 checks ("the room version supports restricted rooms": v8+). It may name
    # the sender or the target, which are listed already.
    if membership == "join" and rules.restricted_join_rule:
        authoriser = content.get("join_authorised_via_users_server")
        if isinstance(authoriser, str):
            authoriser_key: StateKey = (MEMBER, authoriser)
            if authoriser_key not in keys:
                keys.append(authoriser_key)
    return keys


def check_auth_event_list(event: Event, listed: Sequence[Event]) -> Rejection | None:
    """Rule 2 (v1-v11) / rule 3 (v12): the event's own `auth_events` list is well formed.

    `listed` are the events the `auth_events` IDs name, in order. Whether any of them was
    itself rejected (2.3 / 3.3) is the caller's concern: it knows the stored outcomes.
    """
    # Rule 1.5: the create event is allowed by rule 1 alone; its list is never considered.
    if event.type == CREATE:
        return None
    rules = event.rules
    # The same checks are rule 2 in v1-v11 and rule 3 in v12 (which inserted the room ID
    # rule); the rule names give the sub-step only ("auth_events/1" is 2.1 / 3.1).
    expected = set(auth_types_for_event(event))
    seen: dict[StateKey, str] = {}
    for auth in listed:
        key: StateKey | None = auth.state_tuple
        # 2.1 / 3.1 (all versions): one event per (type, state_key).
        if key is not None and key in seen:
            return reject(
                "duplicate_auth_event",
                "auth_events/1",
                f"auth_events lists {key} twice ({seen[key]} and {auth.event_id}).",
            )
        # 2.2 / 3.2 (all versions): only what the selection algorithm selects; in v12 that
        # excludes the create event.
        if key is None or key not in expected:
            what = "the create event" if key == CREATE_KEY else f"{auth.event_id} {key}"
            return reject(
                "unexpected_auth_event",
                "auth_events/2",
                f"auth_events lists {what}, which the auth events selection does not select.",
            )
        # 2.5 / 3.5 (all versions): every auth event belongs to this room. (v12 create events
        # have no room_id and are never listed, see above.)
        if auth.room_id != event.room_id:
            return reject(
                "wrong_room",
                "auth_events/5",
                f"Auth event {auth.event_id} belongs to room {auth.room_id!r}.",
            )
        seen[key] = auth.event_id
    # 2.4 (v1-v11): the create event is among them.
    if not rules.room_id_from_create_event and CREATE_KEY not in seen:
        return reject("missing_create", "auth_events/4", "auth_events lacks the create event.")
    return None
