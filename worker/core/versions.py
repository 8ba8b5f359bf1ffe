"""Room versions 1 to 12 as rule flags.

Each version is written as the one before it plus its changes, so that reading down the file
reads the spec's changelog. Code branches on these flags, never on version strings (STYLE R2).

Spec: https://spec.matrix.org/latest/rooms/ (one page per version, "Room version N").
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass


class EventIdFormat(enum.Enum):
    # v1, v2: the event carries its own `event_id` ("$localpart:server").
    CARRIED = "carried"
    # v3: "$" + standard base64 (unpadded) of the reference hash.
    BASE64 = "base64"
    # v4+: "$" + URL-safe base64 (unpadded) of the reference hash.
    URLSAFE_BASE64 = "urlsafe_base64"


class StateResAlgorithm(enum.Enum):
    V1 = "v1"  # room version 1
    V2 = "v2"  # room versions 2 to 11
    V2_1 = "v2.1"  # room version 12 (MSC4297)


class RedactionAlgorithm(enum.Enum):
    V1 = "v1"  # v1 to v5
    V6 = "v6"  # v6, v7: no special case for m.room.aliases
    V8 = "v8"  # v8: keeps join_rules `allow`
    V9 = "v9"  # v9, v10: keeps member `join_authorised_via_users_server`
    V11 = "v11"  # v11, v12: the v11 changes (create content, PL `invite`, 3pid `signed`, ...)


@dataclass(frozen=True, slots=True)
class RoomRules:
    """Everything that differs between room versions, as flags."""

    version: str
    # Stable versions are advertised; none of ours is experimental.
    stable: bool
    event_id_format: EventIdFormat
    # v1, v2: prev_events/auth_events are [[event_id, {hashes}], ...]; v3+: lists of IDs.
    reference_pairs: bool
    state_res: StateResAlgorithm
    redaction: RedactionAlgorithm
    # v1 to v5: m.room.aliases has its own auth rule (step 4 in those versions).
    special_case_aliases_auth: bool
    # v6+: integers outside [-(2**53)+1, 2**53-1] and floats make an event invalid.
    strict_canonical_json: bool
    # v6+: the `notifications` key of m.room.power_levels is checked like the others.
    limit_notifications_power_levels: bool
    # v7+: membership `knock` and join rule `knock`.
    knock: bool
    # v8+: join rule `restricted` with `join_authorised_via_users_server`.
    restricted_join_rule: bool
    # v10+: join rule `knock_restricted`.
    knock_restricted_join_rule: bool
    # v10+: power level values must be integers (strings like "50" make the event invalid).
    integer_power_levels: bool
    # v11+: the create event has no `creator`; the room creator is the create event's sender.
    implicit_room_creator: bool
    # v11+: a redaction's `redacts` lives in its content (top-level before).
    redacts_in_content: bool
    # v12+: the room ID is "!" + URL-safe base64 of the create event's reference hash, the
    # create event has no `room_id`, and is not listed in `auth_events`.
    room_id_from_create_event: bool
    # v12+: the creators (create sender + `additional_creators`) have infinite power level
    # and may not appear in m.room.power_levels `users`.
    privileged_creators: bool


V1 = RoomRules(
    version="1",
    stable=True,
    event_id_format=EventIdFormat.CARRIED,
    reference_pairs=True,
    state_res=StateResAlgorithm.V1,
    redaction=RedactionAlgorithm.V1,
    special_case_aliases_auth=True,
    strict_canonical_json=False,
    limit_notifications_power_levels=False,
    knock=False,
    restricted_join_rule=False,
    knock_restricted_join_rule=False,
    integer_power_levels=False,
    implicit_room_creator=False,
    redacts_in_content=False,
    room_id_from_create_event=False,
    privileged_creators=False,
)
V2 = dataclasses.replace(V1, version="2", state_res=StateResAlgorithm.V2)
V3 = dataclasses.replace(
    V2, version="3", event_id_format=EventIdFormat.BASE64, reference_pairs=False
)
V4 = dataclasses.replace(V3, version="4", event_id_format=EventIdFormat.URLSAFE_BASE64)
# v5 enforces signing-key validity periods: checked upstream by the federation service.
V5 = dataclasses.replace(V4, version="5")
V6 = dataclasses.replace(
    V5,
    version="6",
    redaction=RedactionAlgorithm.V6,
    special_case_aliases_auth=False,
    strict_canonical_json=True,
    limit_notifications_power_levels=True,
)
V7 = dataclasses.replace(V6, version="7", knock=True)
V8 = dataclasses.replace(V7, version="8", redaction=RedactionAlgorithm.V8, restricted_join_rule=True)
V9 = dataclasses.replace(V8, version="9", redaction=RedactionAlgorithm.V9)
V10 = dataclasses.replace(
    V9, version="10", knock_restricted_join_rule=True, integer_power_levels=True
)
V11 = dataclasses.replace(
    V10, version="11", redaction=RedactionAlgorithm.V11,
    implicit_room_creator=True,
    redacts_in_content=True,
)
V12 = dataclasses.replace(
    V11,
    version="12",
    state_res=StateResAlgorithm.V2_1,
    room_id_from_create_event=True,
    privileged_creators=True,
)

ROOM_VERSIONS: dict[str, RoomRules] = {
    r.version: r for r in (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12)
}


def rules_for(version: str) -> RoomRules | None:
    """The rules of a room version, or None for a version we do not know."""
    return ROOM_VERSIONS.get(version)
