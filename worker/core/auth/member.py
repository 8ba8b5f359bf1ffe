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
from worker.core.auth.other import federates
from worker.core.auth.power_levels import PowerLevels
from worker.core.auth.third_party import check_third_party_invite
from worker.core.events import Event
from worker.core.outcomes import Rejection
from worker.core.versions import RoomRules

# Rule names are "m.room.member/<membership>/<step>", steps numbered as in the v12 text
# (5.3.x is "join/x"). In v8-v11 the whole rule is number 4, in v1-v7 number 5; inside it,
# v1-v7 lack 5.2 (restricted joins), so their join/invite/... sub-steps are one lower.
_R = "m.room.member"

# Who "holds a place" in the room for the purposes of 5.3.4 and 5.3.5.1: an invite lets the
# user in whatever the join rule, and a joined user re-joining (a profile change) is a no-op.
_ADMITTED = ("invite", "join")


def join_rule_of(join_rules: Event | None) -> str:
    """The room's join rule, given its m.room.join_rules event (None: the room has none).

    With no join rules event the room is invite-only: the spec does not name a default;
    `invite` is what Synapse and ruma use, and what `createRoom` would produce, and it only
    ever lets in users who hold an invite. A non-string rule is no rule at all ("").
    """
    if join_rules is None:
        return "invite"
    rule = join_rules.content.get("join_rule")
    return rule if isinstance(rule, str) else ""


def self_join_step(rules: RoomRules, join_rule: str, current: str | None) -> str | None:
    """5.3.3-5.3.7 for a join by its own target: what the join rule and the sender's current
    membership decide, without the event itself.

    None: allowed. Otherwise the rule step that decides: "join/5.2" means the join needs an
    authorising user (5.3.5.2, which reads the event and the authoriser's membership and
    power); every other step refuses. `SelfMembershipTable` is this function tabulated.
    """
    # 5.3.3 (all versions): banned users stay out, whatever the join rule.
    if current == "ban":
        return "join/3"
    # 5.3.4 (all versions; `knock` from v7): invite-only rooms, and knock rooms (where a
    # knock is answered with an invite), admit the invited and the already joined. In v1-v6
    # `knock` is no join rule at all and falls through to 5.3.7.
    if join_rule == "invite" or (rules.knock and join_rule == "knock"):
        return None if current in _ADMITTED else "join/4"
    # 5.3.5 (v8+ `restricted`, v10+ `knock_restricted`): membership of another room, which
    # only the authorising server can see, admits the user. In older versions these names
    # are unknown join rules and fall through to 5.3.7.
    if (rules.restricted_join_rule and join_rule == "restricted") or (
        rules.knock_restricted_join_rule and join_rule == "knock_restricted"
    ):
        # 5.3.5.1: the invited and the already joined need no authorisation.
        return None if current in _ADMITTED else "join/5.2"
    # 5.3.6 (all versions): public rooms admit anyone not banned (5.3.3 ran already).
    if join_rule == "public":
        return None
    # 5.3.7 (all versions): any other join rule: `private` (reserved, never implemented),
    # unknown values, and the ones this version does not know yet.
    return "join/7"


def self_leave_from(rules: RoomRules) -> frozenset[str]:
    """5.5.1: the memberships one may leave oneself ("allow if and only if"): an invite
    (rejecting it), a join, and from v7 a knock (withdrawing it). A banned user cannot lift
    their own ban by leaving, and someone with no membership has nothing to leave."""
    return _LEAVE_FROM_V7 if rules.knock else _LEAVE_FROM


_LEAVE_FROM = frozenset(("invite", "join"))
_LEAVE_FROM_V7 = frozenset(("invite", "join", "knock"))


def check_member(event: Event, auth_events: AuthEvents) -> Rejection | None:
    """Rule 5 (all versions): dispatch on `content.membership` after the shape checks.

    Membership events never reach rules 6 to 10: whatever this returns is the verdict.
    "Current membership" below means the m.room.member event in `auth_events` for that user
    (absent: no membership at all, which the spec treats like `leave`).
    """
    rules = event.rules
    # 5.1 (all versions): a membership event names its target and a membership.
    target = event.state_key
    membership = event.content.get("membership")
    if target is None or "membership" not in event.content:
        return reject(
            "bad_membership", f"{_R}/1", "A membership event needs a state_key and membership."
        )
    # 5.2 (v8+): a join authorised by another server carries that server's signature. The
    # signature itself was verified upstream with the others (DESIGN §1: signatures are the
    # federation service's job); here we check it is present, so that a server cannot claim
    # an authoriser on another server without that server having signed the join. The key
    # is checked whatever the membership: the spec puts 5.2 before the dispatch.
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
                f"{_R}/2",
                "The join is not signed by the server of join_authorised_via_users_server.",
            )
    # A room that does not federate keeps other servers' users from being the target of
    # any membership change but the creator's first join. The spec has no such rule;
    # Synapse applies it (before rule 5's own steps), so we do too (docs/interop.md).
    create = auth_events.get(CREATE_KEY)
    if (
        create is not None
        and "m.federate" in create.content
        and not federates(create)
        and domain_of(target) != domain_of(create.sender)
        and not (membership == "join" and _is_first_join(event, target, create))
    ):
        return reject(
            "room_not_federated",
            f"{_R}/federate",
            f"The room does not federate and {target} is on another server.",
        )
    # Joins read power levels only in restricted rooms (5.3.5.2), so the view is built there:
    # joins are most of what state resolution checks in big rooms.
    if membership == "join":
        return _join(event, target, auth_events)
    # One view of the power levels for the rest: every sub-rule reads the same event.
    power = PowerLevels.from_auth_events(rules, auth_events)
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
    return reject("unknown_membership", f"{_R}/8", f"Unknown membership {membership!r}.")


def _join(event: Event, target: str, auth_events: AuthEvents) -> Rejection | None:
    """5.3 (all versions; 5.3.5 from v8, knock from v7, knock_restricted from v10)."""
    rules = event.rules
    # 5.3.1: the creator's own first join, right after the create event. The creator is
    # content.creator in v1-v10 and the create event's sender from v11 (in v12 the
    # `additional_creators` are not "the sender of the m.room.create", so not them).
    create = auth_events.get(CREATE_KEY)
    if create is not None and _is_first_join(event, target, create):
        return None
    # 5.3.2 (all versions): nobody joins on someone else's behalf.
    if event.sender != target:
        return reject("sender_mismatch", f"{_R}/join/2", "Cannot make another user join.")
    # From here on sender = target, so "membership state" is the sender's own.
    current = membership_of(auth_events, event.sender)
    join_rule = join_rule_of(auth_events.get(JOIN_RULES_KEY))
    step = self_join_step(rules, join_rule, current)
    if step is None:
        return None
    if step == "join/3":
        return reject("banned", f"{_R}/join/3", f"{target} is banned from the room.")
    if step == "join/4":
        return reject(
            "join_rule_forbids",
            f"{_R}/join/4",
            f"The room is {join_rule}-only; {target} is not invited.",
        )
    if step == "join/7":
        return reject(
            "join_rule_forbids", f"{_R}/join/7", f"The join rule {join_rule!r} forbids joining."
        )
    return _authorised_join(event, auth_events)


def _is_first_join(event: Event, target: str, create: Event) -> bool:
    """5.3.1: a join of the creator right after the create event (its only prev event)."""
    if event.prev_event_ids != (create.event_id,):
        return False
    creator = create.sender if event.rules.implicit_room_creator else create.content.get("creator")
    return target == creator


def _authorised_join(event: Event, auth_events: AuthEvents) -> Rejection | None:
    """5.3.5.2 (v8+): a joined member able to invite vouches for a restricted join. The spec
    says the key "is not a user with sufficient permission to invite other users or is not a
    joined member", so a missing (or non-string) key fails too."""
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
    power = PowerLevels.from_auth_events(event.rules, auth_events)
    if power.user_level(authoriser) < power.named("invite"):
        return reject(
            "bad_authoriser",
            f"{_R}/join/5.2",
            f"The authorising user {authoriser} may not invite users.",
        )
    # 5.3.5.3: otherwise, allow.
    return None


def _invite(
    event: Event, target: str, auth_events: AuthEvents, power: PowerLevels
) -> Rejection | None:
    """5.4 (all versions, unchanged since v1)."""
    # 5.4.1: invites through a third-party identifier are vouched for by the identity server's
    # signature, not by the sender's membership: the sender must only be whoever sent the
    # m.room.third_party_invite (5.4.1.6), who may have left the room since.
    if "third_party_invite" in event.content:
        # 5.4.1.1: a banned target stays out.
        if membership_of(auth_events, target) == "ban":
            return reject("banned", f"{_R}/invite/1.1", f"{target} is banned from the room.")
        # 5.4.1.2 to 5.4.1.8.
        return check_third_party_invite(event, target, auth_events)
    # 5.4.2: only members invite (an invited user cannot pass the invite on).
    if membership_of(auth_events, event.sender) != "join":
        return reject("not_in_room", f"{_R}/invite/2", f"{event.sender} is not in the room.")
    # 5.4.3: members cannot be invited again, and an invite must not undo a ban (unbanning
    # is a `leave` by someone with the ban level, 5.5.3).
    current = membership_of(auth_events, target)
    if current == "join":
        return reject("target_in_room", f"{_R}/invite/3", f"{target} is already in the room.")
    if current == "ban":
        return reject("banned", f"{_R}/invite/3", f"{target} is banned from the room.")
    # 5.4.4 and 5.4.5: the sender needs the invite level (default 0: any member invites).
    if power.user_level(event.sender) >= power.named("invite"):
        return None
    return reject("insufficient_power", f"{_R}/invite/4", "The sender may not invite users.")


def _leave(
    event: Event, target: str, auth_events: AuthEvents, power: PowerLevels
) -> Rejection | None:
    """5.5 (all versions; withdrawing a knock from v7). Covers leave, kick and unban."""
    rules = event.rules
    sender_membership = membership_of(auth_events, event.sender)
    # 5.5.1: leaving oneself (or rejecting an invite, or v7+ withdrawing a knock). "Allow if
    # and only if": a banned user cannot lift their own ban by leaving, and someone with no
    # membership has nothing to leave.
    if event.sender == target:
        if sender_membership in self_leave_from(rules):
            return None
        return reject("not_in_room", f"{_R}/leave/1", f"{target} has nothing to leave.")
    # 5.5.2: kicking and unbanning (a leave for someone else) are for members.
    if sender_membership != "join":
        return reject("not_in_room", f"{_R}/leave/2", f"{event.sender} is not in the room.")
    sender_level = power.user_level(event.sender)
    # 5.5.3: unbanning needs the ban level, on top of the kick rule below: "to unban
    # somebody, you must have power level greater than or equal to both the kick and ban
    # levels, and greater than the target user's power level" (the spec's note).
    if membership_of(auth_events, target) == "ban" and sender_level < power.named("ban"):
        return reject("insufficient_power", f"{_R}/leave/3", "The sender may not unban users.")
    # 5.5.4 and 5.5.5: kicking needs the kick level and a strictly higher level than the
    # target's, so equals cannot kick each other (and v12 creators cannot be kicked at all).
    if sender_level >= power.named("kick") and power.user_level(target) < sender_level:
        return None
    return reject("insufficient_power", f"{_R}/leave/4", f"The sender may not kick {target}.")


def _ban(
    event: Event, target: str, auth_events: AuthEvents, power: PowerLevels
) -> Rejection | None:
    """5.6 (all versions). The target may be anyone, also someone never in the room."""
    # 5.6.1: banning is for members.
    if membership_of(auth_events, event.sender) != "join":
        return reject("not_in_room", f"{_R}/ban/1", f"{event.sender} is not in the room.")
    # 5.6.2 and 5.6.3: the ban level and a strictly higher level than the target's.
    sender_level = power.user_level(event.sender)
    if sender_level >= power.named("ban") and power.user_level(target) < sender_level:
        return None
    return reject("insufficient_power", f"{_R}/ban/2", f"The sender may not ban {target}.")


def _knock(event: Event, target: str, auth_events: AuthEvents) -> Rejection | None:
    """5.7 (v7+; `knock_restricted` rooms from v10). A knock asks the members for an invite."""
    rules = event.rules
    join_rule = join_rule_of(auth_events.get(JOIN_RULES_KEY))
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
    # 5.7.3 and 5.7.4: the banned must not pester the room, and the invited and the joined
    # have nothing to ask for. No power level is involved.
    current = membership_of(auth_events, event.sender)
    if current in ("ban", "invite", "join"):
        return reject("knock_not_allowed", f"{_R}/knock/3", f"{target} is {current}; cannot knock.")
    return None
