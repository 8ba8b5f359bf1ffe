"""Helpers for the pipeline's unit tests: a pipeline over the in-memory fakes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from tests.fixtures.builder import RoomBuilder
from tests.pipeline.fakes import FakeRelay, FakeStore
from worker.messages import HandleResult, InputRoomEvent, OutputEvent
from worker.pipeline import Pipeline
from worker.pipeline.ports import FederationClient


def builder(version: str = "10", room_id: str | None = None) -> RoomBuilder:
    """A RoomBuilder whose events carry real content hashes (the pipeline redacts an event
    whose hash does not match) and real event IDs (reference hashes from v3 on)."""
    return RoomBuilder(version, room_id=room_id, real_ids=True)


def started(version: str = "10") -> RoomBuilder:
    """A public room: alice created it (PL 100) and joined; bob joined."""
    b = builder(version)
    b.create("alice")
    b.join("alice")
    # v12+: the creator outranks everyone and may not be listed in `users`.
    b.power_levels("alice", users={} if b.rules.privileged_creators else {"alice": 100})
    b.join_rules("alice", "public")
    b.join("bob")
    return b


@dataclass
class Harness:
    store: FakeStore = field(default_factory=FakeStore)
    federation: FederationClient | None = None
    relay: FakeRelay = field(init=False)
    pipeline: Pipeline = field(init=False)

    def __post_init__(self) -> None:
        self.relay = FakeRelay(self.store)
        self.pipeline = Pipeline(self.store, self.relay, self.federation)

    async def send(
        self, b: RoomBuilder, event_id: str, kind: str = "new", **fields: Any
    ) -> HandleResult:
        raw = msgspec.Raw(msgspec.json.encode(b.events[event_id]))
        inp = InputRoomEvent(kind=kind, event=raw, **fields)  # type: ignore[arg-type]
        result = await self.pipeline.handle(b.room_id, inp)
        # Outputs are published in the background: wait for them, as a consumer would.
        await self.pipeline.drain()
        return result

    async def send_all(self, b: RoomBuilder, kind: str = "new") -> list[HandleResult]:
        return [await self.send(b, eid, kind) for eid in list(b.events)]

    def outputs(self, output_type: str | None = None) -> list[OutputEvent]:
        return self.relay.outputs(output_type)

    def state(self, room_id: str) -> dict[tuple[str, str], str]:
        return dict(self.store.current[room_id])


@pytest.fixture
def harness() -> Harness:
    return Harness()
