"""The rules that are not about creation, membership or power level changes.

Rule 3/4 (`m.federate`), rule 4 of v1-v5 (`m.room.aliases`), rules 6 to 9 (sender joined,
`m.room.third_party_invite`, required power level, `@`-state keys) and rule 11 of v1-v2
(`m.room.redaction`). Numbering follows https://spec.matrix.org/latest/rooms/v12/#authorisation-rules
(one lower in v8-v11); v1-v5 and v1-v2 rules are from https://spec.matrix.org/latest/rooms/v1/.
"""

from __future__ import annotations

from worker.core.auth.common import AuthEvents, domain_of, membership_of, reject
from worker.core.auth.power_levels import PowerLevels
from worker.core.events import Event
from worker.core.outcomes import Rejection
from worker.core.versions import EventIdFormat


def federates(create: Event) -> bool:
    """Whether the room lets other servers in: only a create event without `m.federate`, or
    with the literal `true`, does. The spec says "set to false"; Synapse refuses every value
    other than `true`, and where two servers disagree on an event the room splits, so we
    read it as Synapse does (docs/interop.md)."""
    return create.content.get("m.federate", True) is True


def check_federate(event: Event, create: Event) -> Rejection | None:
    """Rule 3 (v1-v11) / 4 (v12): a room that does not federate keeps other servers' senders
    out. (Membership targets are checked by rule 5, see `member.check_member`.)"""
    # Same-server senders are unaffected: `m.federate` keeps the room on its creating server,
    # it does not restrict local users.
    if not federates(create) and domain_of(event.sender) != domain_of(create.sender):
        return reject(
            "room_not_federated",
            "room/4",
            "The room does not federate and the sender is on another server.",
        )
    return None


def check_aliases(event: Event) -> Rejection | None:
    """Rule 4 (v1-v5 only, `special_case_aliases_auth`): a server sets its own aliases.

    Allowed without membership or power; later versions treat it as any state event.
    """
    # 4.1: it is a state event.
    if event.state_key is None:
        return reject(
            "bad_alias_state_key", "m.room.aliases/1", "m.room.aliases needs a state_key."
        )
    # 4.2: whose state key is the sender's own server.
    if event.state_key != domain_of(event.sender):
        return reject(
            "bad_alias_state_key",
            "m.room.aliases/2",
            "The state_key of m.room.aliases is not the sender's server.",
        )
    # 4.3: otherwise, allow.
    return None


def check_sender_joined(event: Event, auth_events: AuthEvents) -> Rejection | None:
    """Rule 6 (5 in v8-v11; all versions): from here on only joined members act."""
    # Invited, knocking, left and banned users can only change their own membership (rule 5).
    if membership_of(auth_events, event.sender) != "join":
        return reject("not_in_room", "room/6", f"{event.sender} is not joined to the room.")
    return None


def check_third_party_invite_event(event: Event, power: PowerLevels) -> Rejection | None:
    """Rule 7 (all versions): issuing a third-party invite needs the invite level."""
    # "Allow if and only if": rules 8 to 10 are skipped, so an `events` entry for
    # m.room.third_party_invite has no effect; what counts is who may invite.
    if power.user_level(event.sender) >= power.named("invite"):
        return None
    return reject(
        "insufficient_power",
        "room/7",
        "The sender may not invite users.",
    )


def check_required_level(event: Event, power: PowerLevels) -> Rejection | None:
    """Rule 8 (all versions): the sender has at least the event type's required level."""
    # Membership events never get here (rule 5 decided them); redactions do, and are held to
    # `events`/`events_default` like any event, not to the redact level (see rule 11).
    required = power.required_level(event.type, event.is_state)
    if required > power.user_level(event.sender):
        return reject(
            "insufficient_power",
            "room/8",
            f"Sending {event.type} needs power level {required}.",
        )
    return None


def check_user_state_key(event: Event) -> Rejection | None:
    """Rule 9 (all versions): state keyed by a user ID belongs to that user.

    Lets clients keep per-user state (e.g. `org.example.status` keyed by user) that nobody
    else can overwrite, whatever their power. (MSC3757's relaxation is in no stable version.)
    """
    if (
        event.state_key is not None
        and event.state_key.startswith("@")
        and event.state_key != event.sender
    ):
        return reject(
            "state_key_not_sender",
            "room/9",
            "A state_key starting with '@' must be the sender's user ID.",
        )
    return None


def check_redaction(event: Event, power: PowerLevels) -> Rejection | None:
    """Rule 11 of v1 and v2: redactions need the redact level or the same origin server.

    Applies where event IDs carry their server (`EventIdFormat.CARRIED`, v1-v2): it is that
    format that makes the "same domain" test possible, and v3 dropped the rule with it. From v3
    on, a redaction is authorised like any event and whether it takes effect is decided when
    it is applied ("Handling redactions": same sender, or redact level), which the pipeline
    does, not the auth rules.
    """
    if event.rules.event_id_format is not EventIdFormat.CARRIED:
        return None
    # 11.1: the redact level allows redacting anything.
    if power.user_level(event.sender) >= power.named("redact"):
        return None
    # 11.2: a server may redact events that came from it.
    redacts = event.redacts
    if (
        redacts is not None
        and domain_of(redacts) != ""
        and domain_of(redacts) == domain_of(event.event_id)
    ):
        return None
    # 11.3: otherwise, reject.
    return reject(
        "insufficient_power",
        "m.room.redaction/3",
        "Redacting another server's event needs the redact level.",
    )
