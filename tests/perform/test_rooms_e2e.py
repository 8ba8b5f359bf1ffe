"""End to end over NATS: rooms created, written and upgraded only through the Perform API."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Client
from tests.perform.conftest import Api, check_built_events, user

ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol")


@pytest.mark.parametrize("version", ["10", "11", "12"])
@pytest.mark.parametrize("preset", ["private_chat", "trusted_private_chat", "public_chat"])
async def test_create_room_with_every_preset(
    api: Api, reader: Client, version: str, preset: str
) -> None:
    room = await api.perform(
        "create_room", creator=ALICE, room_version=version, preset=preset, name="Room",
        topic="About", invite=[BOB], initial_state=[
            {"type": "org.example.custom", "state_key": "", "content": {"x": 1}},
        ],
    )
    room_id = room["room_id"]
    state = await api.state(room_id)
    create = state[("m.room.create", "")]
    assert create["content"]["room_version"] == version
    expected_rule = "public" if preset == "public_chat" else "invite"
    assert state[("m.room.join_rules", "")]["content"]["join_rule"] == expected_rule
    assert state[("m.room.name", "")]["content"]["name"] == "Room"
    assert state[("m.room.topic", "")]["content"]["topic"] == "About"
    assert state[("org.example.custom", "")]["content"] == {"x": 1}
    assert state[("m.room.member", BOB)]["content"]["membership"] == "invite"
    levels = state[("m.room.power_levels", "")]["content"]
    if version == "12":
        assert ALICE not in levels["users"]
        if preset == "trusted_private_chat":
            assert create["content"]["additional_creators"] == [BOB]
    else:
        assert levels["users"][ALICE] == 100
        if preset == "trusted_private_chat":
            assert levels["users"][BOB] == 100
    await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    await api.send(room_id, BOB, "hello")
    assert await check_built_events(api, reader) >= 10
