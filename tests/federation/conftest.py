"""A fake federation service: a NATS responder on `<prefix>.<verb>` serving one room built
with `RoomBuilder`, as the real federation service would relay other servers' answers.

`FakeFederation.serve` holds the PDUs the "other servers" have; `state_before` the state
(IDs) before the events a test will ask `state_ids`/`state` about. A test makes it lie or
stall by replacing a verb's answer in `answers` (verb -> async callable(request) -> bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.fixtures.builder import RoomBuilder

# A migrated fresh database per test, a store over it, and more databases on demand
# (the bulk outlier tests compare two).
from tests.lifecycle.conftest import other_pool  # noqa: F401
from tests.pipeline.conftest import Harness
from tests.storage.conftest import pool, store  # noqa: F401
from worker.federation import NatsFederationClient
from worker.messages import HandleResult, InputRoomEvent
from worker.pipeline import Pipeline
from worker.pipeline.fetch_missing import GapSettings

VERBS = ("get_missing_events", "state_ids", "state", "event", "event_auth")
Answer = Callable[[dict[str, Any]], Awaitable[bytes]]


def enc(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


@dataclass
class FakeFederation:
    nc: NATS
    prefix: str
    served: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_before: dict[str, list[str]] = field(default_factory=dict)
    answers: dict[str, Answer] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    subs: list[Any] = field(default_factory=list)

    def serve(self, b: RoomBuilder, *event_ids: str) -> None:
        for eid in event_ids or list(b.events):
            self.served[eid] = b.events[eid]

    def remember_state(self, b: RoomBuilder, event_id: str, state: dict[Any, str]) -> None:
        """`state` is the builder's state map as it was before `event_id` was built."""
        self.state_before[event_id] = sorted(state.values())

    async def start(self) -> None:
        for verb in VERBS:
            self.subs.append(await self.nc.subscribe(f"{self.prefix}.{verb}", cb=self._on))

    async def stop(self) -> None:
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.subs.clear()

    async def _on(self, msg: Msg) -> None:
        verb = msg.subject.rsplit(".", 1)[1]
        self.asked.append(verb)
        req = msgspec.json.decode(msg.data)
        custom = self.answers.get(verb)
        body = await custom(req) if custom is not None else self.answer(verb, req)
        await msg.respond(body)

    # -- honest answers ----------------------------------------------------------------------

    def answer(self, verb: str, req: dict[str, Any]) -> bytes:
        if verb == "event":
            pdu = self.served.get(req["event_id"])
            return enc({"pdus": [pdu]} if pdu is not None else {"error_code": "not_found"})
        if verb == "event_auth":
            return enc({"auth_chain": [self.served[e] for e in self.auth_chain([req["event_id"]])]})
        if verb == "get_missing_events":
            return enc({"events": self.missing(req)})
        ids = self.state_before.get(req["event_id"])
        if ids is None:
            return enc({"error_code": "not_found", "error": "no state for that event"})
        chain = sorted(self.auth_chain(ids) - set(ids))
        if verb == "state_ids":
            return enc({"pdu_ids": ids, "auth_chain_ids": chain})
        return enc({
            "pdus": [self.served[e] for e in ids],
            "auth_chain": [self.served[e] for e in chain],
        })

    def auth_chain(self, ids: list[str]) -> set[str]:
        out: set[str] = set()
        todo = [a for e in ids for a in _refs(self.served[e]["auth_events"])]
        while todo:
            a = todo.pop()
            if a not in out and a in self.served:
                out.add(a)
                todo.extend(_refs(self.served[a]["auth_events"]))
        return out

    def missing(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """Spec /get_missing_events: walk back from `latest_events` (excluded), breadth first,
        stopping at `earliest_events`, at most `limit` events, oldest first."""
        earliest, limit = set(req["earliest_events"]), req["limit"]
        seen = set(req["latest_events"])
        frontier = [p for e in req["latest_events"] for p in _refs(self.served[e]["prev_events"])]
        found: list[str] = []
        while frontier and len(found) < limit:
            nxt: list[str] = []
            for e in frontier:
                if e in seen or e in earliest or e not in self.served or len(found) >= limit:
                    continue
                seen.add(e)
                found.append(e)
                nxt.extend(_refs(self.served[e]["prev_events"]))
            frontier = nxt
        return sorted((self.served[e] for e in found), key=lambda p: p["depth"])


def _refs(refs: list[Any]) -> list[str]:
    return [r[0] if isinstance(r, list) else r for r in refs]


@dataclass
class Rig:
    """A pipeline over the in-memory store, filling gaps through a real NATS client."""

    harness: Harness
    fed: FakeFederation
    client: NatsFederationClient
    touches: int = 0

    async def send(
        self, b: RoomBuilder, event_id: str, kind: str = "new", *, delivery: int = 1,
        pdu: dict[str, Any] | None = None,
    ) -> HandleResult:
        raw = msgspec.Raw(enc(pdu if pdu is not None else b.events[event_id]))
        inp = InputRoomEvent(kind=kind, event=raw)  # type: ignore[arg-type]
        result = await self.harness.pipeline.handle(
            b.room_id, inp, delivery=delivery, in_progress=self.touch
        )
        await self.harness.pipeline.drain()
        return result

    async def touch(self) -> None:
        self.touches += 1
        self.touched.set()

    touched: asyncio.Event = field(default_factory=asyncio.Event)


SETTINGS = GapSettings(max_attempts=3, keepalive_interval=0.02, fetch_concurrency=4)


@pytest.fixture
async def rig(nats_url: str, prefix: str) -> AsyncIterator[Rig]:
    nc = await nats.connect(nats_url)
    subject_prefix = f"{prefix}.federation.request"
    fed = FakeFederation(nc, subject_prefix)
    await fed.start()
    client = NatsFederationClient(nc, subject_prefix, timeout=2.0, state_timeout=2.0)
    harness = Harness(federation=client)
    harness.pipeline = Pipeline(
        harness.store, harness.relay, client, gap_settings=SETTINGS
    )
    try:
        yield Rig(harness, fed, client)
    finally:
        await fed.stop()
        await nc.close()
