"""Rule 1 (m.room.create), rule 2 of v12 (room ID) and rule 2/3 (the auth_events list)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.builder import RoomBuilder
from worker.core.auth import auth_types_for_event, check_auth, check_auth_event_list
from worker.core.events import Event

ALL = [str(v) for v in range(1, 13)]
PRE_V11 = [str(v) for v in range(1, 11)]
PRE_V12 = [str(v) for v in range(1, 12)]


def _code(b: RoomBuilder, event_id: str) -> str | None:
    failure = b.check(event_id)
    return failure.code if failure else None


def _create(version: str, **overrides: Any) -> RoomBuilder:
    """A builder holding one create event, with top-level PDU fields overridden."""
    b = RoomBuilder(version)
    b.create("alice")
    b.events["$create" + (":test" if version in ("1", "2") else "")].update(overrides)
    return b


@pytest.mark.parametrize("version", ALL)
def test_create_accepted(version: str) -> None:
    b = RoomBuilder(version)
    assert _code(b, b.create("alice")) is None


@pytest.mark.parametrize("version", ALL)
def test_create_with_prev_events_rejected(version: str) -> None:
    b = RoomBuilder(version)
    first = b.create("alice")
    again = b.add(
        "m.room.create", "alice", dict(b.events[first]["content"]), state_key="", prev=[first]
    )
    assert _code(b, again) == "create_not_first"


@pytest.mark.parametrize("version", PRE_V12)
def test_create_room_id_domain_must_match_sender(version: str) -> None:
    b = RoomBuilder(version, room_id="!room:elsewhere")
    assert _code(b, b.create("alice")) == "bad_create"


def test_v12_create_with_room_id_rejected() -> None:
    b = RoomBuilder("12")
    eid = b.create("alice")
    b.edit(eid, room_id="!create")
    assert _code(b, eid) == "bad_create"


@pytest.mark.parametrize("version", ALL)
def test_create_unknown_room_version_rejected(version: str) -> None:
    b = RoomBuilder(version)
    assert _code(b, b.create("alice", room_version="999")) == "unknown_room_version"
    assert _code(b, b.create("alice", room_version=12)) == "unknown_room_version"


@pytest.mark.parametrize("version", ALL)
def test_create_without_room_version_means_v1(version: str) -> None:
    b = RoomBuilder(version)
    eid = b.create("alice")
    del b.events[eid]["content"]["room_version"]
    assert _code(b, eid) is None


@pytest.mark.parametrize("version", PRE_V11)
def test_create_needs_creator_before_v11(version: str) -> None:
    b = RoomBuilder(version)
    eid = b.create("alice")
    del b.events[eid]["content"]["creator"]
    assert _code(b, eid) == "bad_create"


@pytest.mark.parametrize("version", ["11", "12"])
def test_create_without_creator_from_v11(version: str) -> None:
    b = RoomBuilder(version)
    assert "creator" not in b.events[b.create("alice")]["content"]
    assert _code(b, "$create") is None


@pytest.mark.parametrize(
    "extra",
    [["@bob:test"], [], ["@bob:test", "@carol:other.example:8448"]],
)
def test_v12_additional_creators_valid(extra: list[str]) -> None:
    b = RoomBuilder("12")
    assert _code(b, b.create("alice", additional_creators=extra)) is None


@pytest.mark.parametrize(
    "extra", ["@bob:test", [1], ["bob"], ["@bob"], ["@:test"], [None], ["@bob:" + "a" * 260]]
)
def test_v12_additional_creators_invalid(extra: object) -> None:
    b = RoomBuilder("12")
    assert _code(b, b.create("alice", additional_creators=extra)) == "bad_additional_creators"


@pytest.mark.parametrize("version", PRE_V12)
def test_additional_creators_ignored_before_v12(version: str) -> None:
    b = RoomBuilder(version)
    assert _code(b, b.create("alice", additional_creators="junk")) is None


def test_v12_room_id_must_be_the_create_event_id() -> None:
    b = RoomBuilder("12")
    b.create("alice")
    ok = b.join("alice")
    assert _code(b, ok) is None
    b.room_id = "!other"
    bad = b.message("alice")
    failure = check_auth(b.event(bad), b.auth_map(bad))
    assert failure is not None and failure.code == "bad_room_id"


# -- auth events selection -------------------------------------------------------------------


def _ev(version: str, pdu: dict[str, Any]) -> Event:
    from worker.core.versions import rules_for

    rules = rules_for(version)
    assert rules is not None
    return Event(pdu, "$x", rules)


def test_selection_for_create_is_empty() -> None:
    ev = _ev("10", {"type": "m.room.create", "state_key": "", "sender": "@a:t", "content": {}})
    assert auth_types_for_event(ev) == []


@pytest.mark.parametrize("version", ALL)
def test_selection_for_message(version: str) -> None:
    ev = _ev(version, {"type": "m.room.message", "sender": "@a:t", "content": {}})
    expected = [("m.room.power_levels", ""), ("m.room.member", "@a:t")]
    if version != "12":
        expected.insert(0, ("m.room.create", ""))
    assert auth_types_for_event(ev) == expected


def test_selection_for_memberships() -> None:
    def keys(version: str, content: dict[str, Any], sender: str = "@a:t") -> list[Any]:
        pdu = {"type": "m.room.member", "sender": sender, "state_key": "@b:t", "content": content}
        return auth_types_for_event(_ev(version, pdu))

    base = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", "@a:t")]
    assert keys("10", {"membership": "ban"}) == [*base, ("m.room.member", "@b:t")]
    assert keys("10", {"membership": "invite"}) == [
        *base,
        ("m.room.member", "@b:t"),
        ("m.room.join_rules", ""),
    ]
    signed = {"signed": {"mxid": "@b:t", "token": "tok", "signatures": {}}}
    assert keys("10", {"membership": "invite", "third_party_invite": signed})[-1] == (
        "m.room.third_party_invite",
        "tok",
    )
    via = {"membership": "join", "join_authorised_via_users_server": "@c:t"}
    assert keys("8", via)[-1] == ("m.room.member", "@c:t")
    assert ("m.room.member", "@c:t") not in keys("7", via)
    # sender = target: one entry
    own = keys("12", {"membership": "join"}, sender="@b:t")
    assert own == [
        ("m.room.power_levels", ""),
        ("m.room.member", "@b:t"),
        ("m.room.join_rules", ""),
    ]


# -- rule 2 / 3: the auth_events list ---------------------------------------------------------


def _room(version: str) -> RoomBuilder:
    b = RoomBuilder(version)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={} if version == "12" else {"alice": 100})
    b.join_rules("alice", "public")
    return b


@pytest.mark.parametrize("version", ALL)
def test_auth_list_ok(version: str) -> None:
    b = _room(version)
    eid = b.message("alice")
    ev = b.event(eid)
    assert check_auth_event_list(ev, [b.event(a) for a in ev.auth_event_ids]) is None


@pytest.mark.parametrize("version", ALL)
def test_auth_list_duplicate(version: str) -> None:
    b = _room(version)
    pl2 = b.power_levels("alice", users={} if version == "12" else {"alice": 100}, apply=False)
    auth = [b.state[("m.room.power_levels", "")], pl2, b.state[("m.room.member", "@alice:test")]]
    if version != "12":
        auth.insert(0, b.state[("m.room.create", "")])
    eid = b.message("alice", auth=auth)
    ev = b.event(eid)
    failure = check_auth_event_list(ev, [b.event(a) for a in ev.auth_event_ids])
    assert failure is not None and failure.code == "duplicate_auth_event"


@pytest.mark.parametrize("version", ALL)
def test_auth_list_unexpected(version: str) -> None:
    b = _room(version)
    eid = b.message("alice", auth=[*b.latest, *b.event(b.latest[0]).auth_event_ids])
    ev = b.event(eid)
    failure = check_auth_event_list(ev, [b.event(a) for a in ev.auth_event_ids])
    assert failure is not None and failure.code == "unexpected_auth_event"


def test_v12_create_must_not_be_listed() -> None:
    b = _room("12")
    eid = b.message("alice", auth=["$create", "$pl", "$join_alice"])
    failure = b.check(eid)
    assert failure is not None and failure.code == "unexpected_auth_event"
    assert "create" in failure.reason


@pytest.mark.parametrize("version", PRE_V12)
def test_auth_list_missing_create(version: str) -> None:
    b = _room(version)
    eid = b.message("alice", auth=[b.state[("m.room.member", "@alice:test")]])
    ev = b.event(eid)
    failure = check_auth_event_list(ev, [b.event(a) for a in ev.auth_event_ids])
    assert failure is not None and failure.code == "missing_create"


@pytest.mark.parametrize("version", ALL)
def test_auth_list_wrong_room(version: str) -> None:
    b = _room(version)
    other = b.fork()
    other.room_id = "!elsewhere:test"
    foreign = other.power_levels("alice", users={} if version == "12" else {"alice": 100})
    auth = [foreign, b.state[("m.room.member", "@alice:test")]]
    if version != "12":
        auth.insert(0, b.state[("m.room.create", "")])
    eid = b.message("alice", auth=auth)
    ev = b.event(eid)
    failure = check_auth_event_list(ev, [b.event(a) for a in ev.auth_event_ids])
    assert failure is not None and failure.code == "wrong_room"


@pytest.mark.parametrize("version", ALL)
def test_create_event_list_is_not_considered(version: str) -> None:
    b = RoomBuilder(version)
    eid = b.create("alice")
    assert check_auth_event_list(b.event(eid), [b.event(eid)]) is None


@pytest.mark.parametrize("version", PRE_V12)
def test_missing_create_in_state(version: str) -> None:
    b = _room(version)
    eid = b.message("alice")
    failure = check_auth(b.event(eid), {})
    assert failure is not None and failure.code == "missing_create"
