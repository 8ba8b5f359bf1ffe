"""Content hash, reference hash, event IDs and v12 room IDs.

Spec: https://spec.matrix.org/latest/server-server-api/#calculating-the-content-hash-for-an-event
https://spec.matrix.org/latest/server-server-api/#calculating-the-reference-hash-for-an-event
https://spec.matrix.org/latest/rooms/v3/#event-ids (standard base64),
https://spec.matrix.org/latest/rooms/v4/#event-ids (URL-safe base64),
https://spec.matrix.org/latest/rooms/v12/#room-ids (room ID from the create event, MSC4291).

Base64 here is always unpadded ("Unpadded Base64", appendices). All functions are pure; they
assume a PDU that `worker.core.format.validate_pdu` accepted and raise `ValueError` only when
handed something it would have refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

from worker.core.canonical import encode_canonical, encode_canonical_float_free
from worker.core.outcomes import Rejection
from worker.core.reasons import Reason
from worker.core.redaction import redact
from worker.core.versions import EventIdFormat, RoomRules

# Keys left out of the content hash: the hash itself, the signatures over it, and `unsigned`,
# which any server may change in transit.
_NOT_IN_CONTENT_HASH = ("unsigned", "signatures", "hashes")
# Keys left out of the reference hash after redaction. Redaction already drops `unsigned` and
# `age_ts`; removing them again costs nothing and mirrors Synapse, which removes `age_ts`
# explicitly.
_NOT_IN_REFERENCE_HASH = ("signatures", "unsigned", "age_ts")


def unpadded_b64(data: bytes) -> str:
    """Unpadded standard base64 (spec appendices, "Unpadded Base64")."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def unpadded_urlsafe_b64(data: bytes) -> str:
    """Unpadded URL-safe base64 (RFC 4648 §5 alphabet, as v4+ event IDs use)."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def content_hash(pdu: Mapping[str, Any], *, float_free: bool = False) -> bytes:
    """sha256 of the canonical JSON of the PDU without `unsigned`, `signatures`, `hashes`.

    This is the value the `hashes.sha256` field carries (base64); `check_content_hash` holds
    a PDU to it. Synapse also drops `age_ts`, `outlier` and `destinations`, keys that never appear in a
    PDU sent over federation; we follow the spec's list.

    `float_free`: the caller vouches that the PDU passed `validate_pdu` under strict rules
    (v6+), so that the faster `encode_canonical_float_free` gives the same bytes.
    """
    stripped = {k: v for k, v in pdu.items() if k not in _NOT_IN_CONTENT_HASH}
    encode = encode_canonical_float_free if float_free else encode_canonical
    return hashlib.sha256(encode(stripped)).digest()


def check_content_hash(pdu: Mapping[str, Any], *, float_free: bool = False) -> bool | Rejection:
    """Whether `hashes.sha256` is the PDU's content hash; a `Rejection` when it cannot be
    one (absent, not a string, not base64).

    Spec, "Checks performed on receipt of a PDU", step 3: an event whose hash does not match
    is redacted before it is processed further; that is the caller's to do with a False.
    What counts as base64 is what Synapse decodes (`check_event_content_hash`): standard or
    URL-safe, unpadded, with characters outside the alphabet skipped; it refuses an event
    whose hash is absent or does not decode, and so do we, so that no event is stored here
    that Synapse refuses outright.
    """
    hashes = pdu.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if claimed is None:
        return Rejection(
            Reason.MISSING_CONTENT_HASH.value,
            "the event has no content hash (hashes.sha256)",
            "pdu.hashes.sha256",
        )
    digest = _decode_base64(claimed) if isinstance(claimed, str) else None
    if digest is None:
        return Rejection(
            Reason.MALFORMED_CONTENT_HASH.value,
            "the content hash (hashes.sha256) is not a string of unpadded base64",
            "pdu.hashes.sha256",
        )
    return digest == content_hash(pdu, float_free=float_free)


def _decode_base64(text: str) -> bytes | None:
    """Unpadded standard or URL-safe base64 as Synapse reads it; None if it does not decode."""
    try:
        raw = text.encode("ascii")
        padding = b"=" * (3 - ((len(raw) + 3) % 4))
        return base64.b64decode(raw + padding, altchars=b"-_")
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None


def reference_hash(pdu: Mapping[str, Any], rules: RoomRules, *, float_free: bool = False) -> bytes:
    """sha256 of the canonical JSON of the redacted PDU without `signatures` and `unsigned`.

    Steps (spec "Calculating the reference hash"): 1. redact the event with the version's
    algorithm; 2. remove `signatures` and `unsigned`; 3. canonical JSON; 4. sha256. Because
    the content hash survives redaction, the reference hash covers the whole event.

    v3+: a PDU has no `event_id` (its ID *is* this hash), but our own outputs and stored JSON
    add one for consumers, and redaction keeps the key. It is left out so that such a copy
    hashes to the ID it carries. (Synapse refuses v3+ PDUs with an `event_id` outright, so no
    server derives a different ID for them.) In v1/v2 `event_id` is part of the hash.
    """
    redacted = redact(pdu, rules)
    for key in _NOT_IN_REFERENCE_HASH:
        redacted.pop(key, None)
    if rules.event_id_format is not EventIdFormat.CARRIED:
        redacted.pop("event_id", None)
    encode = encode_canonical_float_free if float_free else encode_canonical
    return hashlib.sha256(encode(redacted)).digest()


def compute_event_id(pdu: Mapping[str, Any], rules: RoomRules, *, float_free: bool = False) -> str:
    """The event ID the room version gives this PDU.

    v1, v2 (`CARRIED`): the PDU's own `event_id` field (ValueError if it has none).
    v3 (`BASE64`): `$` + unpadded standard base64 of the reference hash.
    v4+ (`URLSAFE_BASE64`): `$` + unpadded URL-safe base64 of the reference hash.
    """
    if rules.event_id_format is EventIdFormat.CARRIED:
        carried = pdu.get("event_id")
        if not isinstance(carried, str):
            raise ValueError("a v1/v2 PDU must carry its event_id as a string")
        return carried
    return event_id_of_reference_hash(reference_hash(pdu, rules, float_free=float_free), rules)


def event_id_of_reference_hash(digest: bytes, rules: RoomRules) -> str:
    """The v3+ event ID a reference hash makes (see `compute_event_id`)."""
    if rules.event_id_format is EventIdFormat.BASE64:
        return "$" + unpadded_b64(digest)
    return "$" + unpadded_urlsafe_b64(digest)


def room_id_for_create(pdu: Mapping[str, Any], rules: RoomRules) -> str:
    """The room ID a create event makes.

    v12 (`room_id_from_create_event`, MSC4291): `!` + unpadded URL-safe base64 of the create
    event's reference hash, the same hash as its event ID. Earlier versions: the create
    event's own `room_id` field (ValueError if it has none).
    """
    if rules.room_id_from_create_event:
        return room_id_of_reference_hash(reference_hash(pdu, rules))
    carried = pdu.get("room_id")
    if not isinstance(carried, str):
        raise ValueError("before v12 a create event must carry its room_id as a string")
    return carried


def room_id_of_reference_hash(digest: bytes) -> str:
    """The v12 room ID its create event's reference hash makes (see `room_id_for_create`)."""
    return "!" + unpadded_urlsafe_b64(digest)
