"""Which head `RoomWriter` builds on: after its own accepted event it checks the room's
extremities, from the pipeline's view when this process writes the room (no database read),
else from the database; when they moved on it reads the whole head again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.core.builder import Built, Draft, RoomHead, build
from worker.core.events import Event, StateKey
from worker.core.signing import new_key_file, parse_key_file
from worker.core.versions import rules_for
from worker.messages.reply import InputReply
from worker.perform.ports import PerformStore, StateFilter
from worker.perform.writer import RoomWriter

SERVER = "hs.test"
KEY = parse_key_file(new_key_file(b"\x05" * 32, b"wxyz"), SERVER)
ALICE = f"@alice:{SERVER}"


@dataclass
class Stored:
    event: Event


class Room:
    """The database as the writer's reads see it, and a pipeline that accepts everything."""

    def __init__(self) -> None:
        rules = rules_for("12")
        assert rules is not None
        head = RoomHead(rules, "")
        self.stored: dict[str, Event] = {}
        for n, draft in enumerate((
            Draft("m.room.create", ALICE, {"room_version": "12"}, ""),
            Draft("m.room.member", ALICE, {"membership": "join"}, ALICE),
            Draft("m.room.power_levels", ALICE, {"users": {}}, ""),
        )):
            built = build(draft, head, key=KEY, origin_server_ts=1_000 + n)
            assert isinstance(built, Built), built
            self.store(built)
            head = head.advance(built)
        self.room_id = head.room_id
        self.state = {k: e.event_id for k, e in head.state.items()}
        self.latest = [e.event_id for e in head.latest]
        self.extremity_reads = 0

    def store(self, built: Built) -> None:
        self.stored[built.event_id] = built.event

    # RoomReads

    async def room_version(self, room_id: str) -> str | None:
        return "12" if room_id == self.room_id else None

    async def events(self, event_ids: Sequence[str]) -> Mapping[str, Stored]:
        return {i: Stored(self.stored[i]) for i in event_ids if i in self.stored}

    async def extremities(self, room_id: str) -> list[str]:
        self.extremity_reads += 1
        return list(self.latest)

    async def current_state(self, room_id: str, keys: StateFilter) -> dict[StateKey, str]:
        return {k: i for k, i in self.state.items() if keys is None or k in keys}

    # Submitter: the pipeline stores the event and makes it the only extremity.

    async def publish(
        self,
        room_id: str,
        room_version: str,
        pdu: dict[str, Any] | bytes,
        event_id: str,
        *,
        event: Event | None = None,
    ) -> Awaitable[InputReply]:
        future: asyncio.Future[InputReply] = asyncio.get_running_loop().create_future()
        future.set_result(InputReply(event_id=event_id, outcome="accepted"))
        self.latest = [event_id]
        return future

    async def submit(
        self, room_id: str, room_version: str, pdu: dict[str, Any] | bytes, event_id: str
    ) -> InputReply:
        return await (await self.publish(room_id, room_version, pdu, event_id))

    async def close(self) -> None:
        return None


def _writer(room: Room, held: dict[str, list[str] | None]) -> RoomWriter:
    store: Any = object()  # no transaction IDs, aliases or directory here
    writer_store: PerformStore = store
    return RoomWriter(room, writer_store, room, KEY, held_extremities=held.get)


async def _send(writer: RoomWriter, room: Room, body: str) -> Built:
    built = await writer.write(room.room_id, Draft("m.room.message", ALICE, {"body": body}))
    room.store(built)
    return built


async def test_the_pipelines_view_spares_the_database_read() -> None:
    room = Room()
    held: dict[str, list[str] | None] = {}
    writer = _writer(room, held)
    first = await _send(writer, room, "one")  # nothing known yet: the whole head is read
    assert room.extremity_reads == 1
    held[room.room_id] = [first.event_id]
    second = await _send(writer, room, "two")
    assert room.extremity_reads == 1  # the pipeline said where the room is
    assert second.event.prev_event_ids == (first.event_id,)


async def test_without_the_pipelines_view_the_database_is_asked() -> None:
    room = Room()
    writer = _writer(room, {})
    first = await _send(writer, room, "one")
    second = await _send(writer, room, "two")
    assert room.extremity_reads == 2
    assert second.event.prev_event_ids == (first.event_id,)


async def test_a_room_that_moved_on_is_read_again() -> None:
    room = Room()
    held: dict[str, list[str] | None] = {}
    writer = _writer(room, held)
    await _send(writer, room, "one")
    # Another event came in meanwhile (from federation, say): the pipeline's view says so,
    # and the writer builds on the room's real extremities.
    other = await _send(_writer(room, {}), room, "elsewhere")
    held[room.room_id] = [other.event_id]
    reads = room.extremity_reads
    third = await _send(writer, room, "three")
    assert room.extremity_reads == reads + 1  # the head, read in full
    assert third.event.prev_event_ids == (other.event_id,)
