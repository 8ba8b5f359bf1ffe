"""Step 2 of DESIGN §2: the room version, the PDU's format, its event ID and its content hash.

A PDU that fails here is `invalid`: it is never stored, the producer is told why, and the bus
copies the message to the dead-letter stream. That includes a PDU without a content hash
(`hashes.sha256`) or with one that is not base64. A PDU whose content hash does not match its
content goes on in its redacted form (spec, "Checks performed on receipt of a PDU", step 3,
as Synapse does): it is processed, stored and published redacted, and its reply says so
with `content_hash_mismatch` when nothing else refused it.

An event for a room we do not know (and that is not the room's create event) is `rejected`
with `room_unknown` and not stored, so that a later delivery, once the room exists, can
still succeed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from worker.core.events import Event
from worker.core.format import MAX_RAW_BYTES, check_event_id, parse_pdu
from worker.core.hashes import check_content_hash, room_id_for_create
from worker.core.outcomes import Outcome, Rejection
from worker.core.reasons import Reason
from worker.core.redaction import redact
from worker.core.versions import V1, EventIdFormat, RoomRules, rules_for
from worker.messages import InputRoomEvent
from worker.pipeline.authstep import is_create
from worker.pipeline.handoff import BuiltEvents
from worker.pipeline.model import KINDS, Result, RoomInfo, Work, refused

CREATE = "m.room.create"

# Why an input otherwise accepted (or an outlier) was processed in its redacted form.
CONTENT_HASH_MISMATCH = Rejection(
    "content_hash_mismatch",
    "the content hash (hashes.sha256) does not match the event's content: the event was "
    "processed and stored in its redacted form",
    "pdu.hashes.sha256",
)


def _claimed_id(pdu: Any) -> str:
    """The event ID the PDU carries, if any (always in v1/v2; optional, unsigned, later)."""
    if isinstance(pdu, dict):
        claimed = pdu.get("event_id")
        if isinstance(claimed, str):
            return claimed
    return ""


def _decode(data: bytes) -> dict[str, Any] | Rejection:
    """The PDU as a JSON object; the core's own reason when it is not one."""
    pdu: Any = None
    if len(data) <= MAX_RAW_BYTES:
        try:
            pdu = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            pdu = None
    if isinstance(pdu, dict):
        return pdu
    # Decoding does not depend on the room version: let the core say what is wrong, with
    # the same reason codes as everywhere else.
    problem = parse_pdu(data, V1)
    if isinstance(problem, Rejection):
        return problem
    return Rejection(Reason.NOT_OBJECT, "the PDU is not a JSON object")


def _version(room: RoomInfo | None, pdu: Mapping[str, Any], inp: InputRoomEvent) -> str | Rejection:
    """The room version to validate against: the room's; for a room not known yet, the one
    its create event names, or the producer's `room_version` (then format is checked, and
    the event refused as `room_unknown` afterwards)."""
    if room is not None:
        return room.version
    if pdu.get("type") == CREATE and pdu.get("state_key") == "":
        content = pdu.get("content")
        named = content.get("room_version") if isinstance(content, dict) else None
        if named is None:
            # Room version 1 predates the field; the producer's hint is used when given.
            return inp.room_version or "1"
        if not isinstance(named, str):
            return Rejection("wrong_type", "m.room.create content.room_version must be a string")
        return named
    if inp.room_version:
        return inp.room_version
    return _UNKNOWN_ROOM


_UNKNOWN_ROOM = Rejection(
    "room_unknown",
    "the room is not known here and the event is not the room's m.room.create event",
)


class RoomVersions(Protocol):
    """What validation reads from the store: the room's version."""

    async def room(self, room_id: str) -> RoomInfo | None:
        """The room, or None for a room not stored here."""
        ...


async def validate(
    store: RoomVersions,
    room_id: str,
    inp: InputRoomEvent,
    *,
    room: RoomInfo | None = None,
    built: BuiltEvents | None = None,
) -> Work | Result:
    """Decode and validate the PDU; a `Result` when the input is refused here. `room`: the
    room as it will be when the input is handled, if the caller knows better than the store
    (a batch validating ahead the events after a new room's create event). `built`: the
    events this process built, taken instead of decoded when the input's bytes are theirs."""
    data = bytes(inp.event)
    prebuilt = built.take(data) if built is not None else None
    if prebuilt is not None:
        work = await _built_work(store, room_id, inp, room, prebuilt)
        if work is not None:
            return work
    pdu = _decode(data)
    claimed = _claimed_id(pdu)
    if isinstance(pdu, Rejection):
        return refused(claimed, Outcome.INVALID, pdu)
    if inp.kind not in KINDS:
        bad_kind = Rejection("bad_kind", f"input kind {inp.kind!r} is not new, outlier, old or invite")
        return refused(claimed, Outcome.INVALID, bad_kind)
    if room is None:
        room = await store.room(room_id)
    version = _version(room, pdu, inp)
    if isinstance(version, Rejection):
        outcome = Outcome.REJECTED if version is _UNKNOWN_ROOM else Outcome.INVALID
        return refused(claimed, outcome, version)
    rules = rules_for(version)
    if rules is None:
        unknown = Rejection("unsupported_room_version", f"room version {version!r} is not known")
        return refused(claimed, Outcome.INVALID, unknown)
    event = _parse(pdu, rules, claimed)
    if isinstance(event, Rejection):
        return refused(claimed, Outcome.INVALID, event)
    if _room_of(event) != room_id:
        wrong = Rejection("wrong_room", "the event's room_id differs from the input's room")
        return refused(event.event_id, Outcome.INVALID, wrong)
    if room is None and not is_create(event) and inp.kind != "invite":
        return refused(event.event_id, Outcome.REJECTED, _UNKNOWN_ROOM)
    # `_parse` validated the PDU: under strict rules its hashed parts hold no float.
    hashed = check_content_hash(event.pdu, float_free=rules.strict_canonical_json)
    if isinstance(hashed, Rejection):
        return refused(event.event_id, Outcome.INVALID, hashed)
    if not hashed:
        event = Event(redact(event.pdu, rules), event.event_id, rules)
    work = Work(room_id, inp, event, event.pdu, rules, room_known=room is not None)
    if not hashed:
        work.note = CONTENT_HASH_MISMATCH
    return work


async def _built_work(
    store: RoomVersions, room_id: str, inp: InputRoomEvent, room: RoomInfo | None, event: Event
) -> Work | None:
    """The work of an input carrying an event this process built (`worker.pipeline.handoff`):
    what `validate` makes of the same bytes, without decoding and checking them again. The
    builder validated the PDU, derived its ID and computed its content hash from it; what
    the bytes do not decide (the input's kind, room and the room's version) is checked here.
    None when any of that differs from what the event was built for: then it is validated
    as any input is."""
    if inp.kind != "new":
        return None
    if room is None:
        room = await store.room(room_id)
    if room is None and not is_create(event):
        return None
    if _version(room, event.pdu, inp) != event.rules.version or _room_of(event) != room_id:
        return None
    return Work(room_id, inp, event, event.pdu, event.rules, room_known=room is not None)


def _room_of(event: Event) -> str:
    """The room an event belongs to; in v12+ a create event's room ID derives from it."""
    if is_create(event) and event.rules.room_id_from_create_event:
        return room_id_for_create(event.pdu, event.rules)
    return event.room_id


def _parse(pdu: dict[str, Any], rules: RoomRules, claimed: str) -> Event | Rejection:
    """Format validation and the event ID check of the room version."""
    hashed = rules.event_id_format is not EventIdFormat.CARRIED
    if hashed and "event_id" in pdu:
        # From v3 the ID is not part of the PDU (it is its reference hash); a producer may
        # still send it along, and then it must be the one the hash derives.
        pdu = {k: v for k, v in pdu.items() if k != "event_id"}
    event = parse_pdu(pdu, rules)
    if isinstance(event, Rejection) or not (claimed and hashed):
        return event
    mismatch = check_event_id(pdu, rules, claimed, derived=event.event_id)
    return mismatch if mismatch is not None else event
