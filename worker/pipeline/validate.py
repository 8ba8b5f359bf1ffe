"""Step 2 of DESIGN §2: the room version, the PDU's format and its event ID.

A PDU that fails here is `invalid`: it is never stored, the producer is told why, and the bus
copies the message to the dead-letter stream. An event for a room we do not know (and that
is not the room's create event) is `rejected` with `room_unknown` and not stored, so that a
later delivery, once the room exists, can still succeed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from worker.core.format import check_event_id, parse_pdu
from worker.core.outcomes import Outcome, Rejection
from worker.core.versions import EventIdFormat, rules_for
from worker.messages import InputRoomEvent
from worker.pipeline.model import KINDS, Result, Work, refused
from worker.pipeline.ports import RoomStore

CREATE = "m.room.create"


def _claimed_id(pdu: Any) -> str:
    """The event ID the PDU carries, if any (always in v1/v2; optional, unsigned, later)."""
    if isinstance(pdu, dict):
        claimed = pdu.get("event_id")
        if isinstance(claimed, str):
            return claimed
    return ""


def _decode(data: bytes) -> dict[str, Any] | Rejection:
    try:
        pdu = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        return Rejection("bad_json", f"the event is not valid JSON: {exc}")
    if not isinstance(pdu, dict):
        return Rejection("not_an_object", "the event must be a JSON object")
    return pdu


def _version_for_new_room(pdu: dict[str, Any], inp: InputRoomEvent) -> str | Rejection:
    """The version of a room that does not exist yet: only its create event may make it."""
    if pdu.get("type") != CREATE or pdu.get("state_key") != "":
        return Rejection(
            "room_unknown",
            "the room is not known here and the event is not the room's m.room.create event",
        )
    content = pdu.get("content")
    named = content.get("room_version") if isinstance(content, dict) else None
    if named is None:
        # Room version 1 predates the field; the producer's hint is used when it gave one.
        return inp.room_version or "1"
    if not isinstance(named, str):
        return Rejection("wrong_type", "m.room.create content.room_version must be a string")
    return named


async def validate(store: RoomStore, room_id: str, inp: InputRoomEvent) -> Work | Result:
    """Decode and validate the PDU; a `Result` when the input is refused here."""
    pdu = _decode(bytes(inp.event))
    claimed = _claimed_id(pdu)
    if isinstance(pdu, Rejection):
        return refused(claimed, Outcome.INVALID, pdu)
    if inp.kind not in KINDS:
        bad_kind = Rejection("bad_kind", f"input kind {inp.kind!r} is not new, outlier or old")
        return refused(claimed, Outcome.INVALID, bad_kind)
    if pdu.get("room_id", room_id) != room_id:
        wrong = Rejection("wrong_room", "the event's room_id differs from the input's room")
        return refused(claimed, Outcome.INVALID, wrong)
    room = await store.room(room_id)
    version = room.version if room is not None else _version_for_new_room(pdu, inp)
    if isinstance(version, Rejection):
        outcome = Outcome.REJECTED if version.code == "room_unknown" else Outcome.INVALID
        return refused(claimed, outcome, version)
    rules = rules_for(version)
    if rules is None:
        unknown = Rejection("unsupported_room_version", f"room version {version!r} is not known")
        return refused(claimed, Outcome.INVALID, unknown)
    hashed = rules.event_id_format is not EventIdFormat.CARRIED
    if hashed and "event_id" in pdu:
        # From v3 the ID is not part of the PDU (it is its reference hash); a producer may
        # still send it along, and then it must be the one the hash derives.
        pdu = {k: v for k, v in pdu.items() if k != "event_id"}
    event = parse_pdu(pdu, rules)
    if isinstance(event, Rejection):
        return refused(claimed, Outcome.INVALID, event)
    if claimed and hashed:
        mismatch = check_event_id(pdu, rules, claimed)
        if mismatch is not None:
            return refused(claimed, Outcome.INVALID, mismatch)
    return Work(room_id, inp, event, pdu, rules, room_known=room is not None)
