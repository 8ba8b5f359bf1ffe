"""Rule 5 (rule 4 in v8-v11): `m.room.member` events.

Spec: https://spec.matrix.org/latest/rooms/v12/#authorisation-rules, rule 5 (join, invite,
leave, ban, knock), with the restricted-join additions of v8 and v10
(https://spec.matrix.org/latest/rooms/v8/, /v10/) and knocking from v7
(https://spec.matrix.org/latest/rooms/v7/).
"""

from __future__ import annotations

from worker.core.auth.common import (
    CREATE_KEY,
    JOIN_RULES_KEY,
    AuthEvents,
    domain_of,
    membership_of,
    reject,
)
from worker.core.auth.power_levels import PowerLevels
from worker.core.auth.third_party import check_third_party_invite
from worker.core.events import Event
from worker.core.outcomes import Rejection

# Rule names are "m.room.member/<membership>/<step>", steps numbered as in the v12 text.
_R = "m.room.member"


def _join_rule(auth_events: AuthEvents) -> str:
    """The room's join rule. With no m.room.join_rules event the room is invite-only.

    The spec does not name a default; `invite` is what Synapse and ruma use, and what
    `createRoom` would produce, and it only ever lets in users who hold an invite.
    """
    event = auth_events.get(JOIN_RULES_KEY)
    if event is None:
        return "invite"
    rule = event.content.get("join_rule")
    return rule if isinstance(rule, str) else ""


def check_member(event: Event, auth_events: AuthEvents) -> Rejection | None:
    """Rule 5: dispatch on `content.membership` after the shape and signature checks."""
    rules = event.rules
    # 5.1 (all versions): a membership event names its target and a membership.
    target = event.state_key
    membership = event.content.get("membership")
    if target is None or "membership" not in event.content:
        return reject(
            "bad_membership", f"{_R}/5.1", "A membership event needs a state_key and membership."
        )
    # 5.2 (v8+): a join authorised by another server carries that server's signature. The
    # signature itself was verified upstream with the others; here we check it is present.
    if rules.restricted_join_rule and "join_authorised_via_users_server" in event.content:
        authoriser = event.content["join_authorised_via_users_server"]
        signatures = event.pdu.get("signatures")
        if (
            not isinstance(authoriser, str)
            or not isinstance(signatures, dict)
            or domain_of(authoriser) not in signatures
        ):
            return reject(
                "missing_authoriser_signature",
                f"{_R}/5.2",
                "The join is not signed by the server of join_authorised_via_users_server.",
            )
    power = PowerLevels.from_auth_events(rules, auth_events)
    if membership == "join":
        return _join(event, target, auth_events, power)
    if membership == "invite":
        return _invite(event, target, auth_events, power)
    if membership == "leave":
        return _leave(event, target, auth_events, power)
    if membership == "ban":
        return _ban(event, target, auth_events, power)
    # 5.7 (v7+): knocking; in v1-v6 `knock` is an unknown membership (5.8).
    if membership == "knock" and rules.knock:
        return _knock(event, target, auth_events)
    # 5.8: otherwise, the membership is unknown.
    return reject("unknown_membership", f"{_R}/5.8", f"Unknown membership {membership!r}.")


def _join(
    event: Event, target: str, auth_events: AuthEvents, power: PowerLevels
) -> Rejection | None:
    rules = event.rules
    # 5.3.1: the creator's own first join, right after the create event. The creator is
    # content.creator in v1-v10 and the create event's sender from v11 (in v12 the
    # `additional_creators` are not "the sender of the m.room.create", so not them).
    create = auth_events.get(CREATE_KEY)
    if create is not None and event.prev_event_ids == (create.event_id,):
        first_joiner = (
            create.sender if rules.implicit_room_creator else create.content.get("creator")
        )
        if target == first_joiner:
            return None
    # 5.3.2: nobody joins on someone else's behalf.
    if event.sender != target:
        return reject("sender_mismatch", f"{_R}/join/2", "Cannot make another user join.")
    current = membership_of(auth_events, event.sender)
    # 5.3.3: banned users stay out.
    if current == "ban":
        return reject("banned", f"{_R}/join/3", f"{target} is banned from the room.")
    join_rule = _join_rule(auth_events)
    # 5.3.4: invite-only rooms (and v7+ knock rooms) admit the invited and the already joined.
    if join_rule == "invite" or (rules.knock and join_rule == "knock"):
        if current in ("invite", "join"):
            return None
        return reject(
            "join_rule_forbids",
            f"{_R}/join/4",
            f"The room is {join_rule}-only; {target} is not invited.",
        )
    # 5.3.5: restricted rooms (v8+) and knock_restricted rooms (v10+).
    if (rules.restricted_join_rule and join_rule == "restricted") or (
        rules.knock_restricted_join_rule and join_rule == "knock_restricted"
    ):
        # 5.3.5.1: the invited and the already joined need no authorisation.
        if current in ("invite", "join"):
            return None
        # 5.3.5.2: otherwise a joined member able to invite vouches for the join.
        authoriser = event.content.get("join_authorised_via_users_server")
        if not isinstance(authoriser, str):
            return reject(
                "bad_authoriser",
                f"{_R}/join/5.2",
                "A restricted join needs content.join_authorised_via_users_server.",
            )
        if membership_of(auth_events, authoriser) != "join":
            return reject(
                "bad_authoriser",
                f"{_R}/join/5.2",
                f"The authorising user {authoriser} is not joined.",
            )
        if power.user_level(authoriser) < power.named("invite"):
            return reject(
                "bad_authoriser",
                f"{_R}/join/5.2",
                f"The authorising user {authoriser} may not invite users.",
            )
        # 5.3.5.3: otherwise, allow.
        return None
    # 5.3.6: public rooms admit anyone not banned.
    if join_rule == "public":
        return None
    # 5.3.7: any other join rule (private, unknown, or not supported by this version).
    return reject(
        "join_rule_forbids", f"{_R}/join/7", f"The join rule {join_rule!r} forbids joining."
    )


def _invite(
    event: Event, target: str, auth_events: AuthEvents, power: PowerLevels
) -> Rejection | None:
    # 5.4.1: invites through a third-party identifier are vouched for by the identity server's
    # signature, not by the sender's membership.
    if "third_party_invite" in event.content:
        # 5.4.1.1: a banned target stays out.
        if membership_of(auth_events, target) == "ban":
            return reject("banned", f"{_R}/invite/1.1", f"{target} is banned from the room.")
        # 5.4.1.2 to 5.4.1.8.
        return check_third_party_invite(event, target, auth_events)
    # 5.4.2: only members invite.
    if membership_of(auth_events, event.sender) != "join":
        return reject("not_in_room", f"{_R}/invite/2", f"{event.sender} is not in the room.")
    # 5.4.3: members and banned users cannot be invited.
    current = membership_of(auth_events, target)
    if current == "join":
        return reject("target_in_room", f"{_R}/invite/3", f"{target} is already in the room.")
    if current == "ban":
        return reject("banned", f"{_R}/invite/3", f"{target} is banned from the room.")
    # 5.4.4 and 5.4.5: the sender needs the invite level.
    if power.user_level(event.sender) >= power.named("invite"):
        return None
    return reject("insufficient_power", f"{_R}/invite/4", "The sender may not invite users.")


def _leave(
    event: Event, target: str, auth_events: AuthEvents, power: PowerLevels
) -> Rejection | None:
    rules = event.rules
    sender_membership = membership_of(auth_events, event.sender)
    # 5.5.1: leaving oneself (or rejecting an invite, or v7+ withdrawing a knock).
    if event.sender == target:
        allowed = ("invite", "join", "knock") if rules.knock else ("invite", "join")
        if sender_membership in allowed:
            return None
        return reject("not_in_room", f"{_R}/leave/1", f"{target} has nothing to leave.")
    # 5.5.2: kicking and unbanning are for members.
    if sender_membership != "join":
        return reject("not_in_room", f"{_R}/leave/2", f"{event.sender} is not in the room.")
    sender_level = power.user_level(event.sender)
    # 5.5.3: unbanning needs the ban level.
    if membership_of(auth_events, target) == "ban" and sender_level < power.named("ban"):
        return reject("insufficient_power", f"{_R}/leave/3", "The sender may not unban users.")
    # 5.5.4 and 5.5.5: kicking needs the kick level and a higher level than the target's.
    if sender_level >= power.named("kick") and power.user_level(target) < sender_level:
        return None
    return reject("insufficient_power", f"{_R}/leave/4", f"The sender may not kick {target}.")


def _ban(
    event: Event, target: str, auth_events: AuthEvents, power: PowerLevels
) -> Rejection | None:
    # 5.6.1: banning is for members.
    if membership_of(auth_events, event.sender) != "join":
        return reject("not_in_room", f"{_R}/ban/1", f"{event.sender} is not in the room.")
    # 5.6.2 and 5.6.3: the ban level and a higher level than the target's.
    sender_level = power.user_level(event.sender)
    if sender_level >= power.named("ban") and power.user_level(target) < sender_level:
        return None
    return reject("insufficient_power", f"{_R}/ban/2", f"The sender may not ban {target}.")


def _knock(event: Event, target: str, auth_events: AuthEvents) -> Rejection | None:
    rules = event.rules
    join_rule = _join_rule(auth_events)
    # 5.7.1 (v7+): only knock rooms, and (v10+) knock_restricted rooms, take knocks.
    if not (
        join_rule == "knock"
        or (rules.knock_restricted_join_rule and join_rule == "knock_restricted")
    ):
        return reject(
            "join_rule_forbids", f"{_R}/knock/1", f"The join rule {join_rule!r} forbids knocking."
        )
    # 5.7.2: nobody knocks on someone else's behalf.
    if event.sender != target:
        return reject("sender_mismatch", f"{_R}/knock/2", "Cannot knock for another user.")
    # 5.7.3 and 5.7.4: the banned, the invited and the joined have no reason to knock.
    current = membership_of(auth_events, event.sender)
    if current in ("ban", "invite", "join"):
        return reject("knock_not_allowed", f"{_R}/knock/3", f"{target} is {current}; cannot knock.")
    return None
