"""`upgrade`: replace a room by a new one of another version.

Spec: https://spec.matrix.org/latest/client-server-api/#server-behaviour-19 ("Room
upgrades"): the server

1. checks that the user may send `m.room.tombstone` in the old room;
2. creates the replacement room with a `predecessor` in its create event;
3. copies the transferable state (we copy every state event the upgrading user may send:
   the recommended name, topic, avatar, join rules, history visibility, guest access,
   encryption, server ACL, power levels, and custom state whose state key is not another
   user's), and the bans;
4. moves the local aliases (and the directory listing) to the new room;
5. sends the tombstone in the old room;
6. moves the canonical alias: the new room's `m.room.canonical_alias` names this server's
   aliases of the old one (`alias` and `alt_aliases`), and the old room's is sent again
   without them (`{}` when every alias was ours), so that no alias points at both rooms;
7. restricts the old room's power levels so that ordinary users can no longer talk or invite
   there (`events_default` and `invite` raised to max(50, users_default + 1)).

Members are not moved (each must join the new room); local members of a room that was not
public are invited into the new one, so that they can follow.

Aliases of other servers stay in the old room's canonical alias: only their servers can move
them. This is what Synapse does (`RoomCreationHandler._move_aliases_to_new_room`), except that
a canonical alias left empty is not sent into the new room at all.

Power levels are sent in two steps, as Synapse does: first the old levels with the upgrading
user raised to the highest level any listed action needs (so that every copied event is
allowed), then the old levels as they were, at the end. In v12 the creator has infinite power
and must not be listed in `users`: it is left out.
"""

from __future__ import annotations

import copy
from typing import Any

from worker.core.builder import Draft, RoomHead
from worker.core.events import MEMBER, Event, StateKey
from worker.core.ids import domain_of
from worker.core.versions import RoomRules
from worker.messages.perform import UpgradeRequest, UpgradeResponse
from worker.perform.create import check_version
from worker.perform.writer import PerformFailed, RoomWriter

CREATE = "m.room.create"
POWER_LEVELS = "m.room.power_levels"
TOMBSTONE = "m.room.tombstone"
JOIN_RULES = "m.room.join_rules"
CANONICAL_ALIAS = "m.room.canonical_alias"
# Never copied as they are: the new room makes its own, or they belong to the old room's
# history (the canonical alias is split by `split_canonical_alias`).
NOT_COPIED = frozenset({
    CREATE, MEMBER, TOMBSTONE, POWER_LEVELS, CANONICAL_ALIAS, "m.room.third_party_invite",
})
# Create content keys the new room keeps.
KEPT_CREATE_KEYS = ("type", "m.federate")


def _int_level(value: Any) -> Any:
    """Levels as integers: v1-v9 allowed strings ("50"), v10+ refuse them."""
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return value


def normalised_levels(content: dict[str, Any], rules: RoomRules, creator: str) -> dict[str, Any]:
    """Power levels content fit for a new room of `rules` created by `creator`."""
    levels = copy.deepcopy(content)
    for name in ("ban", "kick", "redact", "invite", "events_default", "state_default",
                 "users_default"):
        if name in levels:
            levels[name] = _int_level(levels[name])
    for group in ("users", "events", "notifications"):
        if isinstance(levels.get(group), dict):
            levels[group] = {k: _int_level(v) for k, v in levels[group].items()}
    if rules.privileged_creators and isinstance(levels.get("users"), dict):
        levels["users"].pop(creator, None)
    return levels


def _needed_level(levels: dict[str, Any]) -> int:
    """The highest level any action of these power levels requires."""
    found = [100]
    for name in ("ban", "kick", "redact", "invite", "events_default", "state_default"):
        if isinstance(levels.get(name), int):
            found.append(levels[name])
    found += [v for v in (levels.get("events") or {}).values() if isinstance(v, int)]
    return max(found)


def _is_ours(alias: Any, server_name: str) -> bool:
    return isinstance(alias, str) and alias.startswith("#") and domain_of(alias) == server_name


def split_canonical_alias(
    content: dict[str, Any], server_name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the new room's canonical alias content, the old room's after the move): this server's
    aliases go to the new room, everything else stays."""
    new: dict[str, Any] = {}
    old = copy.deepcopy(content)
    if _is_ours(content.get("alias"), server_name):
        new["alias"] = old.pop("alias")
    alt = content.get("alt_aliases")
    if isinstance(alt, list):
        moved = [a for a in alt if _is_ours(a, server_name)]
        kept = [a for a in alt if not _is_ours(a, server_name)]
        if moved:
            new["alt_aliases"] = moved
        if kept:
            old["alt_aliases"] = kept
        else:
            old.pop("alt_aliases", None)
    return new, old


def upgrade_drafts(
    state: dict[StateKey, Event],
    rules: RoomRules,
    user: str,
    old_room_id: str,
    last: str,
    invitees: list[str],
    server_name: str,
) -> list[Draft]:
    """The events of the replacement room, in order."""
    old_create = state[(CREATE, "")]
    content: dict[str, Any] = {
        k: old_create.content[k] for k in KEPT_CREATE_KEYS if k in old_create.content
    }
    content["room_version"] = rules.version
    content["predecessor"] = {"room_id": old_room_id, "event_id": last}
    old_levels = state.get((POWER_LEVELS, ""))
    levels = normalised_levels(dict(old_levels.content) if old_levels else {}, rules, user)
    drafts = [Draft(CREATE, user, content, ""), Draft(MEMBER, user, {"membership": "join"}, user)]
    if rules.privileged_creators:
        drafts.append(Draft(POWER_LEVELS, user, levels, ""))
        raised = False
    else:
        boosted = copy.deepcopy(levels)
        boosted.setdefault("users", {})[user] = _needed_level(levels)
        drafts.append(Draft(POWER_LEVELS, user, boosted, ""))
        raised = boosted != levels
    for (event_type, state_key), event in sorted(state.items()):
        if event_type in NOT_COPIED:
            continue
        if state_key.startswith("@") and state_key != user:
            continue
        drafts.append(Draft(event_type, user, dict(event.content), state_key))
    canonical = state.get((CANONICAL_ALIAS, ""))
    if canonical is not None:
        moved, _ = split_canonical_alias(dict(canonical.content), server_name)
        if moved:
            drafts.append(Draft(CANONICAL_ALIAS, user, moved, ""))
    for (event_type, state_key), event in sorted(state.items()):
        if event_type == MEMBER and event.membership == "ban":
            drafts.append(Draft(MEMBER, user, {"membership": "ban"}, state_key))
    for invitee in invitees:
        drafts.append(Draft(MEMBER, user, {"membership": "invite"}, invitee))
    if raised:
        drafts.append(Draft(POWER_LEVELS, user, levels, ""))
    return drafts


def restricted_levels(content: dict[str, Any]) -> dict[str, Any] | None:
    """The old room's power levels after the upgrade, or None when nothing changes."""
    levels = copy.deepcopy(content)
    users_default = _int_level(levels.get("users_default", 0))
    restricted = max(50, (users_default if isinstance(users_default, int) else 0) + 1)
    changed = False
    for name, default in (("events_default", 0), ("invite", 0)):
        current = _int_level(levels.get(name, default))
        if not isinstance(current, int) or current < restricted:
            levels[name] = restricted
            changed = True
    return levels if changed else None


def _old_room_drafts(
    state: dict[StateKey, Event], user: str, new_room: str, server_name: str
) -> list[Draft]:
    """Tombstone, the canonical alias without the moved aliases, then the restricted power
    levels, of the old room."""
    drafts = [Draft(TOMBSTONE, user, {
        "body": "This room has been replaced", "replacement_room": new_room,
    }, "")]
    canonical = state.get((CANONICAL_ALIAS, ""))
    if canonical is not None:
        moved, kept = split_canonical_alias(dict(canonical.content), server_name)
        if moved:
            drafts.append(Draft(CANONICAL_ALIAS, user, kept, ""))
    old_levels = state.get((POWER_LEVELS, ""))
    restricted = restricted_levels(dict(old_levels.content) if old_levels else {})
    if restricted is not None:
        drafts.append(Draft(POWER_LEVELS, user, restricted, ""))
    return drafts


def _local_invitees(state: dict[StateKey, Event], user: str, server_name: str) -> list[str]:
    """Local members to invite into the new room: all joined ones, unless it is public."""
    join_rule = state.get((JOIN_RULES, ""))
    if join_rule is not None and join_rule.content.get("join_rule") == "public":
        return []
    return [
        member for (event_type, member), event in sorted(state.items())
        if event_type == MEMBER and event.membership == "join" and member != user
        and domain_of(member) == server_name
    ]


async def upgrade(writer: RoomWriter, req: UpgradeRequest) -> UpgradeResponse:
    writer.local_user(req.user_id, "user_id")
    if not req.new_version:
        raise PerformFailed("bad_request", "new_version is required")
    rules = check_version(writer, req.new_version)
    await writer.rules_of(req.room_id)
    async with writer.locks.hold(req.room_id):
        state = await writer.state_events(req.room_id, None)
        head = await writer.head(req.room_id, [])
        head = RoomHead(head.rules, req.room_id, head.latest, state)
        # 1: may the user send the tombstone and restrict the levels? (Built to be checked;
        # the real ones name the new room.)
        probe = head
        replacement = "!replacement:" + writer.server_name
        for draft in _old_room_drafts(state, req.user_id, replacement, writer.server_name):
            probe = probe.advance(writer.build(draft, probe))
        last = max(head.latest, key=lambda e: (e.depth, e.event_id)).event_id
        new_room = "" if rules.room_id_from_create_event else writer.opaque_id("!")
        invitees = _local_invitees(state, req.user_id, writer.server_name)
        drafts = upgrade_drafts(
            state, rules, req.user_id, req.room_id, last, invitees, writer.server_name
        )
        # 2, 3: the replacement room.
        built = await writer.write_chain(RoomHead(rules, new_room), drafts)
        new_room = built[0].room_id
        # 4: aliases and the directory listing follow.
        await writer.store.move_aliases(req.room_id, new_room)
        if await writer.store.is_published(req.room_id):
            await writer.store.set_published(new_room, True)
            await writer.store.set_published(req.room_id, False)
        # 5, 6, 7: tombstone, canonical alias and restricted power levels in the old room.
        old_drafts = _old_room_drafts(state, req.user_id, new_room, writer.server_name)
        await writer.write_chain(await writer.head(req.room_id, old_drafts), old_drafts)
    return UpgradeResponse(replacement_room_id=new_room)


__all__ = ["restricted_levels", "split_canonical_alias", "upgrade", "upgrade_drafts"]
