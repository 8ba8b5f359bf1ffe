"""Judge built events as Synapse would: its auth rules (`synapse.event_auth`), its event ID,
and its signature check (`signedjson` over the redacted event, as Synapse verifies PDUs)."""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from synapse.api.errors import SynapseError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import check_event_content_hash
from synapse.event_auth import (
    _check_create,
    check_state_dependent_auth_rules,
)
from synapse.events import EventBase, make_event_from_dict
from synapse.events.utils import prune_event


def synapse_event(pdu: Mapping[str, Any], version: str) -> EventBase:
    data = copy.deepcopy(dict(pdu))
    if KNOWN_ROOM_VERSIONS[version].event_format != 1:
        data.pop("event_id", None)
    return make_event_from_dict(data, KNOWN_ROOM_VERSIONS[version])


def synapse_refusal(
    pdu: Mapping[str, Any], version: str, auth: list[Mapping[str, Any]]
) -> str | None:
    """Synapse's verdict on `pdu` given its auth events (the create event included, also in
    v12): None when allowed, else its error message."""
    event = synapse_event(pdu, version)
    try:
        if event.type == "m.room.create" and event.get_state_key() == "":
            _check_create(event)
        else:
            check_state_dependent_auth_rules(event, [synapse_event(a, version) for a in auth])
    except SynapseError as exc:
        return f"{exc.code}: {exc.msg}"
    return None


def synapse_signature_ok(
    pdu: Mapping[str, Any], version: str, server_name: str, key_id: str, key_b64: str
) -> bool:
    """Synapse's check of a PDU: its content hash, then the server's signature over the
    redacted event."""
    event = synapse_event(pdu, version)
    if not check_event_content_hash(event):
        return False
    redacted = prune_event(event).get_pdu_json()
    algorithm, version_name = key_id.split(":", 1)
    raw = base64.b64decode(key_b64 + "=" * (-len(key_b64) % 4))
    verify_key = decode_verify_key_bytes(key_id, raw)
    assert verify_key.alg == algorithm and verify_key.version == version_name
    try:
        verify_signed_json(redacted, server_name, verify_key)
    except SignatureVerifyException:
        return False
    return True


__all__ = [
    "synapse_event",
    "synapse_refusal",
    "synapse_signature_ok",
]
