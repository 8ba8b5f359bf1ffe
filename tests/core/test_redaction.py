"""The redaction algorithm per room version: tables, Synapse differential, properties."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import make_event_from_dict
from synapse.events.utils import prune_event

from worker.core.hashes import reference_hash
from worker.core.redaction import redact
from worker.core.versions import ROOM_VERSIONS, RoomRules, rules_for

ALL_VERSIONS = sorted(ROOM_VERSIONS, key=int)


def _rules(version: str) -> RoomRules:
    rules = rules_for(version)
    assert rules is not None
    return rules


def event(version: str, event_type: str, content: Any, **extra: Any) -> dict[str, Any]:
    """A well-formed PDU of `version` with the given type and content."""
    rules = _rules(version)
    pdu: dict[str, Any] = {
        "type": event_type,
        "sender": "@alice:example.org",
        "room_id": "!" + "r" * 43 if rules.room_id_from_create_event else "!r:example.org",
        "content": content,
        "depth": 4,
        "prev_events": [],
        "auth_events": [],
        "origin_server_ts": 1_700_000_000_000,
        "hashes": {"sha256": "h"},
        "signatures": {"example.org": {"ed25519:1": "s"}},
        "unsigned": {"age": 1, "redacted_because": {}},
    }
    if rules.reference_pairs:
        pdu["event_id"] = "$e:example.org"
    if rules.room_id_from_create_event and event_type == "m.room.create":
        # v12: the create event's ID is the room ID; it carries no room_id.
        del pdu["room_id"]
    pdu.update(extra)
    return pdu


def _kept(version: str, event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return redact(event(version, event_type, content, state_key=""), _rules(version))["content"]


# --- what each version keeps ----------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_member(version: str) -> None:
    content = {
        "membership": "join",
        "displayname": "Alice",
        "join_authorised_via_users_server": "@b:example.org",
        "third_party_invite": {"signed": {"token": "t"}, "display_name": "x"},
    }
    kept = _kept(version, "m.room.member", content)
    expected: dict[str, Any] = {"membership": "join"}
    if int(version) >= 9:
        expected["join_authorised_via_users_server"] = "@b:example.org"
    if int(version) >= 11:
        expected["third_party_invite"] = {"signed": {"token": "t"}}
    assert kept == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_create(version: str) -> None:
    content = {"creator": "@alice:example.org", "room_version": version, "m.federate": False}
    kept = _kept(version, "m.room.create", content)
    assert kept == (content if int(version) >= 11 else {"creator": "@alice:example.org"})


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_join_rules(version: str) -> None:
    content = {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "x": 1}
    kept = _kept(version, "m.room.join_rules", content)
    expected = {"join_rule": "restricted"}
    if int(version) >= 8:
        expected["allow"] = content["allow"]
    assert kept == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_power_levels(version: str) -> None:
    keys = ["ban", "events", "events_default", "kick", "redact", "state_default", "users"]
    content = {k: 50 for k in keys} | {"users_default": 0, "invite": 0, "notifications": {}}
    kept = _kept(version, "m.room.power_levels", content)
    expected = {k: content[k] for k in [*keys, "users_default"]}
    if int(version) >= 11:
        expected["invite"] = 0
    assert kept == expected


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_aliases_history_visibility_redaction(version: str) -> None:
    aliases = _kept(version, "m.room.aliases", {"aliases": ["#a:b"], "x": 1})
    assert aliases == ({"aliases": ["#a:b"]} if int(version) <= 5 else {})
    hv = _kept(version, "m.room.history_visibility", {"history_visibility": "shared", "x": 1})
    assert hv == {"history_visibility": "shared"}
    red = redact(
        event(version, "m.room.redaction", {"redacts": "$x", "reason": "spam"}, redacts="$x"),
        _rules(version),
    )
    assert red["content"] == ({"redacts": "$x"} if int(version) >= 11 else {})
    # The top-level `redacts` is never in the list of kept keys.
    assert "redacts" not in red


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_top_level_keys(version: str) -> None:
    pdu = event(
        version,
        "m.room.message",
        {"body": "x"},
        origin="example.org",
        membership="join",
        prev_state=[],
        age_ts=1,
        custom="dropped",
    )
    out = redact(pdu, _rules(version))
    assert out["content"] == {}
    assert "unsigned" not in out and "custom" not in out and "age_ts" not in out
    legacy = {"origin", "membership", "prev_state"}
    if int(version) >= 11:
        assert not legacy & out.keys()
    else:
        assert legacy <= out.keys()
    for key in ("type", "sender", "room_id", "depth", "hashes", "signatures", "prev_events"):
        assert out[key] == pdu[key]


def test_non_object_content_and_input_untouched() -> None:
    pdu = event("10", "m.room.member", ["not", "an", "object"], state_key="@a:b")
    before = copy.deepcopy(pdu)
    assert redact(pdu, _rules("10"))["content"] == {}
    assert pdu == before


def test_third_party_invite_without_signed_is_kept_empty() -> None:
    # As Synapse prunes it (found by the differential test below): the object stays, emptied;
    # the reference hash, hence the event ID, covers the redacted form.
    for tpi in ({"display_name": "x"}, {}):
        content = {"membership": "invite", "third_party_invite": tpi}
        kept = _kept("11", "m.room.member", content)
        assert kept == {"membership": "invite", "third_party_invite": {}}
    # Not an object: nothing to keep.
    content = {"membership": "invite", "third_party_invite": "x"}
    assert _kept("11", "m.room.member", content) == {"membership": "invite"}


# --- differential against Synapse and properties --------------------------------------------

_SPECIAL_TYPES = [
    "m.room.member",
    "m.room.create",
    "m.room.join_rules",
    "m.room.power_levels",
    "m.room.aliases",
    "m.room.history_visibility",
    "m.room.redaction",
    "m.room.message",
]
_CONTENT_KEYS = [
    "membership",
    "join_authorised_via_users_server",
    "third_party_invite",
    "creator",
    "room_version",
    "join_rule",
    "allow",
    "ban",
    "events",
    "invite",
    "users",
    "users_default",
    "aliases",
    "history_visibility",
    "redacts",
    "body",
]
_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-100, 100), st.text(max_size=4))
_VALUE = st.one_of(
    _LEAF,
    st.lists(_LEAF, max_size=2),
    st.dictionaries(st.sampled_from(["signed", "token", "x"]), _LEAF, max_size=2),
)
_TOP_EXTRA = st.dictionaries(
    st.sampled_from(["origin", "membership", "prev_state", "age_ts", "custom"]),
    _LEAF,
    max_size=3,
)


@settings(max_examples=150, deadline=None)
@given(
    version=st.sampled_from(ALL_VERSIONS),
    event_type=st.sampled_from(_SPECIAL_TYPES),
    content=st.dictionaries(st.sampled_from(_CONTENT_KEYS), _VALUE, max_size=6),
    extra=_TOP_EXTRA,
)
def test_redaction_properties_and_synapse(
    version: str, event_type: str, content: dict[str, Any], extra: dict[str, Any]
) -> None:
    rules = _rules(version)
    pdu = event(version, event_type, content, state_key="", **extra)
    once = redact(pdu, rules)
    # Idempotent: redacting a redacted event changes nothing.
    assert redact(once, rules) == once
    # Redaction keeps the reference hash, hence the event ID.
    assert reference_hash(once, rules) == reference_hash(pdu, rules)
    # Same result as Synapse's pruning, apart from the `unsigned` Synapse keeps for clients.
    theirs = prune_event(make_event_from_dict(copy.deepcopy(pdu), KNOWN_ROOM_VERSIONS[version]))
    synapse_json = theirs.get_pdu_json()
    synapse_json.pop("unsigned", None)
    assert once == synapse_json
