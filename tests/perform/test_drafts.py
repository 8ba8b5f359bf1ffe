"""The pure parts of the performs: /createRoom order, presets, and the upgrade's power levels."""

from __future__ import annotations

from typing import Any

import pytest

from worker.core.signing import new_key_file, parse_key_file
from worker.core.versions import rules_for
from worker.messages.perform import CreateRoomRequest, StateEvent
from worker.perform.create import creation_drafts
from worker.perform.upgrade import normalised_levels, restricted_levels, split_canonical_alias
from worker.perform.writer import RoomWriter

ALICE, BOB = "@alice:hs.test", "@bob:hs.test"


def _writer() -> RoomWriter:
    key = parse_key_file(new_key_file(b"\x01" * 32, b"abcd"), "hs.test")
    return RoomWriter(None, None, None, key)  # type: ignore[arg-type]


def test_create_room_events_follow_the_spec_order() -> None:
    rules = rules_for("11")
    assert rules is not None
    req = CreateRoomRequest(
        creator=ALICE, preset="public_chat", name="N", topic="T", invite=[BOB], is_direct=True,
        initial_state=[
            StateEvent(type="m.room.history_visibility", content={"history_visibility": "joined"}),
            StateEvent(type="org.example", state_key="k", content={}),
        ],
        power_level_content_override={"ban": 99},
    )
    drafts = creation_drafts(_writer(), req, rules, "#a:hs.test")
    assert [(d.type, d.state_key) for d in drafts] == [
        ("m.room.create", ""),
        ("m.room.member", ALICE),
        ("m.room.power_levels", ""),
        ("m.room.canonical_alias", ""),
        ("m.room.join_rules", ""),
        # history visibility comes from initial_state instead of the preset
        ("m.room.guest_access", ""),
        ("m.room.history_visibility", ""),
        ("org.example", "k"),
        ("m.room.name", ""),
        ("m.room.topic", ""),
        ("m.room.member", BOB),
    ]
    assert drafts[2].content["ban"] == 99
    assert drafts[-1].content == {"membership": "invite", "is_direct": True}


@pytest.mark.parametrize(("version", "listed"), [("10", True), ("12", False)])
def test_trusted_private_chat_invitees_are_admins_or_creators(version: str, listed: bool) -> None:
    rules = rules_for(version)
    assert rules is not None
    req = CreateRoomRequest(creator=ALICE, preset="trusted_private_chat", invite=[BOB])
    create, _, power = creation_drafts(_writer(), req, rules, None)[:3]
    assert (BOB in power.content["users"]) is listed
    assert (create.content.get("additional_creators") == [BOB]) is not listed
    assert power.content["invite"] == 0


def test_upgrade_levels() -> None:
    rules = rules_for("12")
    assert rules is not None
    old: dict[str, Any] = {"users": {ALICE: "100", BOB: 50}, "ban": "50", "events_default": 0}
    fit = normalised_levels(old, rules, ALICE)
    assert fit["users"] == {BOB: 50} and fit["ban"] == 50
    restricted = restricted_levels({"users_default": 0, "events_default": 0, "invite": 0})
    assert restricted is not None
    assert restricted["events_default"] == 50 and restricted["invite"] == 50
    assert restricted_levels({"events_default": 60, "invite": 70}) is None


def test_upgrade_splits_the_canonical_alias_by_server() -> None:
    content = {"alias": "#a:hs.test", "alt_aliases": ["#b:hs.test", "#c:other.test"], "x": 1}
    new, old = split_canonical_alias(content, "hs.test")
    assert new == {"alias": "#a:hs.test", "alt_aliases": ["#b:hs.test"]}
    assert old == {"alt_aliases": ["#c:other.test"], "x": 1}
    assert content["alias"] == "#a:hs.test"  # the old event's content is not changed
    # Every alias ours: the old room's canonical alias becomes empty.
    assert split_canonical_alias({"alias": "#a:hs.test"}, "hs.test") == ({"alias": "#a:hs.test"}, {})
    # None of them ours: nothing moves.
    assert split_canonical_alias({"alias": "#a:o.test"}, "hs.test") == ({}, {"alias": "#a:o.test"})
    # Malformed entries stay where they are.
    assert split_canonical_alias({"alias": 5, "alt_aliases": [3]}, "hs.test") == (
        {}, {"alias": 5, "alt_aliases": [3]}
    )
