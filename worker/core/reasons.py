"""Stable reason codes for events whose *format* is wrong.

A format problem makes an event `invalid` (DESIGN §1, §2 step 2): it never reaches the auth
rules. Each code is a stable, machine-readable snake_case string that crosses the wire in the
reply's `reason_code`, is stored with the event and labels a metric, so codes are only ever
added, never renamed. The human sentence that goes with a code is built where the problem is
found and names the offending field.

Spec: https://spec.matrix.org/latest/server-server-api/#pdus (PDU format and size limits),
https://spec.matrix.org/latest/appendices/#canonical-json and
https://spec.matrix.org/latest/appendices/#identifier-grammar.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """The catalogue. The value is the code; `MEANINGS` gives one line for each."""

    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    MISSING_FIELD = "missing_field"
    UNEXPECTED_FIELD = "unexpected_field"
    WRONG_TYPE = "wrong_type"
    FIELD_TOO_LONG = "field_too_long"
    BAD_ROOM_ID = "bad_room_id"
    BAD_USER_ID = "bad_user_id"
    BAD_EVENT_ID = "bad_event_id"
    BAD_REFERENCE = "bad_reference"
    BAD_INTEGER = "bad_integer"
    FLOAT_NOT_ALLOWED = "float_not_allowed"
    TOO_MANY_PREV_EVENTS = "too_many_prev_events"
    TOO_MANY_AUTH_EVENTS = "too_many_auth_events"
    EVENT_ID_MISMATCH = "event_id_mismatch"
    MISSING_CONTENT_HASH = "missing_content_hash"
    MALFORMED_CONTENT_HASH = "malformed_content_hash"


MEANINGS: dict[Reason, str] = {
    Reason.BAD_JSON: "the bytes are not JSON (invalid UTF-8, syntax error, lone surrogate, NaN) "
    "or the value has no canonical JSON form",
    Reason.NOT_OBJECT: "the PDU is valid JSON but not a JSON object",
    Reason.TOO_LARGE: "the canonical JSON of the PDU is larger than 65,536 bytes",
    Reason.TOO_DEEP: "objects and arrays are nested deeper than canonical.MAX_NESTING",
    Reason.MISSING_FIELD: "a field the room version requires is absent",
    Reason.UNEXPECTED_FIELD: "a field the room version forbids is present (v12 create `room_id`)",
    Reason.WRONG_TYPE: "a field has the wrong JSON type (e.g. `content` not an object)",
    Reason.FIELD_TOO_LONG: "`type`, `state_key`, `sender`, `room_id` or `event_id` exceeds 255 "
    "bytes of UTF-8",
    Reason.BAD_ROOM_ID: "`room_id` does not follow the room ID grammar of the room version",
    Reason.BAD_USER_ID: "`sender` is not a user ID (historical user IDs are accepted)",
    Reason.BAD_EVENT_ID: "an event ID (own, referenced or redacted) does not follow the event "
    "ID grammar of the room version",
    Reason.BAD_REFERENCE: "a v1/v2 `prev_events`/`auth_events` entry is not an [event_id, "
    "hashes] pair",
    Reason.BAD_INTEGER: "an integer is outside its allowed range (depth, timestamp, or any "
    "integer beyond ±(2**53-1) in v6+)",
    Reason.FLOAT_NOT_ALLOWED: "a float appears in an event of room version 6 or later",
    Reason.TOO_MANY_PREV_EVENTS: "`prev_events` lists more than 20 events",
    Reason.TOO_MANY_AUTH_EVENTS: "`auth_events` lists more than 10 events",
    Reason.EVENT_ID_MISMATCH: "the event ID claimed for the event is not the one its room "
    "version derives",
    Reason.MISSING_CONTENT_HASH: "the event has no `hashes.sha256` (its content hash)",
    Reason.MALFORMED_CONTENT_HASH: "`hashes.sha256` is not a string of unpadded base64",
}


# Not a format problem, so not in `Reason` (whose codes all make an event `invalid`): an input
# refused before any check because the room's current m.room.server_acl denies the server
# that gave it to us (its `origin`). Outcome `rejected`; the event is not stored, so the same
# event relayed by an allowed server is still taken (worker.pipeline.aclstep).
SERVER_ACL_DENIED = "server_acl_denied"
