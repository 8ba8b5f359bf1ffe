"""Content hash, reference hash, event IDs and v12 room IDs, cross-checked with Synapse."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import canonicaljson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import compute_content_hash, compute_event_reference_hash
from synapse.events import make_event_from_dict

from worker.core.hashes import (
    compute_event_id,
    content_hash,
    reference_hash,
    room_id_for_create,
    unpadded_b64,
)
from worker.core.versions import ROOM_VERSIONS, RoomRules, rules_for

ALL_VERSIONS = sorted(ROOM_VERSIONS, key=int)


def _rules(version: str) -> RoomRules:
    rules = rules_for(version)
    assert rules is not None
    return rules


def message(**overrides: Any) -> dict[str, Any]:
    """A v3+ message event with every field a federated PDU carries."""
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "sender": "@alice:example.org",
        "room_id": "!room:example.org",
        "content": {"msgtype": "m.text", "body": "hello"},
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "origin_server_ts": 1_700_000_000_000,
        "hashes": {"sha256": "x"},
        "signatures": {"example.org": {"ed25519:1": "sig"}},
        "unsigned": {"age": 5},
    }
    pdu.update(overrides)
    return pdu


def v12_create() -> dict[str, Any]:
    return {
        "type": "m.room.create",
        "state_key": "",
        "sender": "@alice:example.org",
        "content": {"room_version": "12"},
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "origin_server_ts": 1_700_000_000_000,
        "hashes": {"sha256": "x"},
        "signatures": {},
    }


def _synapse_ref(pdu: dict[str, Any], version: str) -> bytes:
    event = make_event_from_dict(copy.deepcopy(pdu), KNOWN_ROOM_VERSIONS[version])
    return compute_event_reference_hash(event)[1]


# --- known answers --------------------------------------------------------------------------


def test_v1_event_id_is_carried_and_reference_hash_known() -> None:
    pdu = message(
        event_id="$abc:example.org",
        prev_events=[["$p:example.org", {"sha256": "h"}]],
    )
    assert compute_event_id(pdu, _rules("1")) == "$abc:example.org"
    assert compute_event_id(pdu, _rules("2")) == "$abc:example.org"
    ref = reference_hash(pdu, _rules("1"))
    assert ref.hex() == "f40a1667e479caf69b0ce3a68e85a8f3758984a73f9631157ff66c228401ec5d"
    assert ref == _synapse_ref(pdu, "1")


def test_v1_without_event_id_raises() -> None:
    with pytest.raises(ValueError):
        compute_event_id(message(), _rules("1"))


def test_v3_and_v4_event_ids_known() -> None:
    # This event's hash has both '+' and '/' in standard base64, so v3 and v4 differ.
    pdu = message()
    v3 = compute_event_id(pdu, _rules("3"))
    v4 = compute_event_id(pdu, _rules("4"))
    assert v3 == "$OkttR+o4tRZbrYOkTb3o3HTAh46+QFjOed+oucx/8f8"
    assert v4 == "$OkttR-o4tRZbrYOkTb3o3HTAh46-QFjOed-oucx_8f8"
    for version, expected in (("3", v3), ("4", v4), ("10", v4)):
        event = make_event_from_dict(copy.deepcopy(pdu), KNOWN_ROOM_VERSIONS[version])
        assert event.event_id == expected


def test_v12_create_event_id_and_room_id() -> None:
    pdu = v12_create()
    rules = _rules("12")
    event_id = compute_event_id(pdu, rules)
    room_id = room_id_for_create(pdu, rules)
    assert event_id == "$nGK6SXKCW5tf_-nWPCNeVk_MjldXzpRX5ZlToEXFYdo"
    assert room_id == "!" + event_id[1:]
    event = make_event_from_dict(copy.deepcopy(pdu), KNOWN_ROOM_VERSIONS["12"])
    assert (event.event_id, event.room_id) == (event_id, room_id)


def test_room_id_for_create_before_v12_is_carried() -> None:
    pdu = dict(v12_create(), room_id="!old:example.org")
    assert room_id_for_create(pdu, _rules("11")) == "!old:example.org"
    with pytest.raises(ValueError):
        room_id_for_create(v12_create(), _rules("11"))


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_reference_hash_matches_synapse_for_every_version(version: str) -> None:
    rules = _rules(version)
    pdu = message(
        type="m.room.member",
        state_key="@alice:example.org",
        content={
            "membership": "join",
            "displayname": "A",
            "join_authorised_via_users_server": "@b:c",
        },
        origin="example.org",
        age_ts=3,
    )
    if rules.reference_pairs:
        pdu["event_id"] = "$m:example.org"
    if rules.room_id_from_create_event:
        pdu["room_id"] = "!" + "A" * 43
    assert reference_hash(pdu, rules) == _synapse_ref(pdu, version)


def test_content_hash_matches_synapse_and_spec() -> None:
    pdu = message()
    stripped = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    expected = hashlib.sha256(canonicaljson.encode_canonical_json(stripped)).digest()
    assert content_hash(pdu) == expected
    assert content_hash(pdu) == compute_content_hash(pdu, hashlib.sha256)[1]
    # The content hash covers content; the reference hash covers it only through `hashes`.
    assert content_hash(message(content={"body": "other"})) != content_hash(pdu)


def test_unpadded_b64() -> None:
    assert unpadded_b64(b"\xff\xfe") == "//4"
    assert unpadded_b64(b"") == ""


# --- properties -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["3", "4", "11", "12"])
def test_signatures_unsigned_and_age_ts_do_not_change_the_id(version: str) -> None:
    rules = _rules(version)
    pdu = message()
    other = message(signatures={"other.org": {"ed25519:x": "y"}}, unsigned={"age": 1}, age_ts=9)
    assert compute_event_id(pdu, rules) == compute_event_id(other, rules)
    # ...but the content hash (carried in `hashes`) and the content of kept keys do.
    assert compute_event_id(message(hashes={"sha256": "y"}), rules) != compute_event_id(pdu, rules)
    assert compute_event_id(message(depth=2), rules) != compute_event_id(pdu, rules)


@pytest.mark.parametrize("version", ["3", "4", "12"])
def test_stray_event_id_does_not_change_a_hashed_id(version: str) -> None:
    rules = _rules(version)
    pdu = message()
    derived = compute_event_id(pdu, rules)
    assert compute_event_id(dict(pdu, event_id=derived), rules) == derived
    assert compute_event_id(dict(pdu, event_id="$readable"), rules) == derived


def test_event_id_is_part_of_a_v1_reference_hash() -> None:
    rules = _rules("1")
    one = reference_hash(message(event_id="$a:example.org"), rules)
    assert one != reference_hash(message(event_id="$b:example.org"), rules)


_KEYS = st.text(alphabet="abcdefghij_.", min_size=1, max_size=5)
_CONTENT = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53) + 1, 2**53 - 1), st.text(max_size=5)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_KEYS, c, max_size=3)),
    max_leaves=10,
)


def _shuffled(value: Any, rnd: Any) -> Any:
    """The same JSON value with every object's keys inserted in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@settings(max_examples=60, deadline=None)
@given(
    content=st.dictionaries(_KEYS, _CONTENT, max_size=5),
    event_type=st.sampled_from(["m.room.message", "m.room.member", "m.room.create", "x.y"]),
    version=st.sampled_from(["3", "4", "9", "11", "12"]),
    rnd=st.randoms(use_true_random=False),
)
def test_event_id_is_stable_under_key_reordering(
    content: dict[str, Any], event_type: str, version: str, rnd: Any
) -> None:
    rules = _rules(version)
    pdu = message(type=event_type, content=content)
    assert compute_event_id(_shuffled(pdu, rnd), rules) == compute_event_id(pdu, rules)
