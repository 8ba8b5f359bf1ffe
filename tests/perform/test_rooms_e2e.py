"""End to end over NATS: rooms created, written and upgraded only through the Perform API."""

from __future__ import annotations

import asyncio

import msgspec
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


async def _public_room(api: Api, version: str = "11", **kw: object) -> str:
    room = await api.perform(
        "create_room", creator=ALICE, room_version=version, preset="public_chat", **kw
    )
    room_id: str = room["room_id"]
    return room_id


async def test_messages_with_and_without_txn_id(api: Api, reader: Client) -> None:
    room_id = await _public_room(api)
    plain = await api.send(room_id, ALICE, "one")
    again = await api.send(room_id, ALICE, "one")
    assert plain != again  # without a txn_id every send is a new event
    first = await api.send(room_id, ALICE, "two", txn_id="t1")
    second = await api.send(room_id, ALICE, "two", txn_id="t1")
    assert first == second
    # The transaction is the sender's: another sender's t1 is another event.
    await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    assert await api.send(room_id, BOB, "two", txn_id="t1") != first
    outputs = await reader.outputs()
    bodies = [
        msgspec.json.decode(o.new_room_event.event)["content"].get("body")
        for o in outputs if o.new_room_event is not None
    ]
    assert bodies.count("two") == 2
    await check_built_events(api, reader)


async def test_a_strangers_message_is_refused_with_the_rule(api: Api) -> None:
    room_id = await _public_room(api)
    refused = await api.refused(
        "send_event", room_id=room_id, sender=CAROL, type="m.room.message",
        content={"body": "let me in"},
    )
    assert (refused.status, refused.code, refused.reason_code) == ("403", "forbidden",
                                                                   "not_in_room")
    assert refused.body["reason"]


async def test_bad_requests(api: Api) -> None:
    room_id = await _public_room(api)
    remote = await api.refused("send_event", room_id=room_id, sender="@eve:elsewhere.test",
                               type="m.room.message", content={})
    assert remote.code == "bad_request"
    unknown = await api.refused("send_event", room_id="!nope:hs.test", sender=ALICE,
                                type="m.room.message", content={})
    assert unknown.code == "not_found"
    version = await api.refused("create_room", creator=ALICE, room_version="99")
    assert version.code == "bad_request"
    alias = await api.refused("set_alias", alias="#a:elsewhere.test", room_id=room_id,
                              user_id=ALICE)
    assert alias.code == "bad_request"
    garbage = await api.refused("send_event", room_id=room_id)
    assert garbage.code == "bad_request"
    remote_join = await api.refused("join", user_id=BOB, room_id_or_alias="!far:away.test")
    assert remote_join.code == "unavailable"


async def test_membership_lifecycle(api: Api, reader: Client) -> None:
    room = await api.perform("create_room", creator=ALICE, room_version="10",
                             preset="private_chat")
    room_id = room["room_id"]

    async def membership(who: str) -> str:
        state = await api.state(room_id)
        event = state.get(("m.room.member", who))
        return event["content"]["membership"] if event else ""

    refused = await api.refused("join", user_id=BOB, room_id_or_alias=room_id)
    assert refused.code == "forbidden"
    await api.perform("invite", room_id=room_id, sender=ALICE, user_id=BOB)
    assert await membership(BOB) == "invite"
    await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    assert await membership(BOB) == "join"
    await api.perform("leave", room_id=room_id, user_id=BOB)
    assert await membership(BOB) == "leave"
    # Rejoining an invite-only room needs a new invite.
    await api.perform("invite", room_id=room_id, sender=ALICE, user_id=BOB)
    await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    # Kick, ban and unban are member events sent by the room's moderator.
    async def member_event(target: str, what: str) -> None:
        await api.perform("send_event", room_id=room_id, sender=ALICE, type="m.room.member",
                          state_key=target, content={"membership": what})

    await member_event(BOB, "leave")
    assert await membership(BOB) == "leave"
    await member_event(BOB, "ban")
    assert await membership(BOB) == "ban"
    await api.perform("invite", room_id=room_id, sender=ALICE, user_id=CAROL)
    await api.perform("join", user_id=CAROL, room_id_or_alias=room_id)
    banned = await api.refused("join", user_id=BOB, room_id_or_alias=room_id)
    assert banned.code == "forbidden" and banned.reason_code
    # Bob cannot unban himself; Carol (power 0) cannot kick Alice.
    kick = await api.refused("send_event", room_id=room_id, sender=CAROL, type="m.room.member",
                             state_key=ALICE, content={"membership": "leave"})
    assert kick.code == "forbidden"
    await member_event(BOB, "leave")  # unban
    assert await membership(BOB) == "leave"
    await api.perform("invite", room_id=room_id, sender=ALICE, user_id=BOB)
    await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    assert await membership(BOB) == "join"
    # Forget only after leaving.
    still = await api.refused("forget", room_id=room_id, user_id=BOB)
    assert still.code == "bad_request"
    await api.perform("leave", room_id=room_id, user_id=BOB)
    left = await api.query("rooms_for_user", user_id=BOB, membership="leave")
    assert room_id in left["room_ids"]
    await api.perform("forget", room_id=room_id, user_id=BOB)
    # A forgotten room is no longer listed among the user's rooms.
    left = await api.query("rooms_for_user", user_id=BOB, membership="leave")
    assert room_id not in left["room_ids"]
    await check_built_events(api, reader)


async def test_restricted_join_is_authorised_by_a_local_member(
    api: Api, reader: Client
) -> None:
    space = await _public_room(api, "10")
    await api.perform("join", user_id=BOB, room_id_or_alias=space)
    room = await api.perform("create_room", creator=ALICE, room_version="10",
                             preset="private_chat", initial_state=[{
                                 "type": "m.room.join_rules", "content": {
                                     "join_rule": "restricted",
                                     "allow": [{"type": "m.room_membership", "room_id": space}],
                                 }}])
    room_id = room["room_id"]
    joined = await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    state = await api.state(room_id)
    join = state[("m.room.member", BOB)]
    assert join["event_id"] == joined["event_id"]
    assert join["content"]["join_authorised_via_users_server"] == ALICE
    # Carol is in no allowed room.
    refused = await api.refused("join", user_id=CAROL, room_id_or_alias=room_id)
    assert refused.code == "forbidden"
    await check_built_events(api, reader)


async def test_aliases_and_directory(api: Api) -> None:
    room = await api.perform("create_room", creator=ALICE, room_alias_name="lobby",
                             visibility="public")
    room_id = room["room_id"]
    assert room["room_alias"] == "#lobby:hs.test"
    assert (await api.query("room_for_alias", alias="#lobby:hs.test"))["room_id"] == room_id
    taken = await api.refused("create_room", creator=BOB, room_alias_name="lobby")
    assert taken.code == "conflict"
    await api.perform("set_alias", alias="#hall:hs.test", room_id=room_id, user_id=ALICE)
    aliases = await api.query("aliases_for_room", room_id=room_id)
    assert aliases["aliases"] == ["#hall:hs.test", "#lobby:hs.test"]
    # Joining by alias.
    joined = await api.perform("join", user_id=BOB, room_id_or_alias="#hall:hs.test")
    assert joined["room_id"] == room_id
    # Bob neither created the alias nor may change the canonical alias.
    refused = await api.refused("remove_alias", alias="#hall:hs.test", user_id=BOB)
    assert refused.code == "forbidden"
    await api.perform("remove_alias", alias="#hall:hs.test", user_id=ALICE)
    gone = await api.refused("remove_alias", alias="#hall:hs.test", user_id=ALICE)
    assert gone.code == "not_found"
    try:
        await api.query("room_for_alias", alias="#hall:hs.test")
        raise AssertionError("a removed alias resolved")
    except Exception as exc:
        assert getattr(exc, "code", "") == "not_found"
    published = await api.query("published_rooms", limit=10)
    assert published["room_ids"] == [room_id] and published["total"] == 1
    await api.perform("publish", room_id=room_id, visibility="private")
    assert (await api.query("published_rooms"))["room_ids"] == []


async def test_upgrade_v10_to_v12_carries_members_aliases_and_state(
    api: Api, reader: Client
) -> None:
    room = await api.perform(
        "create_room", creator=ALICE, room_version="10", preset="private_chat",
        name="Old", room_alias_name="team", visibility="public", invite=[BOB],
        initial_state=[{"type": "org.example.custom", "state_key": "k", "content": {"v": 2}}],
    )
    old = room["room_id"]
    await api.perform("join", user_id=BOB, room_id_or_alias=old)
    await api.perform("send_event", room_id=old, sender=ALICE, type="m.room.member",
                      state_key=user("mallory"), content={"membership": "ban"})
    await api.perform("set_alias", alias="#crew:hs.test", room_id=old, user_id=ALICE)
    await api.perform("send_event", room_id=old, sender=ALICE, type="m.room.canonical_alias",
                      state_key="", content={
                          "alias": "#team:hs.test",
                          "alt_aliases": ["#crew:hs.test", "#team:elsewhere.test"],
                      })
    await api.send(old, BOB, "before the upgrade")
    refused = await api.refused("upgrade", room_id=old, user_id=BOB, new_version="12")
    assert refused.code == "forbidden"
    new = (await api.perform("upgrade", room_id=old, user_id=ALICE, new_version="12"))[
        "replacement_room_id"
    ]
    state = await api.state(new)
    assert state[("m.room.create", "")]["content"]["predecessor"]["room_id"] == old
    assert state[("m.room.create", "")]["content"]["room_version"] == "12"
    assert state[("m.room.name", "")]["content"]["name"] == "Old"
    assert state[("org.example.custom", "k")]["content"] == {"v": 2}
    # Our aliases moved with the room; the other server's stays where its server put it.
    assert state[("m.room.canonical_alias", "")]["content"] == {
        "alias": "#team:hs.test", "alt_aliases": ["#crew:hs.test"],
    }
    assert state[("m.room.member", user("mallory"))]["content"]["membership"] == "ban"
    assert state[("m.room.member", BOB)]["content"]["membership"] == "invite"
    assert ALICE not in state[("m.room.power_levels", "")]["content"]["users"]
    assert (await api.query("room_for_alias", alias="#team:hs.test"))["room_id"] == new
    assert (await api.query("room_for_alias", alias="#crew:hs.test"))["room_id"] == new
    assert (await api.query("published_rooms"))["room_ids"] == [new]
    old_state = await api.state(old)
    assert old_state[("m.room.tombstone", "")]["content"]["replacement_room"] == new
    assert old_state[("m.room.canonical_alias", "")]["content"] == {
        "alt_aliases": ["#team:elsewhere.test"],
    }
    assert old_state[("m.room.power_levels", "")]["content"]["events_default"] == 50
    # Bob can follow, and can no longer talk in the old room.
    await api.perform("join", user_id=BOB, room_id_or_alias=new)
    silenced = await api.refused("send_event", room_id=old, sender=BOB, type="m.room.message",
                                 content={"body": "x"})
    assert silenced.code == "forbidden"
    await api.send(new, BOB, "after the upgrade")
    assert await check_built_events(api, reader) > 20


async def test_concurrent_sends_to_one_room_make_a_chain_not_forks(
    api: Api, reader: Client
) -> None:
    room_id = await _public_room(api)
    ids = await asyncio.gather(*(api.send(room_id, ALICE, f"c{i}") for i in range(30)))
    assert len(set(ids)) == 30
    latest = await api.query("latest_events_and_state", room_id=room_id, state_tuples=[])
    assert len(latest["latest_event_ids"]) == 1
    events = (await api.query("events_by_id", event_ids=ids))["events"]
    # Each message has one prev event: performs of a room are serialised on its head.
    assert all(len(e["prev_events"]) == 1 for e in events)
    await check_built_events(api, reader)


@pytest.mark.parametrize("version", ["10", "11"])
async def test_a_redaction_through_send_event(api: Api, reader: Client, version: str) -> None:
    room_id = await _public_room(api, version)
    target = await api.send(room_id, ALICE, "oops")
    await api.perform("send_event", room_id=room_id, sender=ALICE, type="m.room.redaction",
                      content={}, redacts=target)
    (event,) = (await api.query("events_by_id", event_ids=[target]))["events"]
    assert event["content"] == {}
    await check_built_events(api, reader)
