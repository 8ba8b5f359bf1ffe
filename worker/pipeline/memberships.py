"""Invites from membership changes of current state, and the state-reset detector.

Invites (reference doc §1.13): an `m.room.member` entry of current state that becomes
`invite` (from anything but `invite`) is a `new_invite_event`; an `invite` entry replaced by
`join`, `leave` or `ban` is a `retire_invite_event` naming the invite and the event that
retired it.

State reset: a state resolution that takes a user's `join` out of current state, or lowers a
power level, although no event on either branch did so. An event that really replaced an
entry lists the replaced entry among its auth events (the target's member event for a
membership change, the previous power levels for a power change), so a resolved entry that
does not descend from the entry it replaced in that way is a reset. It is logged by room
and counted; the state stays what the spec's resolution says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.core.events import MEMBER, Event, StateKey
from worker.messages import NewInviteEvent, RetireInviteEvent
from worker.pipeline.events import event_raw

POWER_LEVELS_KEY: StateKey = ("m.room.power_levels", "")
RETIRING = ("join", "leave", "ban")


def invite_outputs(
    room_id: str,
    version: str,
    added: Sequence[Event],
    removed: Sequence[Event],
    cause: str = "",
) -> list[NewInviteEvent | RetireInviteEvent]:
    """Invite outputs for the member entries that changed, ordered by target user.

    `cause` is the event that changed the state: an invite whose entry left the state with
    nothing in its place (a merge that dropped it) is retired by it, as `leave`.
    """
    before = {e.state_key: e for e in removed if e.type == MEMBER}
    out: list[NewInviteEvent | RetireInviteEvent] = []
    replaced = {e.state_key for e in added if e.type == MEMBER}
    for key, gone in sorted(before.items(), key=lambda kv: kv[0] or ""):
        if key not in replaced and gone.membership == "invite":
            out.append(
                RetireInviteEvent(
                    event_id=gone.event_id,
                    room_id=room_id,
                    target_user_id=key or "",
                    retired_by_event_id=cause,
                    membership="leave",
                )
            )
    for ev in sorted((e for e in added if e.type == MEMBER), key=lambda e: e.state_key or ""):
        old = before.get(ev.state_key)
        old_membership = old.membership if old is not None else None
        if ev.membership == "invite" and old_membership != "invite":
            out.append(NewInviteEvent(room_version=version, event=event_raw(ev)))
        elif old is not None and old_membership == "invite" and ev.membership in RETIRING:
            out.append(
                RetireInviteEvent(
                    event_id=old.event_id,
                    room_id=room_id,
                    target_user_id=ev.state_key or "",
                    retired_by_event_id=ev.event_id,
                    membership=ev.membership or "",
                )
            )
    return out


def _level(value: Any, default: int) -> int:
    # v1-v9 allow levels as strings of digits; anything unreadable counts as the default.
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


def _lowered(old: Event, new: Event) -> list[str]:
    """Users (and "users_default") whose power level `new` lowers compared with `old`."""
    old_users = old.content.get("users")
    new_users = new.content.get("users")
    old_users = old_users if isinstance(old_users, dict) else {}
    new_users = new_users if isinstance(new_users, dict) else {}
    old_default = _level(old.content.get("users_default"), 0)
    new_default = _level(new.content.get("users_default"), 0)
    lowered = ["users_default"] if new_default < old_default else []
    for user in sorted(old_users):
        before = _level(old_users[user], old_default)
        after = _level(new_users.get(user, new_default), new_default)
        if after < before:
            lowered.append(user)
    return lowered


def detect_resets(
    removed: Sequence[Event], resolved: Mapping[StateKey, str], events: Mapping[str, Event]
) -> list[dict[str, str]]:
    """Entries a merge took away with no event doing so; one record per finding."""
    findings: list[dict[str, str]] = []
    for old in sorted(removed, key=lambda e: (e.type, e.state_key or "")):
        key = old.state_tuple
        if key is None:
            continue
        new_id = resolved.get(key)
        new = events.get(new_id) if new_id is not None else None
        replaced_by_event = new is not None and old.event_id in new.auth_event_ids
        if old.type == MEMBER and old.membership == "join":
            if new is None or (new.membership != "join" and not replaced_by_event):
                findings.append(
                    {"kind": "join_removed", "user_id": old.state_key or "",
                     "lost": old.event_id, "now": new_id or ""}
                )
        elif key == POWER_LEVELS_KEY and new is not None and not replaced_by_event:
            for who in _lowered(old, new):
                findings.append(
                    {"kind": "power_lowered", "user_id": who,
                     "lost": old.event_id, "now": new.event_id}
                )
    return findings
