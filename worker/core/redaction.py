"""The redaction algorithm: what survives of an event when it is redacted.

Spec: https://spec.matrix.org/latest/client-server-api/#redactions (the algorithm, "Upon
receipt of a redaction event, the server must strip off any keys not in the following
list"), and the "Redactions" section of each room version page:
https://spec.matrix.org/latest/rooms/v1/#redactions (v1-v5),
https://spec.matrix.org/latest/rooms/v6/#redactions (v6, v7),
https://spec.matrix.org/latest/rooms/v8/#redactions (v8),
https://spec.matrix.org/latest/rooms/v9/#redactions (v9, v10),
https://spec.matrix.org/latest/rooms/v11/#redactions (v11, v12).

Redaction is not only for `m.room.redaction`: the reference hash (and so the event ID) is the
hash of the *redacted* event, so this function must be exact for every version. It is checked
against Synapse in the tests and must keep the reference hash: `reference_hash(redact(e)) ==
reference_hash(e)`, and `redact(redact(e)) == redact(e)`.

What is kept depends on `rules.redaction` (a `RedactionAlgorithm`); each change is introduced
by one version and kept by every later one, so the algorithms are ordered and each rule below
is a "since vN" test.

`unsigned` is dropped entirely, as the spec's list says. Putting `redacted_because` back into
`unsigned` for clients is the shell's business. Nested values that are kept are shared with
the input, not copied: events are immutable by convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.core.versions import RedactionAlgorithm, RoomRules

# The algorithms in the order they were introduced, so "since v8" is a comparison.
_ORDER = (
    RedactionAlgorithm.V1,
    RedactionAlgorithm.V6,
    RedactionAlgorithm.V8,
    RedactionAlgorithm.V9,
    RedactionAlgorithm.V11,
)

# Top-level keys kept by every algorithm.
_TOP_LEVEL = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    }
)
# v1-v10 also keep these three; v11 (MSC2176) stopped preserving them.
_TOP_LEVEL_BEFORE_V11 = _TOP_LEVEL | {"origin", "membership", "prev_state"}

# m.room.power_levels content keys kept by every algorithm.
_POWER_LEVELS = (
    "ban",
    "events",
    "events_default",
    "kick",
    "redact",
    "state_default",
    "users",
    "users_default",
)


def _since(rules: RoomRules, algorithm: RedactionAlgorithm) -> bool:
    """True if the room's redaction algorithm is `algorithm` or a later one."""
    return _ORDER.index(rules.redaction) >= _ORDER.index(algorithm)


def redact(pdu: Mapping[str, Any], rules: RoomRules) -> dict[str, Any]:
    """Return the redacted form of `pdu` under the room version's redaction algorithm.

    The input is not modified. A `content` that is not an object redacts to `{}`.
    """
    v11 = _since(rules, RedactionAlgorithm.V11)
    # Step 1 (all versions): strip every top-level key not in the version's list. Anything
    # else a sender adds (custom keys, `unsigned`, `age_ts`, `redacts` before v11) goes, so
    # that it cannot influence the reference hash.
    keep = _TOP_LEVEL if v11 else _TOP_LEVEL_BEFORE_V11
    out = {k: v for k, v in pdu.items() if k in keep}
    # Step 2 (all versions): strip the content down to the keys its event type keeps. The
    # type is read from the event itself; a state key is not required (the spec's rules
    # are by type only, and Synapse agrees).
    content = pdu.get("content")
    event_type = pdu.get("type")
    if isinstance(content, Mapping) and isinstance(event_type, str):
        out["content"] = _redact_content(event_type, content, rules)
    else:
        # redact() must not fail on any JSON object: it runs inside hashing, which may see
        # input nobody validated yet. Content that is not an object keeps nothing.
        out["content"] = {}
    return out


def _redact_content(
    event_type: str, content: Mapping[str, Any], rules: RoomRules
) -> dict[str, Any]:
    """The content keys kept for `event_type` (step 2 of the algorithm).

    Every type not listed keeps no content at all. The kept keys are exactly those the auth
    rules and state resolution read, which is why redacting an event never changes whether
    later events are allowed.
    """
    # `keys` are copied when present; `extra` holds values built from nested parts.
    keys: tuple[str, ...] = ()
    extra: dict[str, Any] = {}
    if event_type == "m.room.member":
        # Since v1: `membership`.
        # Since v9 (MSC3375): `join_authorised_via_users_server`, which the restricted-join
        # auth rule reads, so it must survive redaction.
        keys = (
            ("membership", "join_authorised_via_users_server")
            if _since(rules, RedactionAlgorithm.V9)
            else ("membership",)
        )
        # Since v11 (MSC3821): the `signed` key *inside* `third_party_invite`, which the
        # third-party invite auth rule verifies. Nothing else of `third_party_invite` survives,
        # but the object itself does, emptied, when it has no `signed` (as Synapse and ruma
        # read "allows the `signed` key of the `third_party_invite` key"): the redacted form
        # is what reference hashes cover, so keeping it or not changes the event ID.
        if _since(rules, RedactionAlgorithm.V11):
            tpi = content.get("third_party_invite")
            if isinstance(tpi, Mapping):
                extra["third_party_invite"] = {"signed": tpi["signed"]} if "signed" in tpi else {}
    elif event_type == "m.room.create":
        # v1-v10: `creator` only. Since v11 (MSC2176): the whole content, because
        # `room_version` and the v12 `additional_creators` are needed to read the room.
        if _since(rules, RedactionAlgorithm.V11):
            return dict(content)
        keys = ("creator",)
    elif event_type == "m.room.join_rules":
        # Since v1: `join_rule`. Since v8 (MSC3083): `allow`, the restricted-join rooms.
        keys = ("join_rule", "allow") if _since(rules, RedactionAlgorithm.V8) else ("join_rule",)
    elif event_type == "m.room.power_levels":
        # Since v1: the eight keys the auth rules read. Since v11 (MSC2176): also `invite`.
        keys = (
            (*_POWER_LEVELS, "invite") if _since(rules, RedactionAlgorithm.V11) else _POWER_LEVELS
        )
    elif event_type == "m.room.aliases":
        # v1-v5 only: `aliases`. v6 (MSC2432) removed the special case.
        if not _since(rules, RedactionAlgorithm.V6):
            keys = ("aliases",)
    elif event_type == "m.room.history_visibility":
        # Since v1: `history_visibility`.
        keys = ("history_visibility",)
    elif event_type == "m.room.redaction" and _since(rules, RedactionAlgorithm.V11):
        # Since v11 (MSC2174, MSC2176): `redacts` moved into content and is kept there.
        keys = ("redacts",)
    out = {k: content[k] for k in keys if k in content}
    out.update(extra)
    return out
