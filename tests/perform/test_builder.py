"""The event builder: everything it builds passes our auth rules and Synapse's, carries the
ID Synapse derives, and verifies with the server's public key; what it refuses, Synapse
refuses too (hypothesis over random action sequences, rooms v1 to v12)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.perform.synapse_check import synapse_event, synapse_refusal, synapse_signature_ok
from worker.core.builder import (
    MAX_PREV_EVENTS,
    Built,
    Draft,
    Refused,
    RoomHead,
    build,
    choose_prev_events,
    needed_state,
)
from worker.core.events import Event
from worker.core.format import parse_pdu
from worker.core.hashes import compute_event_id, room_id_for_create
from worker.core.outcomes import Rejection
from worker.core.signing import (
    KeyFileError,
    ServerKey,
    hash_and_sign,
    new_key_file,
    parse_key_file,
    verify_event,
)
from worker.core.versions import ROOM_VERSIONS, rules_for

SERVER = "hs.test"
KEY = parse_key_file(new_key_file(b"\x07" * 32, b"abcd"), SERVER)
USERS = [f"@{n}:{SERVER}" for n in ("alice", "bob", "carol")] + ["@dave:other.test"]
MEMBERSHIPS = ["join", "invite", "leave", "ban", "knock"]
JOIN_RULES = ["public", "invite", "knock", "restricted"]


def _start(version: str) -> tuple[RoomHead, list[dict[str, Any]]]:
    rules = rules_for(version)
    assert rules is not None
    head = RoomHead(rules, f"!room:{SERVER}")
    alice = USERS[0]
    events: list[dict[str, Any]] = []
    users = {} if rules.privileged_creators else {alice: 100}
    for draft in (
        Draft("m.room.create", alice, {"room_version": version}, ""),
        Draft("m.room.member", alice, {"membership": "join"}, alice),
        Draft("m.room.power_levels", alice, {"users": users, "invite": 0}, ""),
    ):
        built = _build(draft, head, len(events))
        assert isinstance(built, Built), built
        _judge(built, head, version)
        events.append(built.pdu)
        head = head.advance(built)
    return head, events


def _build(draft: Draft, head: RoomHead, n: int) -> Built | Refused:
    return build(draft, head, key=KEY, origin_server_ts=1_700_000_000_000 + n,
                 event_id_hint=f"$e{n}:{SERVER}")


def _judge(built: Built, head: RoomHead, version: str) -> None:
    """Synapse agrees the event is allowed, derives the same ID, and the signature holds."""
    auth = [head.state[k].pdu for k in needed_state(Draft(
        built.event.type, built.event.sender, built.event.content, built.event.state_key
    ), head.rules) if k in head.state]
    assert synapse_refusal(built.pdu, version, auth) is None
    assert synapse_event(built.pdu, version).event_id == built.event_id
    assert synapse_signature_ok(built.pdu, version, SERVER, KEY.key_id, KEY.verify_key_b64)
    assert verify_event(built.pdu, head.rules, SERVER, KEY.key_id, bytes(KEY.key.verify_key))


action = st.tuples(
    st.sampled_from(["member", "message", "topic", "power", "join_rules", "custom"]),
    st.sampled_from(USERS),
    st.sampled_from(USERS),
    st.sampled_from(MEMBERSHIPS),
    st.sampled_from(JOIN_RULES),
    st.integers(min_value=0, max_value=100),
)


def _draft(kind: str, sender: str, target: str, membership: str, rule: str, n: int) -> Draft:
    if kind == "member":
        return Draft("m.room.member", sender, {"membership": membership}, target)
    if kind == "message":
        return Draft("m.room.message", sender, {"msgtype": "m.text", "body": f"m{n}"})
    if kind == "topic":
        return Draft("m.room.topic", sender, {"topic": f"t{n}"}, "")
    if kind == "power":
        return Draft("m.room.power_levels", sender, {"users": {target: n}, "invite": 0}, "")
    if kind == "join_rules":
        return Draft("m.room.join_rules", sender, {"join_rule": rule}, "")
    return Draft("org.example.custom", sender, {"n": n}, target if n % 2 else "")


@pytest.mark.parametrize("version", sorted(ROOM_VERSIONS, key=int))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(action, min_size=1, max_size=25))
def test_built_events_pass_our_rules_and_synapses(
    version: str, actions: list[tuple[str, str, str, str, str, int]]
) -> None:
    head, events = _start(version)
    for n, (kind, sender, target, membership, rule, level) in enumerate(actions):
        draft = _draft(kind, sender, target, membership, rule, level)
        built = _build(draft, head, len(events) + n)
        auth = [head.state[k].pdu for k in needed_state(draft, head.rules) if k in head.state]
        if isinstance(built, Refused):
            assert not built.invalid, built
            # Synapse refuses it too (judged on the same auth events, unsigned: the event
            # never leaves the builder).
            unsigned = _unchecked(draft, head)
            assert synapse_refusal(unsigned, version, auth) is not None, (draft, built)
            continue
        _judge(built, head, version)
        assert built.event.depth == max(e.depth for e in head.latest) + 1
        assert list(built.event.prev_event_ids) == [e.event_id for e in head.latest]
        head = head.advance(built)


def _unchecked(draft: Draft, head: RoomHead) -> dict[str, Any]:
    """The PDU the builder would have built, without its checks (to ask Synapse)."""
    pdu: dict[str, Any] = {
        "room_id": head.room_id, "type": draft.type, "sender": draft.sender,
        "content": dict(draft.content), "origin_server_ts": 1, "depth": 9,
        "prev_events": [], "auth_events": [],
    }
    if head.rules.reference_pairs:
        pdu["event_id"] = f"$x:{SERVER}"
    if draft.state_key is not None:
        pdu["state_key"] = draft.state_key
    return hash_and_sign(pdu, head.rules, KEY)


def test_prev_events_are_the_ten_deepest_extremities() -> None:
    rules = rules_for("10")
    assert rules is not None
    latest = [Event({"depth": d}, f"$e{d:02}", rules) for d in range(25)]
    chosen = choose_prev_events(latest)
    assert len(chosen) == MAX_PREV_EVENTS
    assert [e.depth for e in chosen] == list(range(24, 14, -1))


def test_v12_create_makes_the_room_id_and_is_not_an_auth_event() -> None:
    head, events = _start("12")
    create = events[0]
    assert "room_id" not in create
    assert head.room_id == "!" + synapse_event(create, "12").event_id[1:]
    msg = _build(Draft("m.room.message", USERS[0], {"body": "x"}), head, 9)
    assert isinstance(msg, Built)
    assert synapse_event(create, "12").event_id not in msg.pdu["auth_events"]


def test_a_stranger_is_refused_with_the_rule_reason() -> None:
    head, _ = _start("11")
    refused = _build(Draft("m.room.message", USERS[1], {"body": "x"}), head, 9)
    assert isinstance(refused, Refused) and not refused.invalid
    assert refused.rejection.code == "not_in_room"


def test_an_oversized_event_is_invalid() -> None:
    head, _ = _start("10")
    big = _build(Draft("m.room.message", USERS[0], {"body": "x" * 70_000}), head, 9)
    assert isinstance(big, Refused) and big.invalid


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("version", "content"),
    [
        ("10", {"n": 1.5}),
        ("12", {"a": {"b": [1, 0.5]}}),
        ("10", {"n": 2**60}),
        ("1", _nested(120)),
        ("12", {"x": [1, 2], "y": _nested(120)}),
    ],
)
def test_a_draft_the_format_refuses_is_invalid_with_the_formats_reason(
    version: str, content: dict[str, Any]
) -> None:
    head, _ = _start(version)
    draft = Draft("m.room.message", USERS[0], content)
    refused = _build(draft, head, 9)
    assert isinstance(refused, Refused) and refused.invalid
    # What format validation says of the same event, hashed and signed.
    expected = parse_pdu(_unchecked(draft, head), head.rules)
    assert isinstance(expected, Rejection)
    assert refused.rejection == expected


def test_floats_before_v6_are_hashed_as_synapse_does() -> None:
    head, _ = _start("5")
    built = _build(Draft("m.room.message", USERS[0], {"n": 1e16, "m": [1e-07, 2.5]}), head, 9)
    assert isinstance(built, Built), built
    _judge(built, head, "5")
    assert built.event_id == compute_event_id(built.pdu, head.rules)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("ed25519 a_1\n", "field"),
        ("ed25519 a-1 AAAA\n", "version"),
        ("ed25519 a_1 !!!!\n", "not base64"),
        ("ed25519 a_1 AAAA\n", "3 bytes"),
        ("curve25519 a_1 AAAA\n", "no ed25519"),
    ],
)
def test_malformed_key_files_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(KeyFileError, match=problem):
        parse_key_file(text, SERVER)


def test_key_file_round_trip_matches_synapse_format() -> None:
    from signedjson.key import read_signing_keys

    text = new_key_file(b"\x05" * 32, b"wxyz")
    ours = parse_key_file(text, SERVER)
    (theirs,) = read_signing_keys(text.splitlines())
    assert f"{theirs.alg}:{theirs.version}" == ours.key_id
    assert bytes(theirs.verify_key) == bytes(ours.key.verify_key)
    assert isinstance(ours, ServerKey)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)


@pytest.mark.parametrize("version", sorted(ROOM_VERSIONS, key=int))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
       # A state key starting with '@' must be the sender's (an auth rule): not this test's
       # subject, so none is drawn.
       state_key=st.none() | st.text(max_size=8).filter(lambda k: not k.startswith("@")))
def test_the_id_from_the_signed_bytes_is_the_reference_hashs(
    version: str, content: dict[str, Any], state_key: str | None
) -> None:
    # The builder hashes the bytes it signed for the event ID (and a v12 room ID) instead
    # of redacting the event again: the result is what the reference hash of the signed
    # event makes, and the signature is `hash_and_sign`'s.
    head, events = _start(version)
    built = _build(Draft("org.example.any", USERS[0], content, state_key), head, 7)
    assert isinstance(built, Built), built
    assert built.event_id == compute_event_id(built.pdu, head.rules)
    unsigned = {k: v for k, v in built.pdu.items() if k not in ("hashes", "signatures")}
    assert hash_and_sign(unsigned, head.rules, KEY) == built.pdu
    if head.rules.room_id_from_create_event:
        assert head.room_id == room_id_for_create(events[0], head.rules)
