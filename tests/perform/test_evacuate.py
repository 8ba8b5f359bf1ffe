"""`evacuate_room` and `evacuate_user` end to end: performs asked over NATS of a worker on
real NATS and PostgreSQL, their leaves read back through the queries and the output stream;
and `roomserver admin evacuate-user` once as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest

from tests.e2e.conftest import Client
from tests.operators.conftest import _SETTINGS, ROOT
from tests.perform.conftest import Api, Performer, check_built_events, user
from worker.core.builder import Draft
from worker.core.events import StateKey
from worker.messages.admin import EvacuateUserRequest
from worker.perform.evacuate import Evacuations
from worker.query.homeserver_ports import RoomState
from worker.storage.homeserver_reads import PostgresHomeserverReads

ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol")
DAVE = "@dave:remote.test"


class Evacuating(Performer):
    """The performer with the evacuations served beside the Perform API, as `worker run`
    has them."""

    def extra_handlers(self) -> Mapping[str, Any]:
        assert self.run.pool is not None
        return Evacuations(PostgresHomeserverReads(self.run.pool)).handlers


@pytest.fixture
def performer_class() -> type[Performer]:
    return Evacuating


async def _membership(api: Api, room_id: str, user_id: str) -> str:
    found = await api.query("membership_for_user", room_id=room_id, user_id=user_id)
    membership: str = found["membership"]
    return membership


async def _remote_join(performer: Performer, room_id: str, user_id: str) -> str:
    """A member of another server, as its join would come over federation (the roomserver
    trusts signatures: they are checked upstream)."""
    assert performer.performs is not None
    built = await performer.performs.writer.write(
        room_id, Draft("m.room.member", user_id, {"membership": "join"}, user_id)
    )
    return built.event_id


async def test_evacuate_room_makes_every_local_member_leave(
    api: Api, performer: Performer, reader: Client
) -> None:
    room = await api.perform("create_room", creator=ALICE, room_version="10",
                             preset="public_chat")
    room_id = room["room_id"]
    await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    await api.perform("invite", room_id=room_id, sender=ALICE, user_id=CAROL)
    await _remote_join(performer, room_id, DAVE)
    assert await _membership(api, room_id, CAROL) == "invite"
    assert await _membership(api, room_id, DAVE) == "join"

    done = await api.perform("evacuate_room", room_id=room_id, reason="closing")
    assert done["failed"] == []
    assert done["user_ids"] == sorted([ALICE, BOB, CAROL])
    assert len(set(done["event_ids"])) == 3
    for who in (ALICE, BOB, CAROL):
        assert await _membership(api, room_id, who) == "leave"
    assert await _membership(api, room_id, DAVE) == "join"

    state = await api.state(room_id)
    for who, event_id in zip(done["user_ids"], done["event_ids"], strict=True):
        leave = state[("m.room.member", who)]
        assert leave["event_id"] == event_id
        assert leave["sender"] == who
        assert leave["content"] == {"membership": "leave", "reason": "closing"}
    # v10 event IDs are reference hashes, absent from the PDU: match them by state key.
    announced = await _leaves_by_member(reader, room_id)
    assert {who: pdu["content"]["membership"] for who, pdu in announced.items()} == {
        ALICE: "leave", BOB: "leave", CAROL: "leave"}
    await check_built_events(api, reader)

    # Nobody of this server is left: a second evacuation has nothing to do.
    again = await api.perform("evacuate_room", room_id=room_id)
    assert again == {"room_id": room_id, "event_ids": [], "user_ids": [], "failed": []}


async def _leaves_by_member(reader: Client, room_id: str) -> dict[str, dict[str, Any]]:
    """The leaves of `room_id` announced as `new_room_event`s, by member."""
    found: dict[str, dict[str, Any]] = {}
    for o in await reader.outputs():
        if o.new_room_event is None:
            continue
        pdu = msgspec.json.decode(o.new_room_event.event)
        if (pdu["room_id"] == room_id and pdu["type"] == "m.room.member"
                and pdu["content"].get("membership") == "leave"):
            found[pdu["state_key"]] = pdu
    return found


async def test_evacuate_user_leaves_every_room(api: Api, performer: Performer) -> None:
    rooms = []
    for preset in ("public_chat", "private_chat", "public_chat", "public_chat"):
        made = await api.perform("create_room", creator=ALICE, preset=preset)
        rooms.append(made["room_id"])
    joined, invited, also_joined, left = rooms
    await api.perform("join", user_id=BOB, room_id_or_alias=joined)
    await api.perform("invite", room_id=invited, sender=ALICE, user_id=BOB)
    await api.perform("join", user_id=BOB, room_id_or_alias=also_joined)
    await api.perform("join", user_id=BOB, room_id_or_alias=left)
    await api.perform("leave", room_id=left, user_id=BOB)

    done = await api.perform("evacuate_user", user_id=BOB)
    assert done["failed"] == []
    assert done["room_ids"] == sorted([joined, invited, also_joined])
    assert len(set(done["event_ids"])) == 3
    for room_id, event_id in zip(done["room_ids"], done["event_ids"], strict=True):
        found = await api.query("membership_for_user", room_id=room_id, user_id=BOB)
        assert found["membership"] == "leave" and found["event_id"] == event_id
    # Alice stays everywhere.
    for room_id in rooms:
        assert await _membership(api, room_id, ALICE) == "join"
    again = await api.perform("evacuate_user", user_id=BOB)
    assert again["event_ids"] == [] and again["failed"] == []


async def test_evacuation_refusals(api: Api) -> None:
    unknown = await api.refused("evacuate_room", room_id="!nowhere:hs.test")
    assert unknown.code == "not_found" and unknown.status == "404"
    remote = await api.refused("evacuate_user", user_id=DAVE)
    assert remote.code == "bad_request"
    bad = await api.refused("evacuate_user", user_id="bob")
    assert bad.code == "bad_request"


async def test_evacuate_user_on_the_cli(
    api: Api, nats_url: str, database_dsn: str, prefix: str
) -> None:
    made = await api.perform("create_room", creator=ALICE, preset="public_chat")
    room_id = made["room_id"]
    await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    env.update(NATS_URL=nats_url, DATABASE_URL=database_dsn, ROOMSERVER_PREFIX=prefix)

    async def cli(stdin: bytes, *argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "admin", *argv, env=env, cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, _, err = await cli(b"n\n", "evacuate-user", BOB)
    assert code == 2 and "not confirmed" in err
    assert await _membership(api, room_id, BOB) == "join"
    code, out, err = await cli(b"", "evacuate-user", BOB, "--yes")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["room_ids"] == [room_id] and len(answer["event_ids"]) == 1
    assert await _membership(api, room_id, BOB) == "leave"
    code, _, err = await cli(b"y\n", "evacuate-room", "!nowhere:hs.test")
    assert code == 1 and "not_found" in err


class _WithAGhostRoom:
    """The membership index, plus a room it lists for every user that the roomserver does
    not know: its leave fails as a broken room's would."""

    GHOST = "!ghost:hs.test"

    def __init__(self, reads: PostgresHomeserverReads) -> None:
        self._reads = reads

    async def current_state(self, room_ids: Sequence[str],
                            keys: Sequence[StateKey]) -> dict[str, RoomState]:
        return await self._reads.current_state(room_ids, keys)

    async def rooms_of_user(self, user_id: str, membership: str) -> list[str]:
        rooms = await self._reads.rooms_of_user(user_id, membership)
        return [*rooms, self.GHOST] if membership == "join" else rooms


async def test_a_failing_leave_is_reported_and_the_others_are_done(
    api: Api, performer: Performer
) -> None:
    made = await api.perform("create_room", creator=ALICE, preset="public_chat")
    room_id = made["room_id"]
    await api.perform("join", user_id=BOB, room_id_or_alias=room_id)
    assert performer.run.pool is not None and performer.performs is not None
    evacuations = Evacuations(_WithAGhostRoom(PostgresHomeserverReads(performer.run.pool)))
    done = await evacuations.evacuate_user(performer.performs.writer,
                                           EvacuateUserRequest(user_id=BOB))
    assert done.room_ids == [room_id] and len(done.event_ids) == 1
    (failed,) = done.failed
    assert (failed.room_id, failed.user_id) == (_WithAGhostRoom.GHOST, BOB)
    assert failed.code == "unavailable" and _WithAGhostRoom.GHOST in failed.message
    assert await _membership(api, room_id, BOB) == "leave"
