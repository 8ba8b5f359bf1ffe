"""Rule 1 (`m.room.create`), the v12 room ID rule, and who the room's creators are.

Spec: https://spec.matrix.org/latest/rooms/v12/#authorisation-rules (rules 1 and 2), and the
rule 1 of each earlier version page (https://spec.matrix.org/latest/rooms/v1/ to v11).
"""

from __future__ import annotations

from worker.core.auth.common import domain_of, is_valid_user_id, reject
from worker.core.events import Event
from worker.core.outcomes import Rejection
from worker.core.versions import ROOM_VERSIONS


def check_create(event: Event) -> Rejection | None:
    """Rule 1 (all versions): the create event stands alone; no auth events are consulted.

    Rule names: "m.room.create/x" for step 1.x of the v12 text; v1-v10 have 1.4 = `creator` present, v11
    has no 1.4, v12 has 1.4 = `additional_creators`. Whether `content.room_version` names the
    version the room is processed with is not an auth rule: the pipeline reads the version
    from the create event in the first place.
    """
    rules = event.rules
    # 1.1 (all versions): it has no `prev_events`, since nothing can come before the room.
    # Both the parsed IDs and the raw field are looked at: a malformed non-empty list that
    # yields no IDs is still "any prev_events".
    if event.prev_event_ids or event.pdu.get("prev_events"):
        return reject("create_not_first", "m.room.create/1", "The create event has prev_events.")
    if rules.room_id_from_create_event:
        # 1.2 (v12+): the room ID is derived from the create event's ID, so the event itself
        # must not carry one (it would be circular).
        if "room_id" in event.pdu:
            return reject(
                "bad_create", "m.room.create/2", "A v12 create event must not have a room_id."
            )
    # 1.2 (v1-v11): a server may only create rooms in its own namespace, so that two servers
    # cannot both claim one room ID. (v12 room IDs are hashes and cannot collide.)
    elif domain_of(event.room_id) != domain_of(event.sender) or not domain_of(event.sender):
        return reject(
            "bad_create",
            "m.room.create/2",
            "The domain of the room ID does not match the domain of the create event's sender.",
        )
    # 1.3 (all versions): `content.room_version`, when present, names a version we know.
    # A missing one means "1"; a non-string one cannot name any version.
    if "room_version" in event.content:
        version = event.content["room_version"]
        if not isinstance(version, str) or version not in ROOM_VERSIONS:
            return reject(
                "unknown_room_version",
                "m.room.create/3",
                f"The create event names an unknown room version {version!r}.",
            )
    # 1.4 (v1-v10): the creator is named in content (it decides the first join, 5.3.1, and
    # the level 100 before any power levels event). v11 made the sender the creator.
    if not rules.implicit_room_creator and "creator" not in event.content:
        return reject("bad_create", "m.room.create/4", "The create event has no content.creator.")
    # 1.4 (v12+): `additional_creators`, when present, is a list of valid user IDs: they get
    # infinite power, so a malformed entry must not leave servers disagreeing about who.
    if rules.privileged_creators and "additional_creators" in event.content:
        extra = event.content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            return reject(
                "bad_additional_creators",
                "m.room.create/4",
                "content.additional_creators must be a list of valid user IDs.",
            )
    # 1.5: otherwise, allow.
    return None


def check_room_id(event: Event, create: Event) -> Rejection | None:
    """Rule 2 (v12+): the room ID is the create event's ID with the sigil `!` instead of `$`.

    That the create event was itself accepted is the caller's concern (it never hands in a
    rejected create event).
    """
    # v1-v11: the room ID is chosen by the creating server and checked by rule 1.2 (domain)
    # and rule 2.5 (auth events in the same room), nothing to do here.
    if not event.rules.room_id_from_create_event:
        return None
    # "The room ID is the event ID of the event with sigil ! instead of $." Comparing the
    # strings, not re-hashing: the create event's ID was checked against its reference hash
    # when it was parsed (format validation).
    expected = "!" + create.event_id[1:]
    if not create.event_id.startswith("$") or event.room_id != expected:
        return reject(
            "bad_room_id",
            "room/2",
            f"The room ID {event.room_id!r} is not derived from the create event {create.event_id!r}.",
        )
    return None


def creators(create: Event) -> frozenset[str]:
    """The room creators, per the create event's room version.

    v1-v10: `content.creator`. v11: the create event's sender. v12+: the sender plus the
    valid entries of `content.additional_creators` (an accepted create event has only valid
    ones, rule 1.4).
    """
    rules = create.rules
    if not rules.implicit_room_creator:
        creator = create.content.get("creator")
        return frozenset((creator,)) if isinstance(creator, str) else frozenset()
    found = {create.sender}
    if rules.privileged_creators:
        extra = create.content.get("additional_creators")
        if isinstance(extra, list):
            found.update(u for u in extra if isinstance(u, str))
    return frozenset(found)
