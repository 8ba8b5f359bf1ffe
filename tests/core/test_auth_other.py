"""Rules 3/4 (m.federate), 4 of v1-v5 (aliases), 6 to 9, 11 of v1-v2 (redactions), and the
soft-fail check."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.core.auth_rooms import code, room
from tests.fixtures.builder import RoomBuilder
from worker.core.auth import SOFT_FAIL_PREFIX, check_auth, check_soft_fail
from worker.core.events import Event, StateKey

ALL = [str(v) for v in range(1, 13)]
PRE_V6 = [str(v) for v in range(1, 6)]
V6_PLUS = [str(v) for v in range(6, 13)]
V1_V2 = ["1", "2"]
V3_PLUS = [str(v) for v in range(3, 13)]




# -- rule 3 / 4: m.federate -------------------------------------------------------------------


# Any value but `true` keeps other servers out, as in Synapse (docs/interop.md).
@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize(
    ("federate", "remote_ok"), [(False, False), (True, True), ("no", False), (1, False)]
)
def test_federate(version: str, federate: Any, remote_ok: bool) -> None:
    b = RoomBuilder(version)
    b.create("alice", **{"m.federate": federate})
    b.join("alice")
    b.join_rules("alice", "public")
    b.join("@dave:other.example", apply=False)
    assert (code(b, "$join_dave" + (":other.example" if version in V1_V2 else "")) is None) is (
        remote_ok
    )
    assert code(b, b.message("alice")) is None


@pytest.mark.parametrize("version", ALL)
def test_unfederated_room_refuses_remote_membership_targets(version: str) -> None:
    """As Synapse does (docs/interop.md): in a room that does not federate, a local member
    cannot invite, kick or ban a user of another server either."""
    b = RoomBuilder(version)
    b.create("alice", **{"m.federate": False})
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    for membership in ("invite", "ban"):
        eid = b.member("alice", "@dave:other.example", membership, apply=False)
        failure = b.check(eid)
        assert failure is not None and failure.code == "room_not_federated"
        assert failure.rule == "m.room.member/federate"
    assert code(b, b.member("alice", "bob", "invite", apply=False)) is None


# -- rule 4 (v1-v5): m.room.aliases -----------------------------------------------------------


@pytest.mark.parametrize("version", PRE_V6)
def test_aliases_special_case(version: str) -> None:
    b = room(version)
    # no membership or power needed, only the sender's own server as state key
    assert code(b, b.state_event("m.room.aliases", "test", {"aliases": []}, "zed")) is None
    bad = b.state_event("m.room.aliases", "other.example", {"aliases": []}, "alice")
    failure = b.check(bad)
    assert failure is not None and failure.code == "bad_alias_state_key"
    assert failure.rule == "m.room.aliases/2"
    no_key = b.add("m.room.aliases", "alice", {"aliases": []})
    assert code(b, no_key) == "bad_alias_state_key"


@pytest.mark.parametrize("version", V6_PLUS)
def test_aliases_are_ordinary_state_from_v6(version: str) -> None:
    b = room(version)
    assert code(b, b.state_event("m.room.aliases", "test", {"aliases": []}, "zed")) == "not_in_room"
    assert code(b, b.state_event("m.room.aliases", "test", {}, "carol")) == "insufficient_power"
    assert code(b, b.state_event("m.room.aliases", "elsewhere", {}, "bob")) is None


# -- rules 6 to 9 -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
def test_sender_must_be_joined(version: str) -> None:
    b = room(version)
    assert code(b, b.message("carol")) is None
    assert code(b, b.message("zed")) == "not_in_room"
    b.leave("carol")
    assert code(b, b.message("carol")) == "not_in_room"
    b.invite("bob", "erin")
    assert code(b, b.message("erin")) == "not_in_room"


@pytest.mark.parametrize("version", ALL)
def test_third_party_invite_event_needs_invite_level(version: str) -> None:
    b = room(version, invite=50)
    content = {"display_name": "x", "public_key": "AAAA"}
    assert code(b, b.state_event("m.room.third_party_invite", "t1", content, "bob")) is None
    failure = b.check(b.state_event("m.room.third_party_invite", "t2", content, "carol"))
    assert failure is not None and failure.code == "insufficient_power"
    assert failure.rule == "room/7"
    # rule 7 allows before rule 8: an events entry for the type does not apply
    b2 = room(version, events={"m.room.third_party_invite": 100})
    assert code(b2, b2.state_event("m.room.third_party_invite", "t", content, "carol")) is None


@pytest.mark.parametrize("version", ALL)
def test_required_power_level(version: str) -> None:
    b = room(version, events={"m.room.message": 10, "m.room.topic": 0}, state_default=40)
    assert code(b, b.message("carol")) == "insufficient_power"
    assert code(b, b.message("bob")) is None
    assert code(b, b.topic("carol")) is None
    assert code(b, b.state_event("m.room.name", "", {"name": "n"}, "carol")) == "insufficient_power"
    assert code(b, b.state_event("m.room.name", "", {"name": "n"}, "bob")) is None


@pytest.mark.parametrize("version", ALL)
def test_events_default(version: str) -> None:
    b = room(version, events_default=20)
    assert code(b, b.message("carol")) == "insufficient_power"
    assert code(b, b.add("org.example.custom", "bob", {})) is None


@pytest.mark.parametrize("version", ALL)
def test_state_key_starting_with_at(version: str) -> None:
    b = room(version, state_default=0)
    assert code(b, b.state_event("org.example.s", "@carol:test", {}, "carol")) is None
    failure = b.check(b.state_event("org.example.s", "@carol:test", {}, "bob"))
    assert failure is not None and failure.code == "state_key_not_sender"
    assert failure.rule == "room/9"
    assert code(b, b.state_event("org.example.s", "carol", {}, "bob")) is None


# -- rule 11 (v1-v2): redactions --------------------------------------------------------------


@pytest.mark.parametrize("version", V1_V2)
def test_redaction_v1_v2(version: str) -> None:
    b = room(version, users={"@dave:other.example": 0})
    b.join("@dave:other.example")
    local = b.message("alice")
    remote = b.message("@dave:other.example")
    # same server as the redacted event: allowed without the redact level
    assert code(b, b.redact("carol", local)) is None
    # another server's event: needs the redact level (50)
    failure = b.check(b.redact("carol", remote))
    assert failure is not None and failure.code == "insufficient_power"
    assert failure.rule == "m.room.redaction/3"
    assert code(b, b.redact("bob", remote)) is None


@pytest.mark.parametrize("version", V3_PLUS)
def test_redaction_from_v3_is_an_ordinary_event(version: str) -> None:
    b = room(version, users={"@dave:other.example": 0})
    b.join("@dave:other.example")
    remote = b.message("@dave:other.example")
    assert code(b, b.redact("carol", remote)) is None  # the pipeline decides whether it applies
    b2 = room(version, events={"m.room.redaction": 60})
    assert code(b2, b2.redact("bob", b2.message("alice"))) == "insufficient_power"


# -- the soft-fail check ----------------------------------------------------------------------


class CountingState(Mapping[StateKey, Event]):
    """A state map that fails the test if anything iterates it (lookups, not copies)."""

    def __init__(self, events: dict[StateKey, Event]) -> None:
        self._events = events
        self.lookups = 0

    def __getitem__(self, key: StateKey) -> Event:
        self.lookups += 1
        return self._events[key]

    def __iter__(self) -> Iterator[StateKey]:
        raise AssertionError("the auth rules must not iterate the state")

    def __len__(self) -> int:
        raise AssertionError("the auth rules must not size the state")


@pytest.mark.parametrize("version", ALL)
def test_soft_fail(version: str) -> None:
    b = room(version)
    fork = b.fork()
    msg = fork.message("carol")  # authorised by the state it was built on
    assert fork.check(msg) is None
    b.ban("alice", "carol")  # ... but carol has been banned since
    current = CountingState(b.state_events())
    failure = check_soft_fail(fork.event(msg), current)
    assert failure is not None
    assert failure.code == SOFT_FAIL_PREFIX + "not_in_room"
    assert failure.rule == "room/6"
    assert current.lookups > 0
    assert check_soft_fail(b.event(b.message("bob")), CountingState(b.state_events())) is None


@pytest.mark.parametrize("version", ALL)
def test_check_auth_only_looks_up_selected_keys(version: str) -> None:
    b = room(version)
    for i in range(50):
        b.join(f"user{i}")
    state = CountingState(b.state_events())
    assert check_auth(b.event(b.message("bob")), state) is None
    assert state.lookups <= 4


def test_soft_fail_view_exposes_only_the_selection() -> None:
    from worker.core.auth.softfail import _Selected

    b = room("10")
    state = b.state_events()
    view = _Selected(state, [("m.room.power_levels", ""), ("m.room.member", "@zed:test")])
    assert sorted(view) == [("m.room.create", ""), ("m.room.power_levels", "")]
    assert len(view) == 2
    assert view.get(("m.room.join_rules", "")) is None  # in the state, not in the selection
    assert view[("m.room.power_levels", "")] is state[("m.room.power_levels", "")]
