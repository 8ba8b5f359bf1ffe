"""A worker with the Perform API, on the session's NATS and a fresh database, asked only over
NATS as a client API would; plus a reader of the output stream that checks every event the
roomserver built against Synapse's auth rules and the key `server_keys` publishes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from tests.e2e.conftest import Client, WorkerRun
from tests.perform.synapse_check import synapse_refusal, synapse_signature_ok
from worker.bus.subjects import Subjects
from worker.config import load_settings
from worker.perform.service import PerformService
from worker.query.service import QueryService
from worker.wiring import build_writer, start_queries

SERVER = "hs.test"


def user(name: str) -> str:
    return f"@{name}:{SERVER}"


class Failed(Exception):
    def __init__(self, status: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.code: str = body.get("code", "")
        self.reason_code: str = body.get("reason_code", "")
        self.body = body


@dataclass
class Api:
    """A client of the Perform API and the queries, as the client API service is."""

    nc: NATS
    prefix: str
    built: list[str] = field(default_factory=list)

    async def _ask(self, subject: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        msg = await self.nc.request(subject, json.dumps(body).encode(), timeout=timeout)
        data: dict[str, Any] = json.loads(msg.data)
        status = (msg.headers or {}).get("Nats-Service-Error-Code")
        if status:
            raise Failed(status, data)
        return data

    async def perform(self, perform: str, /, **body: Any) -> dict[str, Any]:
        return await self._ask(f"{self.prefix}.perform.{perform}", body, 120.0)

    async def query(self, query: str, /, **body: Any) -> dict[str, Any]:
        return await self._ask(f"{self.prefix}.query.{query}", body, 120.0)

    async def refused(self, perform: str, /, **body: Any) -> Failed:
        try:
            await self.perform(perform, **body)
        except Failed as exc:
            return exc
        raise AssertionError(f"{perform} {body} was not refused")

    async def state(self, room_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        """Current state: (type, state_key) -> the event."""
        data = await self.query("latest_events_and_state", room_id=room_id)
        return {(e["type"], e["state_key"]): e for e in data["state_events"]}

    async def send(self, room_id: str, sender: str, body: str, **kw: Any) -> str:
        reply = await self.perform(
            "send_event", room_id=room_id, sender=sender, type="m.room.message",
            content={"msgtype": "m.text", "body": body}, **kw,
        )
        event_id: str = reply["event_id"]
        return event_id


@dataclass
class Performer:
    """The worker (consumer, pipeline, store), its queries and its performs."""

    run: WorkerRun
    key_file: Path
    prefix: str
    queries: QueryService | None = None
    performs: PerformService | None = None

    def environment(self) -> dict[str, str]:
        """The settings the performs are built with (a subclass may add to them)."""
        return {
            "SERVER_NAME": SERVER, "SIGNING_KEY_FILE": str(self.key_file),
            "ROOMSERVER_PREFIX": self.prefix,
        }

    def extra_handlers(self) -> Mapping[str, Any]:
        """Performs served beside the Perform API's own (a subclass may add some)."""
        return {}

    async def start(self) -> None:
        await self.run.start()
        assert self.run.nc is not None and self.run.pool is not None
        settings = load_settings(self.environment())
        self.queries = await start_queries(
            self.run.nc, self.run.pool, prefix=self.prefix, server_name=SERVER
        )
        assert self.queries.service is not None
        self.performs = PerformService(
            build_writer(self.run.nc, self.run.pool, settings), extra=self.extra_handlers()
        )
        await self.performs.add_to(self.queries.service, self.prefix)

    async def stop(self, *, graceful: bool = True) -> None:
        if self.performs is not None and graceful:
            await self.performs.stop()
        if self.queries is not None:
            await self.queries.stop()
        await self.run.stop(graceful=graceful)
        self.performs = self.queries = None


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    from worker.perform.keys import load_signing_key

    path = tmp_path / "signing.key"
    load_signing_key(path, SERVER, create=True)
    return path


@pytest.fixture
def performer_class() -> type[Performer]:
    """Which `Performer` the `performer` fixture starts; a test module overrides it."""
    return Performer


@pytest.fixture
async def performer(
    nats_url: str, database_dsn: str, prefix: str, key_file: Path,
    performer_class: type[Performer],
) -> AsyncIterator[Performer]:
    p = performer_class(WorkerRun(nats_url, database_dsn, Subjects(prefix)), key_file, prefix)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def api(nats_url: str, prefix: str, performer: Performer) -> AsyncIterator[Api]:
    nc = await nats.connect(nats_url)
    try:
        yield Api(nc, prefix)
    finally:
        await nc.close()


async def check_built_events(api: Api, reader: Client) -> int:
    """Every event the output stream announced so far: Synapse allows it against its own auth
    events, and its signature verifies with the key `server_keys` publishes. Returns how many
    were checked."""
    keys = await api.query("server_keys")
    assert keys["server_name"] == SERVER
    ((key_id, key_b64),) = keys["verify_keys"].items()
    outputs = await reader.outputs()
    pdus = [
        msgspec.json.decode(o.new_room_event.event) for o in outputs if o.new_room_event
    ]
    versions: dict[str, str] = {}
    creates: dict[str, dict[str, Any]] = {}
    for pdu in pdus:
        if pdu["type"] == "m.room.create":
            room_id = pdu.get("room_id") or "!" + pdu["event_id"][1:]
            versions[room_id] = pdu["content"].get("room_version", "1")
            creates[room_id] = pdu
    for pdu in pdus:
        room_id = pdu.get("room_id") or "!" + pdu["event_id"][1:]
        version = versions[room_id]
        assert synapse_signature_ok(pdu, version, SERVER, key_id, key_b64), pdu["event_id"]
        auth_ids = [a[0] if isinstance(a, list) else a for a in pdu["auth_events"]]
        found = await api.query("events_by_id", event_ids=auth_ids) if auth_ids else {"events": []}
        auth = list(found["events"])
        if version == "12" and pdu["type"] != "m.room.create":
            auth.append(creates[room_id])
        assert synapse_refusal(pdu, version, auth) is None, pdu
    return len(pdus)


@pytest.fixture
async def reader(api: Api) -> Client:
    return Client(api.nc, Subjects(api.prefix))

