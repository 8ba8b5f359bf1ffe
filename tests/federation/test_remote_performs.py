"""The remote paths of `join`, `leave` and `invite`, and incoming invites, end to end over
NATS: a worker with the Perform API (server `hs.test`), asked only over NATS, against the fake
federation service (`FakeRemote`) relaying the resident server `test` of a room built with
real IDs, hashes and signatures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest

from tests.e2e.conftest import Client
from tests.federation.fake_server import FakeRemote
from tests.fixtures.builder import RoomBuilder
from tests.perform.conftest import (  # noqa: F401
    SERVER,
    Api,
    Failed,
    Performer,
    api,
    key_file,
    performer,
    user,
)
from worker.bus.producer import send_input
from worker.bus.subjects import Subjects
from worker.core.builder import Draft
from worker.messages.input import InputRoomEvent

BOB = user("bob")
MEMBERS = 200


class RemotePerformer(Performer):
    """`Performer` whose performs ask the fake federation service."""

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "FEDERATION_PREFIX": f"{self.prefix}.federation.request"}


@pytest.fixture
def performer_class(remote: FakeRemote) -> type[Performer]:
    # The fake federation service answers before the performer starts.
    return RemotePerformer


@pytest.fixture
async def remote(nats_url: str, prefix: str) -> AsyncIterator[FakeRemote]:
    nc = await nats.connect(nats_url)
    fake = FakeRemote(nc, f"{prefix}.federation.request")
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
        await nc.close()


@pytest.fixture
async def reader(api: Api) -> Client:
    return Client(api.nc, Subjects(api.prefix))


def remote_room(members: int = MEMBERS, version: str = "10") -> RoomBuilder:
    """A public room of the server `test`: alice (PL 100) and `members` others."""
    b = RoomBuilder(version, real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"@alice:test": 100})
    b.join_rules("alice", "public")
    b.state_event("m.room.name", "", {"name": "Remote room"}, "alice")
    b.state_event("m.room.history_visibility", "", {"history_visibility": "shared"}, "alice")
    for i in range(members):
        b.join(f"m{i}")
    b.message("alice", "before you came")
    return b


async def unknown(api: Api, room_id: str) -> bool:
    """True when the roomserver holds nothing of the room."""
    try:
        await api.query("room_version", room_id=room_id)
    except Failed as exc:
        return exc.code == "not_found"
    return False


async def _rooms_for(api: Api, user_id: str, membership: str) -> list[str]:
    """The `rooms_for_user` query's answer."""
    found = await api.query("rooms_for_user", user_id=user_id, membership=membership)
    return list(found["room_ids"])


async def _inputs_published(api: Api) -> int:
    """How many messages the input stream was ever given."""
    info = await api.nc.jetstream().stream_info(Subjects(api.prefix).input_stream)
    return int(info.state.last_seq)


def payloads(outputs: list[Any], kind: str) -> list[Any]:
    return [getattr(o, kind) for o in outputs if getattr(o, kind) is not None]


# The big room is the size the remote-join bench measures: its state and auth chain cross
# NATS in one ~18 MB answer and are stored in bulk.
@pytest.mark.parametrize("members", [MEMBERS, 30_000], ids=["small", "30000_members"])
async def test_join_a_remote_room_then_talk_in_it(
    api: Api, remote: FakeRemote, reader: Client, members: int
) -> None:
    b = remote_room(members)
    remote.host(b)
    published = await _inputs_published(api)
    joined = await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id,
                               server_names=["test"], content={"displayname": "Bob"})
    assert joined["room_id"] == b.room_id
    # The state and auth chain were stored in bulk: the input stream carried the join alone.
    assert await _inputs_published(api) == published + 1
    join_id = joined["event_id"]
    sent = remote.received["send_join"][0]
    assert sent["destination"] == "test" and sent["event_id"] == join_id
    assert sent["event"]["content"] == {"displayname": "Bob", "membership": "join"}
    assert "hs.test" in sent["event"]["signatures"]
    member = await api.query("membership_for_user", room_id=b.room_id, user_id=BOB)
    assert member["membership"] == "join" and member["event_id"] == join_id
    state = await api.state(b.room_id)
    assert len([k for k in state if k[0] == "m.room.member"]) == members + 2
    assert state[("m.room.name", "")]["content"]["name"] == "Remote room"
    message = await api.send(b.room_id, BOB, "hello, remote room")
    outputs = await reader.outputs(at_least=2)
    events = [msgspec.json.decode(p.event) for p in payloads(outputs, "new_room_event")]
    assert [e["event_id"] for e in events] == [join_id, message]
    first = payloads(outputs, "new_room_event")[0]
    assert first.rewrites_state and len(first.adds_state_event_ids) == len(b.state) + 1
    assert events[1]["prev_events"] == [join_id]


async def test_join_skips_a_server_that_is_down(api: Api, remote: FakeRemote) -> None:
    b = remote_room(5)
    remote.host(b)
    remote.down = {"down.test"}
    joined = await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id,
                               server_names=["down.test", "test"])
    asked = [r["destination"] for r in remote.received["make_join"]]
    assert asked == ["down.test", "test"]
    member = await api.query("membership_for_user", room_id=b.room_id, user_id=BOB)
    assert member["event_id"] == joined["event_id"]


async def test_join_refused_when_every_server_fails(api: Api, remote: FakeRemote) -> None:
    b = remote_room(5)
    remote.host(b)
    remote.down = {"a.test"}
    remote.garbage = {"test": "undecodable"}
    failed = await api.refused("join", user_id=BOB, room_id_or_alias=b.room_id,
                               server_names=["a.test", "test"])
    assert failed.code == "unavailable"
    assert "a.test: make_join refused: unreachable" in failed.body["message"]
    assert "test: undecodable make_join answer" in failed.body["message"]
    assert await unknown(api, b.room_id)


@pytest.mark.parametrize(("garbage", "reason"), [
    ("template_wrong_room", "wrong_room"),
    ("template_other_user", "wrong_user"),
    ("template_wrong_type", "bad_template"),
    ("unsupported_version", "is not supported here"),
    ("bad_hash", "bad_content_hash"),
    ("missing_auth", "missing_auth_events"),
    ("wrong_room_state", "wrong_room"),
    ("wrong_event", "another event than our join"),
])
async def test_join_refuses_garbage_and_changes_nothing(
    api: Api, remote: FakeRemote, garbage: str, reason: str
) -> None:
    b = remote_room(5)
    remote.host(b)
    remote.garbage = {"test": garbage}
    failed = await api.refused("join", user_id=BOB, room_id_or_alias=b.room_id,
                               server_names=["test"])
    assert failed.code == "unavailable"
    assert reason in failed.body["message"], failed.body["message"]
    assert await unknown(api, b.room_id)


async def test_join_refuses_an_oversized_state(
    api: Api, remote: FakeRemote, performer: Performer
) -> None:
    b = remote_room(20)
    remote.host(b)
    assert performer.performs is not None and performer.performs.writer.remote is not None
    performer.performs.writer.remote.max_state_events = 10
    failed = await api.refused("join", user_id=BOB, room_id_or_alias=b.room_id,
                               server_names=["test"])
    assert "oversized_state" in failed.body["message"]
    assert await unknown(api, b.room_id)


async def test_join_by_an_alias_of_another_server(api: Api, remote: FakeRemote) -> None:
    """The alias's server is asked through the directory (`query_directory`); the join goes
    through the servers given first, then those the directory names."""
    b = remote_room(5)
    remote.host(b)
    alias = "#remote:elsewhere.test"
    remote.directory[alias] = (b.room_id, ["test"])
    remote.down = {"given.test"}
    joined = await api.perform("join", user_id=BOB, room_id_or_alias=alias,
                               server_names=["given.test"])
    assert joined["room_id"] == b.room_id
    (asked,) = remote.received["query_directory"]
    assert asked == {"destination": "elsewhere.test", "room_alias": alias}
    assert [r["destination"] for r in remote.received["make_join"]] == ["given.test", "test"]
    member = await api.query("membership_for_user", room_id=b.room_id, user_id=BOB)
    assert (member["membership"], member["event_id"]) == ("join", joined["event_id"])


async def test_join_by_an_unknown_remote_alias_is_not_found(
    api: Api, remote: FakeRemote
) -> None:
    b = remote_room(5)
    remote.host(b)
    failed = await api.refused("join", user_id=BOB, room_id_or_alias="#nope:elsewhere.test",
                               server_names=["test"])
    assert failed.code == "not_found", failed.body
    assert "#nope:elsewhere.test" in failed.body["message"]
    assert "make_join" not in remote.received
    assert await unknown(api, b.room_id)


async def test_join_by_a_remote_alias_when_its_server_cannot_be_asked(
    api: Api, remote: FakeRemote
) -> None:
    b = remote_room(5)
    remote.host(b)
    alias = "#remote:elsewhere.test"
    remote.directory[alias] = (b.room_id, ["test"])
    remote.down = {"elsewhere.test"}
    failed = await api.refused("join", user_id=BOB, room_id_or_alias=alias,
                               server_names=["test"])
    assert failed.code == "unavailable", failed.body
    assert "query_directory refused: unreachable" in failed.body["message"]
    assert "make_join" not in remote.received
    # No federation service at all: unavailable too.
    await remote.stop()
    failed = await api.refused("join", user_id=BOB, room_id_or_alias=alias,
                               server_names=["test"])
    assert failed.code == "unavailable", failed.body
    assert "no federation service answers" in failed.body["message"]


async def _incoming_invite(remote: FakeRemote, reader: Client) -> tuple[RoomBuilder, str]:
    """The resident `test` invites bob: an input of kind `invite`, as the federation API
    publishes it; answered `outlier`, announced as `new_invite_event`."""
    b = remote_room(3)
    invite = b.invite("alice", BOB, extra={"unsigned": {"invite_room_state": [
        {"type": "m.room.name", "state_key": "", "sender": "@alice:test",
         "content": {"name": "Remote room"}},
    ]}})
    remote.host(b)
    pdu = remote.signed[invite]
    raw = msgspec.Raw(msgspec.json.encode(pdu))
    inp = InputRoomEvent(kind="invite", event=raw, room_version=b.version, origin="test")
    reply = await send_input(reader.nc, reader.subjects, inp, room_id=b.room_id,
                             event_id=invite, timeout=30.0)
    assert (reply.outcome, reply.event_id) == ("outlier", invite)
    outputs = await reader.outputs(at_least=1)
    (announced,) = payloads(outputs, "new_invite_event")
    assert msgspec.json.decode(announced.event)["event_id"] == invite
    return b, invite


async def test_incoming_invite_then_accepted_by_a_remote_join(
    api: Api, remote: FakeRemote, reader: Client
) -> None:
    b, invite = await _incoming_invite(remote, reader)
    member = await api.query("membership_for_user", room_id=b.room_id, user_id=BOB)
    assert (member["membership"], member["event_id"]) == ("invite", invite)
    assert await _rooms_for(api, BOB, "invite") == [b.room_id]
    assert await _rooms_for(api, BOB, "join") == []
    # No server named: the inviter's server is asked.
    joined = await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id)
    # Joined: the invite is retired, the room is among the joined ones.
    assert await _rooms_for(api, BOB, "invite") == []
    assert await _rooms_for(api, BOB, "join") == [b.room_id]
    assert remote.received["make_join"][0]["destination"] == "test"
    member = await api.query("membership_for_user", room_id=b.room_id, user_id=BOB)
    assert (member["membership"], member["event_id"]) == ("join", joined["event_id"])
    outputs = await reader.outputs(at_least=3)
    (retired,) = payloads(outputs, "retire_invite_event")
    assert (retired.event_id, retired.retired_by_event_id) == (invite, joined["event_id"])
    assert retired.membership == "join"


async def test_reject_a_remote_invite(api: Api, remote: FakeRemote, reader: Client) -> None:
    b, invite = await _incoming_invite(remote, reader)
    assert await _rooms_for(api, BOB, "invite") == [b.room_id]
    left = await api.perform("leave", room_id=b.room_id, user_id=BOB, reason="no thanks")
    # Rejected: no longer listed, and not joined either.
    assert await _rooms_for(api, BOB, "invite") == []
    assert await _rooms_for(api, BOB, "join") == []
    member = await api.query("membership_for_user", room_id=b.room_id, user_id=BOB)
    assert (member["membership"], member["event_id"]) == ("leave", left["event_id"])
    (sent,) = remote.received["send_leave"]
    assert sent["destination"] == "test" and sent["event_id"] == left["event_id"]
    assert sent["event"]["content"] == {"membership": "leave", "reason": "no thanks"}
    outputs = await reader.outputs(at_least=2)
    (retired,) = payloads(outputs, "retire_invite_event")
    assert (retired.event_id, retired.retired_by_event_id) == (invite, left["event_id"])
    assert retired.target_user_id == BOB


async def test_invite_a_remote_user(api: Api, remote: FakeRemote, reader: Client) -> None:
    alice = user("alice")
    room = await api.perform("create_room", creator=alice, preset="private_chat", name="Ours")
    room_id = room["room_id"]
    zed = "@zed:elsewhere.test"
    invited = await api.perform("invite", room_id=room_id, sender=alice, user_id=zed)
    (asked,) = remote.received["invite"]
    assert asked["destination"] == "elsewhere.test" and asked["event_id"] == invited["event_id"]
    stripped = {(s["type"], s["state_key"]) for s in asked["invite_room_state"]}
    assert stripped == {("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.name", "")}
    state = await api.state(room_id)
    member = state[("m.room.member", zed)]
    assert member["event_id"] == invited["event_id"]
    assert set(member["signatures"]) == {"hs.test", "elsewhere.test"}


async def test_invite_without_countersignature_is_refused(
    api: Api, remote: FakeRemote
) -> None:
    alice = user("alice")
    room = await api.perform("create_room", creator=alice, preset="private_chat")
    remote.garbage = {"elsewhere.test": "no_countersignature"}
    failed = await api.refused("invite", room_id=room["room_id"], sender=alice,
                               user_id="@zed:elsewhere.test")
    assert failed.code == "unavailable" and "no signature of theirs" in failed.body["message"]
    state = await api.state(room["room_id"])
    assert ("m.room.member", "@zed:elsewhere.test") not in state


async def test_backfill_100_events_in_pages_of_20(
    api: Api, remote: FakeRemote, reader: Client
) -> None:
    b = remote_room(5)
    history = [b.message("alice", f"old message {i}") for i in range(100)]
    remote.host(b)
    await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id, server_names=["test"])
    start = [history[-1]]
    got: list[str] = []
    for _ in range(5):
        page = await api.perform("backfill", room_id=b.room_id, event_ids=start, limit=20)
        events = page["events"]
        assert len(events) == 20
        depths = [e["depth"] for e in events]
        assert depths == sorted(depths, reverse=True)
        got += [e["event_id"] for e in events]
        start = [p for p in events[-1]["prev_events"]]
    assert got == list(reversed(history))
    assert len(remote.received["backfill"]) == 5
    # Now held here: the first page again comes from the store, nobody is asked.
    again = await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=20)
    assert [e["event_id"] for e in again["events"]] == got[:20]
    assert len(remote.received["backfill"]) == 5
    outputs = await reader.outputs(at_least=101)
    assert len(payloads(outputs, "old_room_event")) == 100


async def test_backfill_for_another_server_is_answered_from_the_store_alone(
    api: Api, remote: FakeRemote
) -> None:
    """Another server asking (the federation API answering its /backfill) gets what the
    store holds and nothing fetched on its behalf: two servers lacking the same history
    would otherwise ask each other for it."""
    b = remote_room(5)
    history = [b.message("alice", f"old message {i}") for i in range(5)]
    remote.host(b)
    await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id, server_names=["test"])
    page = await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=5,
                             server_name="elsewhere.test")
    assert page["events"] == []
    assert "backfill" not in remote.received
    # One of our users asking fetches it.
    page = await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=5)
    assert len(page["events"]) == 5 and len(remote.received["backfill"]) == 1
    # The oldest backfilled event got the state before it from the server that answered, so
    # the history has a state: under `shared`, the other server is served it from the store.
    page = await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=5,
                             server_name="elsewhere.test")
    assert [e["event_id"] for e in page["events"]] == list(reversed(history))
    assert len(remote.received["backfill"]) == 1


async def test_backfill_refuses_a_garbage_answer(api: Api, remote: FakeRemote) -> None:
    b = remote_room(5)
    history = [b.message("alice", f"old message {i}") for i in range(5)]
    remote.host(b)
    await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id, server_names=["test"])
    remote.garbage = {"test": "undecodable"}
    page = await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=5)
    assert page["events"] == []
    remote.garbage = {}
    remote.signed[history[-1]]["content"] = {"body": "forged"}
    page = await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=5)
    assert page["events"] == []


async def _remote_member_joins(performer: Performer, room_id: str, user_id: str) -> str:
    """A member of another server joins, as its join would come over federation (the
    roomserver trusts signatures: they are checked upstream)."""
    assert performer.performs is not None
    built = await performer.performs.writer.write(
        room_id, Draft("m.room.member", user_id, {"membership": "join"}, user_id)
    )
    return built.event_id


@pytest.mark.parametrize(("visibility", "before_seen", "invited_seen"), [
    ("joined", False, False),
    ("invited", False, True),
    ("shared", True, True),
    ("world_readable", True, True),
])
async def test_backfill_from_the_store_applies_history_visibility(
    api: Api, remote: FakeRemote, performer: Performer,
    visibility: str, before_seen: bool, invited_seen: bool,
) -> None:
    """A server asking to backfill (the federation API answering /backfill) gets only the
    events it may see: under `joined` / `invited`, not those from before one of its users
    was joined / invited; under `shared` / `world_readable`, all of them."""
    alice, zed = user("alice"), "@zed:elsewhere.test"
    room = await api.perform("create_room", creator=alice, preset="public_chat")
    room_id = room["room_id"]
    await api.perform("send_event", room_id=room_id, sender=alice,
                      type="m.room.history_visibility", state_key="",
                      content={"history_visibility": visibility})
    before = [await api.send(room_id, alice, f"before {i}") for i in range(3)]
    invite = (await api.perform("invite", room_id=room_id, sender=alice, user_id=zed))["event_id"]
    invited = [await api.send(room_id, alice, f"invited {i}") for i in range(2)]
    join = await _remote_member_joins(performer, room_id, zed)
    after = [await api.send(room_id, alice, f"after {i}") for i in range(2)]

    async def page(server_name: str) -> set[str]:
        answer = await api.perform("backfill", room_id=room_id, event_ids=[after[-1]],
                                   limit=100, server_name=server_name)
        return {e["event_id"] for e in answer["events"]}

    seen = await page("elsewhere.test")
    assert {*after, join} <= seen
    assert all((e in seen) == before_seen for e in before), seen
    assert all((e in seen) == invited_seen for e in [invite, *invited]), seen
    # A server that never had a member sees only what `shared` lets everyone see.
    stranger = await page("nobody.test")
    for e in [*before, invite, *invited, join, *after]:
        assert (e in stranger) == before_seen, (e, stranger)
    # One of our users pages back: everything.
    ours = await page("")
    assert {*before, invite, *invited, join, *after} <= ours
    # Answered from the store: nobody was asked.
    assert "backfill" not in remote.received


def _history_room(visibility: str, messages: int = 5) -> tuple[RoomBuilder, list[str]]:
    """A room of `test` under `visibility` with `messages` of history, a topic before and
    one after it, so that the state before the history holds an event bob's join does not
    bring."""
    b = remote_room(5)
    b.state_event("m.room.history_visibility", "", {"history_visibility": visibility}, "alice")
    b.topic("alice", "earlier")
    history = [b.message("alice", f"old message {i}") for i in range(messages)]
    b.topic("alice", "later")
    return b, history


async def _seen_by(api: Api, room_id: str, start: str, server_name: str) -> list[str]:
    page = await api.perform("backfill", room_id=room_id, event_ids=[start], limit=100,
                             server_name=server_name)
    return [e["event_id"] for e in page["events"]]


@pytest.mark.parametrize(("visibility", "served"), [
    ("shared", True), ("world_readable", True), ("joined", False),
])
async def test_backfilled_history_is_served_under_history_visibility(
    api: Api, remote: FakeRemote, visibility: str, served: bool
) -> None:
    """Backfilled from `test`, the history is then served from the store to another server
    as the visibility at it allows: under `joined`, not to a server with no member then."""
    b, history = _history_room(visibility)
    remote.host(b)
    await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id, server_names=["test"])
    page = await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=5)
    assert [e["event_id"] for e in page["events"]] == list(reversed(history))
    assert "state_ids" in remote.asked
    # Asked of the server that answered the backfill.
    assert remote.received["backfill"][0]["destination"] == "test"
    seen = await _seen_by(api, b.room_id, history[-1], "elsewhere.test")
    assert seen == (list(reversed(history)) if served else [])
    for event_id in history:
        allowed = await api.query("server_allowed_to_see_event", room_id=b.room_id,
                                  event_id=event_id, server_name="elsewhere.test")
        assert allowed["allowed"] is served
    # `test` had members then (alice): under `joined` too, it may see the history.
    assert await _seen_by(api, b.room_id, history[-1], "test") == list(reversed(history))


async def test_backfilled_state_events_we_lack_are_fetched_and_stored(
    api: Api, remote: FakeRemote
) -> None:
    """The state before the oldest backfilled event holds an event bob's join did not
    bring (a topic replaced since): it is fetched, checked, stored as an outlier, and the
    history's state has it."""
    b = remote_room(5)
    old_topic = b.topic("alice", "the old topic")
    history = [b.message("alice", f"old message {i}") for i in range(3)]
    b.topic("alice", "the new topic")
    remote.host(b)
    await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id, server_names=["test"])
    await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=3)
    assert "event" in remote.asked or "state" in remote.asked
    after = await api.query("state_after_events", room_id=b.room_id,
                            prev_event_ids=[history[0]], state_tuples=[["m.room.topic", ""]])
    assert after["prev_events_exist"] is True
    assert [e["event_id"] for e in after["state_events"]] == [old_topic]


@pytest.mark.parametrize("spoil", ["missing_event", "wrong_room", "bad_hash", "no_state"])
async def test_backfill_with_a_garbage_state_answer_stores_history_without_state(
    api: Api, remote: FakeRemote, spoil: str
) -> None:
    """A state that does not check is refused: the backfilled events are still stored and
    given to our users, but without a state, so nothing of them is served to another
    server (the visibility at them is not known)."""
    b, history = _history_room("shared")
    remote.host(b)
    await api.perform("join", user_id=BOB, room_id_or_alias=b.room_id, server_names=["test"])
    honest = remote.state_before[history[0]]

    async def state_ids(req: dict[str, Any]) -> bytes:
        ids = list(honest)
        if spoil == "missing_event":
            ids.append("$nobody_has_this")
        elif spoil == "no_state":
            return msgspec.json.encode({"error_code": "not_found", "error": "no state"})
        return msgspec.json.encode({"pdu_ids": ids, "auth_chain_ids": []})

    async def event(req: dict[str, Any]) -> bytes:
        pdu = remote.signed.get(req["event_id"])
        if pdu is None:
            return msgspec.json.encode({"error_code": "not_found"})
        pdu = dict(pdu)
        if spoil == "wrong_room":
            pdu["room_id"] = "!elsewhere:test"
        elif spoil == "bad_hash":
            pdu["content"] = {"topic": "sneaked"}
        return msgspec.json.encode({"pdus": [pdu]})

    remote.answers["state_ids"] = state_ids
    # The earlier topic is the state's one event we lack: `event` is asked for it.
    remote.answers["event"] = event
    page = await api.perform("backfill", room_id=b.room_id, event_ids=[history[-1]], limit=5)
    assert [e["event_id"] for e in page["events"]] == list(reversed(history))
    assert "state_ids" in remote.asked
    assert ("event" in remote.asked) is (spoil != "no_state")
    assert await _seen_by(api, b.room_id, history[-1], "elsewhere.test") == []
    allowed = await api.query("server_allowed_to_see_event", room_id=b.room_id,
                              event_id=history[0], server_name="elsewhere.test")
    assert allowed["allowed"] is False
