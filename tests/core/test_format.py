"""PDU format validation and parsing: accept/reject per rule and version, corpus, fuzz."""

from __future__ import annotations

import copy
import json
import types
from typing import Any

import msgspec
import pytest
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import make_event_from_dict

from tests.fixtures.malformed import load_cases
from worker.core import ids
from worker.core.canonical import MAX_SAFE_INT, encode_canonical
from worker.core.events import Event
from worker.core.format import (
    MAX_PDU_BYTES,
    check_event_id,
    parse_pdu,
    room_version_of_create,
    validate_pdu,
)
from worker.core.hashes import compute_event_id, room_id_for_create
from worker.core.outcomes import Rejection
from worker.core.reasons import MEANINGS, Reason
from worker.core.versions import ROOM_VERSIONS, RoomRules, rules_for

ALL_VERSIONS = sorted(ROOM_VERSIONS, key=int)
CASES = load_cases()


def _rules(version: str) -> RoomRules:
    rules = rules_for(version)
    assert rules is not None
    return rules


def ref(version: str, letter: str) -> Any:
    """A well-formed reference to another event, in the version's shape."""
    rules = _rules(version)
    if rules.reference_pairs:
        return [f"${letter}:example.org", {"sha256": "aGFzaA"}]
    return "$" + letter * 43


def valid(version: str, **overrides: Any) -> dict[str, Any]:
    """A PDU that every check accepts for `version`; `overrides` replace fields."""
    rules = _rules(version)
    pdu: dict[str, Any] = {
        "type": "m.room.message",
        "sender": "@alice:example.org",
        "room_id": "!" + "R" * 43 if rules.room_id_from_create_event else "!room:example.org",
        "content": {"msgtype": "m.text", "body": "hi"},
        "depth": 5,
        "prev_events": [ref(version, "B")],
        "auth_events": [ref(version, "C")],
        "origin_server_ts": 1_700_000_000_000,
        "hashes": {"sha256": "aGFzaA"},
        "signatures": {"example.org": {"ed25519:1": "c2ln"}},
    }
    if rules.reference_pairs:
        pdu["event_id"] = "$ev:example.org"
    pdu.update(overrides)
    return pdu


def _code(result: Event | Rejection | None) -> str | None:
    if isinstance(result, Rejection):
        return result.code
    return None


# --- the malformed corpus -------------------------------------------------------------------


def test_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 50
    # Two codes come from checks outside `validate_pdu`: the claimed ID, the missing hash.
    outside = {"event_id_mismatch", "missing_content_hash"}
    assert {c.expected_code for c in CASES} >= {r.value for r in Reason} - outside


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case_is_refused_with_its_code(case: Any) -> None:
    assert case.expected_code in {r.value for r in Reason}
    rules = _rules(case.room_version)
    from_bytes = parse_pdu(case.data, rules)
    assert isinstance(from_bytes, Rejection), case.description
    assert from_bytes.code == case.expected_code, from_bytes.reason
    assert from_bytes.reason
    if case.pdu is not None:
        assert _code(validate_pdu(case.pdu, rules)) == case.expected_code
        assert _code(parse_pdu(case.pdu, rules)) == case.expected_code


def test_every_reason_has_a_meaning() -> None:
    assert set(MEANINGS) == set(Reason)


# --- accepted events ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_valid_event_is_accepted_and_identified(version: str) -> None:
    rules = _rules(version)
    pdu = valid(version)
    assert validate_pdu(pdu, rules) is None
    event = parse_pdu(pdu, rules)
    assert isinstance(event, Event)
    assert event.event_id == compute_event_id(pdu, rules)
    assert event.prev_event_ids == (
        ("$B:example.org",) if rules.reference_pairs else ("$" + "B" * 43,)
    )
    # The same PDU as bytes gives the same event.
    from_bytes = parse_pdu(msgspec.json.encode(pdu), rules)
    assert isinstance(from_bytes, Event) and from_bytes.event_id == event.event_id
    # Synapse derives the same ID.
    synapse_event = make_event_from_dict(copy.deepcopy(pdu), KNOWN_ROOM_VERSIONS[version])
    assert synapse_event.event_id == event.event_id


def test_given_event_id_is_used_as_is() -> None:
    event = parse_pdu(valid("10"), _rules("10"), event_id="$readable")
    assert isinstance(event, Event) and event.event_id == "$readable"


def test_v12_create_event_without_room_id() -> None:
    rules = _rules("12")
    create = valid(
        "12",
        type="m.room.create",
        state_key="",
        content={"room_version": "12"},
        prev_events=[],
        auth_events=[],
    )
    del create["room_id"]
    event = parse_pdu(create, rules)
    assert isinstance(event, Event)
    assert room_id_for_create(create, rules) == "!" + event.event_id[1:]
    # Before v12 a create event has a room_id like any other.
    assert _code(validate_pdu(dict(create, content={}), _rules("11"))) == "missing_field"


@pytest.mark.parametrize(
    "sender",
    [
        "@alice:example.org",
        "@Alice!#$%&'()*+,-./;<=>?[]^`{|}~:example.org",  # historical localpart
        "@a:1.2.3.4",
        "@a:[::1]:8448",
        "@a:localhost:1",
        "@a_b=c/d+e:matrix-org.example",
    ],
)
def test_accepted_senders(sender: str) -> None:
    assert validate_pdu(valid("10", sender=sender), _rules("10")) is None


def test_boundaries_are_inclusive() -> None:
    rules = _rules("10")
    letters = "ABCDEFGHIJKLMNOPQRST"
    pdu = valid(
        "10",
        type="t" * 255,
        state_key="\u00e9" * 127 + "x",
        depth=MAX_SAFE_INT,
        origin_server_ts=MAX_SAFE_INT,
        prev_events=["$" + c * 43 for c in letters],
        auth_events=["$" + c * 43 for c in letters[:10]],
    )
    assert validate_pdu(pdu, rules) is None


def test_size_limit_is_exactly_65536_canonical_bytes() -> None:
    rules = _rules("10")
    pdu = valid("10")
    pdu["content"]["body"] = ""
    room = MAX_PDU_BYTES - len(encode_canonical(pdu))
    pdu["content"]["body"] = "x" * room
    assert len(encode_canonical(pdu)) == MAX_PDU_BYTES
    assert validate_pdu(pdu, rules) is None
    pdu["content"]["body"] += "x"
    assert _code(validate_pdu(pdu, rules)) == "too_large"


def test_floats_before_v6_keep_synapse_event_ids() -> None:
    for version in ("1", "3", "5"):
        rules = _rules(version)
        raw = msgspec.json.encode(valid(version, content={"w": 1e16, "x": 0.1, "y": -2.5e-7}))
        event = parse_pdu(raw, rules)
        assert isinstance(event, Event)
        synapse_event = make_event_from_dict(msgspec.json.decode(raw), KNOWN_ROOM_VERSIONS[version])
        assert synapse_event.event_id == event.event_id
        assert _code(parse_pdu(raw, _rules("6"))) is not None


@pytest.mark.parametrize("version", ["6", "10", "12"])
def test_unsigned_is_exempt_from_value_rules_but_not_nesting(version: str) -> None:
    rules = _rules(version)
    pdu = valid(version, unsigned={"age": 1.5, "big": 2**64, "x": [0.5]})
    assert validate_pdu(pdu, rules) is None
    # The same values in a hashed part of the event are refused...
    assert _code(validate_pdu(valid(version, hashes={"sha256": 0.5}), rules)) is not None
    # ...and nesting is limited everywhere.
    deep: Any = 0
    for _ in range(120):
        deep = [deep]
    assert _code(validate_pdu(valid(version, unsigned={"d": deep}), rules)) == "too_deep"


def test_stray_event_id_in_v3_plus_is_ignored() -> None:
    rules = _rules("4")
    plain = parse_pdu(valid("4"), rules)
    stray = parse_pdu(valid("4", event_id="anything"), rules)
    assert isinstance(plain, Event) and isinstance(stray, Event)


def test_any_mapping_is_accepted() -> None:
    pdu = types.MappingProxyType(valid("9"))
    assert validate_pdu(pdu, _rules("9")) is None


def test_first_problem_wins_in_a_fixed_order() -> None:
    rules = _rules("10")
    # Missing type and a bad sender: fields are checked before identifiers.
    pdu = valid("10", sender="nobody")
    del pdu["type"]
    assert _code(validate_pdu(pdu, rules)) == "missing_field"
    # A float and a missing field: JSON values come first.
    pdu = valid("10", content={"x": 1.5})
    del pdu["depth"]
    assert _code(validate_pdu(pdu, rules)) == "float_not_allowed"


def test_rejection_names_the_field() -> None:
    problem = validate_pdu(valid("10", depth="5"), _rules("10"))
    assert isinstance(problem, Rejection) and "'depth'" in problem.reason
    problem = validate_pdu(valid("10", prev_events=["$x"]), _rules("10"))
    assert isinstance(problem, Rejection) and "prev_events[0]" in problem.reason


# --- event ID check and room version --------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "3", "4", "12"])
def test_check_event_id(version: str) -> None:
    rules = _rules(version)
    pdu = valid(version)
    right = compute_event_id(pdu, rules)
    assert check_event_id(pdu, rules, right) is None
    wrong = check_event_id(pdu, rules, "$" + "Z" * 43)
    assert isinstance(wrong, Rejection) and wrong.code == "event_id_mismatch"
    # Changing a hashed field changes the derived ID (v3+), so the old claim no longer holds.
    if not rules.reference_pairs:
        assert _code(check_event_id(dict(pdu, depth=6), rules, right)) == "event_id_mismatch"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"room_version": "11"}, "11"),
        ({}, "1"),
        ({"room_version": 11}, ""),
        ("not an object", "1"),
    ],
)
def test_room_version_of_create(content: Any, expected: str) -> None:
    assert room_version_of_create({"type": "m.room.create", "content": content}) == expected


# --- never raises ---------------------------------------------------------------------------

_ANY_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda c: st.one_of(
        st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)
    ),
    max_leaves=12,
)
_FIELDS = [
    "type",
    "sender",
    "room_id",
    "content",
    "depth",
    "prev_events",
    "auth_events",
    "origin_server_ts",
    "state_key",
    "event_id",
    "redacts",
    "hashes",
]


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from(ALL_VERSIONS),
    field=st.sampled_from(_FIELDS),
    value=_ANY_JSON,
    as_bytes=st.booleans(),
)
def test_parse_never_raises_on_a_mutated_field(
    version: str, field: str, value: Any, as_bytes: bool
) -> None:
    pdu = valid(version, type="m.room.redaction")
    pdu[field] = value
    data: Any = msgspec.json.encode(pdu) if as_bytes else pdu
    result = parse_pdu(data, _rules(version))
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.code in {r.value for r in Reason}


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), version=st.sampled_from(["1", "10"]))
def test_parse_never_raises_on_random_bytes(data: bytes, version: str) -> None:
    assert isinstance(parse_pdu(data, _rules(version)), Rejection)


# --- identifier grammar (worker.core.ids) ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("example.org", True),
        ("example.org:8448", True),
        ("1.2.3.4", True),
        ("[1234:5678::abcd]", True),
        ("[::1]:1", True),
        ("localhost", True),
        ("", False),
        ("exa mple.org", False),
        ("example.org:", False),
        ("example.org:123456", False),
        ("example.org:80a", False),
        ("[::1", False),
        ("[g::1]", False),
        ("ex_ample.org", False),
        ("example.org\n", False),
        ("d" * 256, False),
    ],
)
def test_server_names(name: str, ok: bool) -> None:
    assert ids.is_valid_server_name(name) is ok


@pytest.mark.parametrize(
    ("user_id", "historical", "strict"),
    [
        ("@alice:example.org", True, True),
        ("@a.b_c=d-e/f+g:example.org", True, True),
        ("@Alice:example.org", True, False),
        ("@al!ce:example.org", True, False),
        ('@"quoted"~:example.org', True, False),
        ("@:example.org", False, False),
        ("@al ice:example.org", False, False),
        ("@alice", False, False),
        ("alice:example.org", False, False),
        ("@\u00e9:example.org", False, False),
        ("@a:b:c", False, False),
        ("@" + "a" * 242 + ":example.org", True, True),
        ("@" + "a" * 243 + ":example.org", False, False),
    ],
)
def test_user_ids(user_id: str, historical: bool, strict: bool) -> None:
    assert ids.is_valid_user_id(user_id) is historical
    assert ids.is_valid_user_id(user_id, historical=False) is strict


def test_room_and_event_ids_per_version() -> None:
    v1, v3, v4, v12 = (_rules(v) for v in ("1", "3", "4", "12"))
    hashed = "$" + "a" * 42 + "b"
    assert ids.is_valid_room_id("!opaque:example.org", v1)
    assert ids.is_valid_room_id("!opaque:example.org", _rules("11"))
    assert not ids.is_valid_room_id("!" + "R" * 43, _rules("11"))
    assert ids.is_valid_room_id("!" + "R" * 42 + "-", v12)
    assert not ids.is_valid_room_id("!opaque:example.org", v12)
    assert ids.is_valid_event_id("$opaque:example.org", v1)
    assert not ids.is_valid_event_id(hashed, v1)
    assert ids.is_valid_event_id(hashed, v3) and ids.is_valid_event_id(hashed, v4)
    assert ids.is_valid_event_id("$" + "a" * 42 + "/", v3)
    assert not ids.is_valid_event_id("$" + "a" * 42 + "/", v4)
    assert ids.is_valid_event_id("$" + "a" * 42 + "-", v4)
    assert not ids.is_valid_event_id("$" + "a" * 42 + "-", v3)
    assert not ids.is_valid_event_id("$" + "a" * 44, v4)
    assert ids.domain_of("@alice:example.org:8448") == "example.org:8448"
    assert ids.domain_of("$" + "a" * 43) is None


def test_raw_input_beyond_a_mebibyte_is_refused_before_decoding() -> None:
    data = b'{"content": {"body": "' + b"x" * (1 << 20) + b'"}}'
    assert _code(parse_pdu(data, _rules("10"))) == "too_large"


def test_bytes_like_inputs() -> None:
    raw = msgspec.json.encode(valid("10"))
    for data in (bytearray(raw), memoryview(raw)):
        assert isinstance(parse_pdu(data, _rules("10")), Event)


# --- differential: what we accept, Synapse accepts, with the same event ID ------------------

_INTERESTING = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            0,
            -1,
            1.5,
            2**53 - 1,
            2**53,
            -(2**53),
            2**64,
            "",
            "x" * 300,
            "\u00e9" * 128,
            "@bob:example.org",
            "!other:example.org",
            "!" + "Q" * 43,
            "$" + "Q" * 43,
            "$" + "Q" * 42 + "+",
            "$e:example.org",
            [],
            ["$" + "Q" * 43],
            [["$e:example.org", {}]],
            {},
            {"k": 1.0},
        ]
    ),
    _ANY_JSON,
)


@settings(max_examples=150, deadline=None)
@given(
    version=st.sampled_from(ALL_VERSIONS),
    changes=st.dictionaries(
        st.sampled_from([*_FIELDS, "unsigned", "origin"]), _INTERESTING, max_size=2
    ),
    content=st.dictionaries(st.text(max_size=4), _INTERESTING, max_size=3),
)
def test_accepted_events_are_accepted_by_synapse_with_the_same_id(
    version: str, changes: dict[str, Any], content: dict[str, Any]
) -> None:
    from synapse.event_auth import _check_size_limits
    from synapse.federation.federation_base import event_from_pdu_json

    rules = _rules(version)
    pdu = valid(version, content=content)
    pdu.update(changes)
    problem = validate_pdu(pdu, rules)
    note_event("refused" if problem is not None else "accepted")
    if problem is not None:
        return
    sent = copy.deepcopy(pdu)
    if not rules.reference_pairs:
        # The one deliberate difference: we tolerate (and do not hash) a stray v3+ event_id,
        # Synapse refuses it. The pipeline strips it before the event goes anywhere.
        sent.pop("event_id", None)
    theirs = event_from_pdu_json(sent, KNOWN_ROOM_VERSIONS[version])
    _check_size_limits(theirs)
    assert theirs.event_id == compute_event_id(pdu, rules)


def test_duplicate_keys_keep_the_last_value_like_synapse() -> None:
    # JSON parsers disagree on duplicate keys; Synapse (Python's json) keeps the last one,
    # and so does msgspec. The event ID follows the decoded object.
    rules = _rules("10")
    raw = msgspec.json.encode(valid("10"))[:-1] + b',"depth":7,"depth":9}'
    event = parse_pdu(raw, rules)
    assert isinstance(event, Event) and event.depth == 9
    synapse_event = make_event_from_dict(json.loads(raw), KNOWN_ROOM_VERSIONS["10"])
    assert synapse_event.event_id == event.event_id


# No deadline: the first example imports the pipeline package, which takes long on a busy
# machine.
@settings(deadline=None)
@given(
    version=st.sampled_from(ALL_VERSIONS),
    content=st.dictionaries(st.text(max_size=4), _INTERESTING, max_size=3),
    as_bytes=st.booleans(),
    stray_id=st.booleans(),
)
def test_a_parsed_event_carries_its_canonical_json_for_storage_and_outputs(
    version: str, content: dict[str, Any], as_bytes: bool, stray_id: bool
) -> None:
    from worker.pipeline.events import event_raw, stored_json

    pdu = valid(version, content=content)
    if stray_id and "event_id" not in pdu:
        pdu["event_id"] = "$stray"
    data: Any = msgspec.json.encode(pdu) if as_bytes else pdu
    event = parse_pdu(data, _rules(version))
    if isinstance(event, Rejection):
        return
    assert event.canonical is not None
    assert event.canonical == encode_canonical(event.pdu) == stored_json(event)
    # An event built by hand (a redacted copy, say) has none, and is encoded when stored.
    rebuilt = Event(event.pdu, event.event_id, event.rules)
    assert rebuilt.canonical is None and stored_json(rebuilt) == event.canonical
    # Outputs carry the PDU with its event ID (which overrides a stray one), either way.
    wanted = {**event.pdu, "event_id": event.event_id}
    for built in (event, rebuilt):
        assert msgspec.json.decode(event_raw(built)) == wanted
