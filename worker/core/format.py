"""PDU format validation: is this a well-formed event of its room version?

Spec: https://spec.matrix.org/latest/server-server-api/#pdus (the PDU fields, "Size limits"),
https://spec.matrix.org/latest/rooms/v1/#event-format and
https://spec.matrix.org/latest/rooms/v3/#event-format (event format per version),
https://spec.matrix.org/latest/rooms/v12/#event-format (v12 create event without room_id),
https://spec.matrix.org/latest/appendices/#canonical-json (value rules, v6+),
https://spec.matrix.org/latest/appendices/#identifier-grammar.

An event that fails here is `invalid` (DESIGN §2 step 2): it never reaches the auth rules and
is not stored as part of the room. Every problem is a `Rejection` with a stable code from
`worker.core.reasons` and a sentence naming the field; nothing here raises on bad input.

What we deliberately do *not* check, and why:
* `signatures` are checked upstream by the federation service (DESIGN §1). They and `hashes`
  are optional here (type-checked when present) so that locally built and fixture events need
  not carry them; the pipeline holds every input to its content hash
  (`hashes.check_content_hash`).
* Rules that need other events (auth events, the create event, the room's state) are the
  auth rules' business (`worker.core.auth`).
* `origin` is deprecated since v3 and optional everywhere; a string when present.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from worker.core import ids
from worker.core.canonical import (
    MAX_SAFE_INT,
    check_json_values,
    encode_canonical,
    encode_canonical_float_free,
)
from worker.core.events import Event
from worker.core.hashes import compute_event_id
from worker.core.outcomes import Rejection
from worker.core.reasons import Reason
from worker.core.versions import EventIdFormat, RoomRules

# "The complete event MUST NOT be larger than 65536 bytes, when formatted with the federation
# event format, including any signatures, and encoded as Canonical JSON."
MAX_PDU_BYTES = 65_536
# Raw input above this is refused before decoding. Canonical re-encoding can shrink JSON (a
# "\u0041" escape becomes "A", whitespace vanishes), so the bound is well above 6 x 64 KiB;
# only a sender padding a PDU with a megabyte of whitespace could be refused "unfairly".
MAX_RAW_BYTES = 1 << 20
# "type, state_key, sender, room_id, event_id: 255 bytes" (spec, Size limits).
MAX_FIELD_BYTES = 255
# Synapse refuses received events with more (`_sanity_check_event` in its federation event
# handler: more edges mean bigger state resolutions and fetch cascades). Accepting what the
# reference server drops would make our view of the room differ from everybody else's.
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10

_CREATE = "m.room.create"
# Top-level keys that are part of no hash and no signature.
_UNHASHED_KEYS = frozenset({"unsigned"})

# msgspec refuses lone-surrogate escapes, NaN and numbers beyond float range, which is what we
# want; big integers decode as Python ints, exactly. Built once (STYLE R7).
_DECODER = msgspec.json.Decoder()


def room_version_of_create(pdu: Mapping[str, Any]) -> str:
    """The room version a create event names: `content.room_version`, default "1".

    Spec: m.room.create, "room_version: ... If not present, the room version is '1'". A
    non-string value gives "" (a version nobody knows), so the caller refuses the room.
    """
    content = pdu.get("content")
    if not isinstance(content, Mapping):
        return "1"
    version = content.get("room_version", "1")
    return version if isinstance(version, str) else ""


def validate_pdu(pdu: Mapping[str, Any], rules: RoomRules) -> Rejection | None:
    """Check the format of a PDU for its room version. Returns the first problem, or None.

    The order is fixed (and tested) so a given bad event always gets the same code: JSON
    values, size, required fields and types, field lengths, identifier grammar, integer
    ranges, references.
    """
    checked = _validate(pdu, rules)
    return checked if isinstance(checked, Rejection) else None


def _validate(
    pdu: Mapping[str, Any], rules: RoomRules, *, values_checked: bool = False
) -> Rejection | bytes:
    """`validate_pdu`, answering the PDU's canonical JSON when it is valid. `values_checked`:
    step 1 is done (see `parse_pdu`)."""
    # A PDU is a JSON object; anything else is not an event at all.
    if not isinstance(pdu, Mapping):
        return _reject(Reason.NOT_OBJECT, "the PDU is not a JSON object", "pdu")
    if not isinstance(pdu, dict):
        # The value walk and the encoder speak JSON types; any other Mapping is read as one.
        pdu = dict(pdu)
    # 1. Canonical JSON value rules. Since v6: no floats, integers within ±(2**53-1). All
    #    versions: nesting within MAX_NESTING. First, because every later step (and every
    #    hash) walks or encodes the whole value and must be able to.
    #    `unsigned` is exempt from the value rules (not from nesting): it is covered by no
    #    hash or signature, any server may rewrite it, and Synapse filters it before these
    #    checks; refusing an event for it would drop an event every other server accepts.
    if not values_checked:
        problem = check_json_values(
            pdu, strict=rules.strict_canonical_json, lenient_keys=_UNHASHED_KEYS
        )
        if problem is not None:
            return problem
    # 2. Size limit on the whole PDU, as canonical JSON, signatures included (all versions).
    #    Encoding can still fail on a Mapping built in Python (lone surrogates): a value with
    #    no canonical form has no hash, so it cannot be an event. Under strict rules step 1
    #    left no float outside `unsigned`, so without one the faster encoding is exact.
    float_free = rules.strict_canonical_json and "unsigned" not in pdu
    try:
        canonical = encode_canonical_float_free(pdu) if float_free else encode_canonical(pdu)
    except (ValueError, TypeError) as exc:
        return _reject(Reason.BAD_JSON, f"the PDU has no canonical JSON form ({exc})", "pdu")
    size = len(canonical)
    if size > MAX_PDU_BYTES:
        return _reject(
            Reason.TOO_LARGE,
            f"the PDU is {size} bytes as canonical JSON, more than {MAX_PDU_BYTES}",
            "pdu.size",
        )
    # 3-7. Field presence and types, field lengths, identifier grammar, integer ranges,
    #      references; each in its own function below, in this order.
    for check in (_check_fields, _check_lengths, _check_ids, _check_integers, _check_refs):
        problem = check(pdu, rules)
        if problem is not None:
            return problem
    return canonical


def parse_pdu(
    data: bytes | Mapping[str, Any],
    rules: RoomRules,
    *,
    event_id: str | None = None,
    values_checked: bool = False,
) -> Event | Rejection:
    """Decode, validate and identify a PDU. Never raises on bad input.

    `data` is the raw JSON (bytes) or an already decoded object. When `event_id` is given it
    is used as is (test DAGs and CLIs use readable IDs); otherwise the ID is derived by the
    room version (`hashes.compute_event_id`). Use `check_event_id` to hold a claimed ID to
    the derived one. `values_checked`: the caller has held `data` (an object) to
    `check_json_values` with this version's strictness and `unsigned` lenient, as the
    first step of validation does (the builder checks a PDU before it hashes it).
    """
    if isinstance(data, bytes | bytearray | memoryview):
        decoded = _decode(bytes(data))
        if isinstance(decoded, Rejection):
            return decoded
        pdu: Any = decoded
    elif isinstance(data, Mapping) and not isinstance(data, dict):
        # The Event keeps the PDU for hashing and storage, which need plain JSON types.
        pdu = dict(data)
    else:
        pdu = data
    checked = _validate(pdu, rules, values_checked=values_checked and isinstance(pdu, dict))
    if isinstance(checked, Rejection):
        return checked
    if event_id is None:
        # Validated under strict rules, the hashed parts of the PDU hold no float.
        event_id = compute_event_id(pdu, rules, float_free=rules.strict_canonical_json)
    event = Event(pdu, event_id, rules)
    event.canonical = checked
    return event


def check_event_id(
    pdu: Mapping[str, Any], rules: RoomRules, claimed: str, *, derived: str | None = None
) -> Rejection | None:
    """Refuse an event whose claimed ID is not the one its room version derives (DESIGN §1).

    v1, v2: the claim must equal the carried `event_id`. v3+: it must equal `$` + the
    (version's) base64 of the reference hash. Meant for a PDU that `validate_pdu` accepted;
    one that cannot be hashed at all is refused with `bad_json` rather than raising.
    `derived`: the ID `parse_pdu` already derived for this PDU (hashing it again is the
    costliest part of validating an input).
    """
    if derived is not None:
        pass
    elif rules.event_id_format is EventIdFormat.CARRIED:
        # v1, v2: the ID is whatever the event says; a claim can only contradict it.
        derived = pdu.get("event_id")
    else:
        # v3+: the ID is a hash of the redacted event, so it cannot be chosen, only derived.
        try:
            derived = compute_event_id(pdu, rules)
        except (ValueError, TypeError) as exc:
            return _reject(Reason.BAD_JSON, f"the event cannot be hashed ({exc})", "event_id")
    if claimed != derived:
        return _reject(
            Reason.EVENT_ID_MISMATCH,
            f"the event ID {claimed!r} does not match the ID {derived!r} derived from the event",
            "event_id",
        )
    return None


def _decode(data: bytes) -> Any:
    """Bytes to a JSON object, or a Rejection (bad UTF-8, syntax, nesting, not an object)."""
    if len(data) > MAX_RAW_BYTES:
        return _reject(
            Reason.TOO_LARGE,
            f"the PDU is {len(data)} bytes, far beyond {MAX_PDU_BYTES}",
            "pdu.size",
        )
    try:
        value = _DECODER.decode(data)
    except RecursionError:
        # msgspec gives up near Python's recursion limit; our own limit is lower anyway.
        return _reject(Reason.TOO_DEEP, "the JSON is nested too deeply to decode", "canonical-json")
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        return _reject(Reason.BAD_JSON, f"the PDU is not valid UTF-8 JSON ({exc})", "pdu")
    if not isinstance(value, dict):
        return _reject(
            Reason.NOT_OBJECT, f"the PDU is {_json_type(value)}, not a JSON object", "pdu"
        )
    return value


def _reject(code: Reason, reason: str, rule: str) -> Rejection:
    return Rejection(code.value, reason, rule)


# Required fields and their JSON types, per room version family. `event_id` is required only
# where the event carries it (v1, v2); `room_id` is required except on a v12 create event.
_REQUIRED: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    # What the event is and who sent it: every auth rule starts from these.
    ("type", str, "a string"),
    ("sender", str, "a string"),
    # An object in every version: the auth rules and redaction read keys from it.
    ("content", dict, "an object"),
    # Integers (not bools, not floats even before v6): ordering and tie-breaks use them.
    ("depth", int, "an integer"),
    ("origin_server_ts", int, "an integer"),
    # The DAG edges. Empty lists are fine here (the create event has none).
    ("prev_events", list, "an array"),
    ("auth_events", list, "an array"),
)
# Optional fields: only their type is checked, when present. `state_key` makes an event a
# state event; the others are checked upstream or not at all, but a wrong type would still
# break code that reads them (storage, outputs).
_OPTIONAL: tuple[tuple[str, type, str], ...] = (
    ("state_key", str, "a string"),
    ("hashes", dict, "an object"),
    ("signatures", dict, "an object"),
    ("unsigned", dict, "an object"),
    ("origin", str, "a string"),
)


def _check_fields(pdu: Mapping[str, Any], rules: RoomRules) -> Rejection | None:
    """Required fields are present and every known field has its JSON type (step 3).

    Spec: server-server API, "PDUs" (the schema) and the room version's "Event format".
    Missing and mistyped are told apart (`missing_field` / `wrong_type`) because they are
    different bugs in the sender.
    """
    # All versions: the fields of the PDU schema that the rules, the state and the DAG read.
    for name, kind, described in _REQUIRED:
        if name not in pdu:
            return _reject(Reason.MISSING_FIELD, f"the PDU has no {name!r} field", f"pdu.{name}")
        value = pdu[name]
        # JSON booleans decode as Python bools, which are ints: `true` is not a depth.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return _wrong_type(name, value, described)
    for name, kind, described in _OPTIONAL:
        if name in pdu and not isinstance(pdu[name], kind):
            return _wrong_type(name, pdu[name], described)
    # `hashes` is {algorithm: base64} and `signatures` {server: {key ID: base64}}. Their
    # values are verified upstream, but their shape is part of the format: Synapse refuses
    # an event whose hashes or signatures hold anything but strings there.
    for algorithm, digest in pdu.get("hashes", {}).items():
        if not isinstance(digest, str):
            if algorithm == "sha256":
                return _reject(
                    Reason.MALFORMED_CONTENT_HASH,
                    f"the content hash 'hashes.sha256' is {_json_type(digest)}, it must be a "
                    "string of unpadded base64",
                    "pdu.hashes.sha256",
                )
            return _wrong_type(f"hashes.{algorithm}", digest, "a string")
    for server, by_key in pdu.get("signatures", {}).items():
        if not isinstance(by_key, dict):
            return _wrong_type(f"signatures.{server}", by_key, "an object")
        for key_id, signature in by_key.items():
            if not isinstance(signature, str):
                return _wrong_type(f"signatures.{server}.{key_id}", signature, "a string")
    # v1, v2: the event carries its own ID. v3+ do not; a stray `event_id` is tolerated
    # (our outputs and test DAGs add one) and left out of the reference hash, so it cannot
    # change the derived ID. Holding a carried ID to the derived one is `check_event_id`.
    if rules.event_id_format is EventIdFormat.CARRIED:
        if "event_id" not in pdu:
            return _reject(Reason.MISSING_FIELD, "the PDU has no 'event_id' field", "pdu.event_id")
        if not isinstance(pdu["event_id"], str):
            return _wrong_type("event_id", pdu["event_id"], "a string")
    # v12: the create event has no room_id (its ID *is* the room ID); every other event has
    # one. Before v12 every event, create included, has a room_id.
    is_v12_create = rules.room_id_from_create_event and pdu["type"] == _CREATE
    if is_v12_create:
        if "room_id" in pdu:
            return _reject(
                Reason.UNEXPECTED_FIELD,
                "a room version 12 create event must not have a 'room_id' field",
                "pdu.room_id",
            )
    elif "room_id" not in pdu:
        return _reject(Reason.MISSING_FIELD, "the PDU has no 'room_id' field", "pdu.room_id")
    elif not isinstance(pdu["room_id"], str):
        return _wrong_type("room_id", pdu["room_id"], "a string")
    return None


def _wrong_type(name: str, value: Any, described: str) -> Rejection:
    return _reject(
        Reason.WRONG_TYPE,
        f"the {name!r} field is {_json_type(value)}, it must be {described}",
        f"pdu.{name}",
    )


def _json_type(value: Any) -> str:
    """The JSON type of a decoded value, with its article, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _check_lengths(pdu: Mapping[str, Any], rules: RoomRules) -> Rejection | None:
    """Size limits on single fields: 255 bytes of UTF-8 (spec, "Size limits").

    Synapse counts code points strictly but, before its strict-byte-limit room versions,
    stores byte-limit violators as rejected rather than dropping them. We follow the spec's
    bytes in every version; the pipeline can tell these apart by the code.
    """
    # Step 4, all versions. The five keys the spec names; `event_id` only matters in v1/v2
    # (a stray one in v3+ is still measured: it travels with the event). Types were checked
    # in step 3, so a non-string here is an absent optional key.
    for name in ("type", "state_key", "sender", "room_id", "event_id"):
        value = pdu.get(name)
        if isinstance(value, str):
            # Bytes, not code points: 128 "é" are 128 characters but 256 bytes. The encode
            # cannot fail: step 2 already encoded the whole PDU.
            size = len(value.encode("utf-8", "surrogatepass"))
            if size > MAX_FIELD_BYTES:
                return _reject(
                    Reason.FIELD_TOO_LONG,
                    f"the {name!r} field is {size} bytes, more than {MAX_FIELD_BYTES}",
                    "pdu.size",
                )
    return None


def _check_ids(pdu: Mapping[str, Any], rules: RoomRules) -> Rejection | None:
    """Identifier grammar of `sender`, `room_id`, `event_id` and `redacts` (step 5).

    Spec: appendices, "Identifier grammar"; the room/event ID forms come from the room
    version (`ids`). Only the grammar is checked: whether the sender's server signed the
    event is the federation service's concern, whether the sender may act is the auth rules'.
    """
    # All versions: `sender` is a user ID. Historical localparts (upper case, punctuation)
    # are accepted: the spec tells servers to accept them over federation, and old rooms
    # are full of them. Refusing them would fork those rooms.
    if not ids.is_valid_user_id(pdu["sender"], historical=True):
        return _reject(
            Reason.BAD_USER_ID, f"the 'sender' {pdu['sender']!r} is not a user ID", "pdu.sender"
        )
    # v1-v11: `room_id` is `!opaque:server`. Since v12: `!` + URL-safe hash, no domain (and
    # absent on the create event, checked in step 3).
    room_id = pdu.get("room_id")
    if isinstance(room_id, str) and not ids.is_valid_room_id(room_id, rules):
        return _reject(
            Reason.BAD_ROOM_ID,
            f"the 'room_id' {room_id!r} is not a room ID of room version {rules.version}",
            "pdu.room_id",
        )
    # v1, v2: the carried `event_id` is `$opaque:server`. v3+ derive it, nothing to check.
    if rules.event_id_format is EventIdFormat.CARRIED and not ids.is_valid_event_id(
        pdu["event_id"], rules
    ):
        return _reject(
            Reason.BAD_EVENT_ID,
            f"the 'event_id' {pdu['event_id']!r} is not an event ID",
            "pdu.event_id",
        )
    # `redacts` of m.room.redaction: top level before v11, in content since v11. Either
    # place, when present, must name an event ID of this version; the auth rules decide
    # whether a redaction without one is acceptable.
    if pdu["type"] == "m.room.redaction":
        for where, holder in (("redacts", pdu), ("content.redacts", pdu["content"])):
            if "redacts" not in holder:
                continue
            target = holder["redacts"]
            if not isinstance(target, str):
                return _wrong_type(where, target, "a string")
            if not ids.is_valid_event_id(target, rules):
                return _reject(
                    Reason.BAD_EVENT_ID,
                    f"the {where!r} {target!r} is not an event ID of room version {rules.version}",
                    f"pdu.{where}",
                )
    return None


def _check_integers(pdu: Mapping[str, Any], rules: RoomRules) -> Rejection | None:
    """`depth` and `origin_server_ts` ranges, in every room version.

    depth: [0, 2**53-1] (Synapse's MAX_DEPTH; v6+ canonical JSON bounds it there anyway).
    origin_server_ts: milliseconds since the epoch, [0, 2**53-1] (ruma's UInt, the same
    bound).
    """
    # Step 6, all versions. Both are known ints here (step 3). Before v6 nothing else bounds
    # them, and a depth beyond 2**53-1 breaks every peer that stores it as a JSON number.
    for name in ("depth", "origin_server_ts"):
        value = pdu[name]
        if not 0 <= value <= MAX_SAFE_INT:
            return _reject(
                Reason.BAD_INTEGER,
                f"the {name!r} field is {value}, it must be between 0 and 2**53-1",
                f"pdu.{name}",
            )
    return None


def _check_refs(pdu: Mapping[str, Any], rules: RoomRules) -> Rejection | None:
    """`prev_events` and `auth_events`: bounded lists of well-formed references (step 7).

    The bounds come first so that a huge list is refused without walking it. Duplicates and
    whether the referenced events exist or are the right ones are for the auth rules and the
    pipeline's gap filling, which see the other events.
    """
    for name, limit, code in (
        ("prev_events", MAX_PREV_EVENTS, Reason.TOO_MANY_PREV_EVENTS),
        ("auth_events", MAX_AUTH_EVENTS, Reason.TOO_MANY_AUTH_EVENTS),
    ):
        refs = pdu[name]
        if len(refs) > limit:
            return _reject(
                code,
                f"the {name!r} field lists {len(refs)} events, more than {limit}",
                f"pdu.{name}",
            )
        for index, ref in enumerate(refs):
            problem = _check_ref(name, index, ref, rules)
            if problem is not None:
                return problem
    return None


def _check_ref(name: str, index: int, ref: Any, rules: RoomRules) -> Rejection | None:
    """One entry of `prev_events`/`auth_events`.

    v1, v2 (`reference_pairs`): `[event_id, {"sha256": ...}]`, a two-element array.
    v3+: the event ID itself.
    """
    where = f"{name}[{index}]"
    # v1, v2: a pair. Exactly two elements, as every implementation unpacks it that way;
    # only its shape is checked: Synapse reads the ID and ignores the hashes object.
    if rules.reference_pairs:
        if not (isinstance(ref, list) and len(ref) == 2 and isinstance(ref[1], dict)):
            return _reject(
                Reason.BAD_REFERENCE,
                f"{where} is not an [event_id, hashes] pair",
                f"pdu.{name}",
            )
        ref = ref[0]
    # All versions: the ID is a string of the version's event ID form, so that a v4 room
    # cannot point at a v3-style ID (a different alphabet, hence a different event).
    if not isinstance(ref, str):
        return _reject(
            Reason.WRONG_TYPE, f"{where} is {_json_type(ref)}, not a string", f"pdu.{name}"
        )
    if not ids.is_valid_event_id(ref, rules):
        return _reject(
            Reason.BAD_EVENT_ID,
            f"{where} {ref!r} is not an event ID of room version {rules.version}",
            f"pdu.{name}",
        )
    return None
