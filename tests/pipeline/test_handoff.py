"""Validation takes an event this process built (`worker.pipeline.handoff`) only for exactly
the bytes it was built as, and only for the room and version it was built for; anything
else is validated as any input is."""

from __future__ import annotations

import os

import msgspec
import pytest

from worker.core.builder import Built, Draft, RoomHead, build
from worker.core.signing import new_key_file, parse_key_file
from worker.core.versions import rules_for
from worker.messages import InputRoomEvent
from worker.pipeline.handoff import BuiltEvents
from worker.pipeline.model import Result, RoomInfo, Work
from worker.pipeline.validate import validate

SERVER = "hs.test"
ALICE = f"@alice:{SERVER}"
KEY = parse_key_file(new_key_file(os.urandom(32), os.urandom(4)), SERVER)


class Rooms:
    def __init__(self, rooms: dict[str, str]) -> None:
        self.rooms = rooms

    async def room(self, room_id: str) -> RoomInfo | None:
        version = self.rooms.get(room_id)
        return RoomInfo(room_id, version) if version is not None else None


def _room(version: str) -> tuple[RoomHead, list[Built]]:
    rules = rules_for(version)
    assert rules is not None
    head = RoomHead(rules, "" if rules.room_id_from_create_event else f"!r:{SERVER}")
    chain = []
    for n, draft in enumerate(
        [
            Draft("m.room.create", ALICE, {"room_version": version}, ""),
            Draft("m.room.member", ALICE, {"membership": "join"}, ALICE),
            Draft("m.room.message", ALICE, {"msgtype": "m.text", "body": "hello"}),
        ]
    ):
        built = build(
            draft,
            head,
            key=KEY,
            origin_server_ts=1_700_000_000_000 + n,
            event_id_hint=f"$e{n}:{SERVER}",
        )
        assert isinstance(built, Built), built
        chain.append(built)
        head = head.advance(built)
    return head, chain


def _input(data: bytes, version: str, kind: str = "new") -> InputRoomEvent:
    return InputRoomEvent(
        kind=kind,
        event=msgspec.Raw(data),
        room_version=version,
        origin=SERVER,
        send_as_server=SERVER,
    )


@pytest.mark.parametrize("version", ["1", "10", "12"])
async def test_the_built_event_is_taken_as_validation_would_make_it(version: str) -> None:
    _, chain = _room(version)
    message = chain[-1]
    data = msgspec.json.encode(message.pdu)
    store = Rooms({message.room_id: version})
    built = BuiltEvents()
    built.hand(data, message.event)
    taken = await validate(store, message.room_id, _input(data, version), built=built)
    assert isinstance(taken, Work)
    assert taken.event is message.event
    assert len(built) == 0
    # The same input, validated from its bytes, makes the same work.
    decoded = await validate(store, message.room_id, _input(data, version))
    assert isinstance(decoded, Work)
    assert decoded.event is not message.event
    assert (decoded.event_id, decoded.pdu, decoded.rules, decoded.room_known, decoded.note) == (
        taken.event_id,
        taken.pdu,
        taken.rules,
        taken.room_known,
        taken.note,
    )


async def test_a_create_event_of_a_new_room_is_taken() -> None:
    _, chain = _room("12")
    create = chain[0]
    data = msgspec.json.encode(create.pdu)
    built = BuiltEvents()
    built.hand(data, create.event)
    taken = await validate(Rooms({}), create.room_id, _input(data, "12"), built=built)
    assert isinstance(taken, Work)
    assert taken.event is create.event
    assert not taken.room_known


async def test_other_bytes_of_the_same_event_are_validated_from_their_bytes() -> None:
    _, chain = _room("12")
    message = chain[-1]
    data = msgspec.json.encode(message.pdu)
    built = BuiltEvents()
    built.hand(data, message.event)
    other = data.replace(b",", b", ")
    work = await validate(
        Rooms({message.room_id: "12"}), message.room_id, _input(other, "12"), built=built
    )
    assert isinstance(work, Work)
    assert work.event is not message.event
    assert work.event_id == message.event_id
    assert len(built) == 1


@pytest.mark.parametrize(
    ("rooms", "room_id", "kind", "refusal"),
    [
        # Another room named by the input: refused as for any producer.
        ({"!other": "12"}, "!other", "new", "wrong_room"),
        # The room's version is not the one the event was built for.
        (None, None, "new", None),
        # Not a `new` input.
        (None, None, "outlier", None),
        # A room the store does not know.
        ({}, None, "new", "room_unknown"),
    ],
)
async def test_what_the_bytes_do_not_decide_is_checked(
    rooms: dict[str, str] | None, room_id: str | None, kind: str, refusal: str | None
) -> None:
    _, chain = _room("12")
    message = chain[-1]
    data = msgspec.json.encode(message.pdu)
    built = BuiltEvents()
    built.hand(data, message.event)
    if rooms is None:
        rooms = {message.room_id: "11" if kind == "new" else "12"}
    work = await validate(
        Rooms(rooms), room_id or message.room_id, _input(data, "12", kind), built=built
    )
    if refusal is None:
        assert not (isinstance(work, Work) and work.event is message.event)
    else:
        assert isinstance(work, Result)
        assert work.reason_code == refusal
