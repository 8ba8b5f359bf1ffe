"""deploy/nats/accounts.conf on a real nats-server: each user may do its part, and every
unauthorised publish, request or subscription is refused by the server.

The roomserver's side is played by a micro service with the endpoints' subjects (what is
tested is who may reach them, not what they answer) and a message put on the output stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig

from tests.test_nats_auth import _free_port, _wait_listening
from worker.bus.streams import StreamLimits, ensure_streams
from worker.bus.subjects import Subjects
from worker.embedded import nats_server_binary

REPO = Path(__file__).resolve().parents[2]
USERS = ("roomserver", "client_api", "federation", "consumer", "admin")
ROOM = "!room:hs.test"


def _password(user: str) -> str:
    return f"{user}-secret"


@pytest.fixture
def server(tmp_path: Path) -> Any:
    shutil.copy(REPO / "deploy" / "nats" / "accounts.conf", tmp_path / "accounts.conf")
    port = _free_port()
    conf = tmp_path / "server.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        "include ./accounts.conf\n"
    )
    env = {**os.environ, **{f"{u.upper()}_PASSWORD": _password(u) for u in USERS}}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(nats_server_binary()), "-c", str(conf)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(proc, port, log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Conn:
    """A connection as one user, collecting the server's permission refusals."""

    def __init__(self, nc: NATS, refusals: list[str]) -> None:
        self.nc = nc
        self.refusals = refusals

    async def refused(self, action: Callable[[], Awaitable[Any]]) -> str:
        before = len(self.refusals)
        # A refused request times out: the refusal itself arrives as an async error.
        with contextlib.suppress(Exception):
            await action()
        for _ in range(100):
            if len(self.refusals) > before:
                return self.refusals[-1]
            await asyncio.sleep(0.02)
        raise AssertionError("the server did not refuse it")


@pytest.fixture
async def connect(server: str) -> AsyncIterator[Callable[[str], Awaitable[Conn]]]:
    opened: list[NATS] = []

    async def open_as(user: str) -> Conn:
        refusals: list[str] = []

        async def on_error(exc: Exception) -> None:
            if "permissions violation" in str(exc).lower():
                refusals.append(str(exc))

        nc = await nats.connect(f"nats://{user}:{_password(user)}@{server}", error_cb=on_error,
                                allow_reconnect=False)
        opened.append(nc)
        return Conn(nc, refusals)

    yield open_as
    for nc in opened:
        await nc.close()


async def _roomserver(conn: Conn) -> None:
    """Streams, an output, and the endpoints of performs and queries."""
    subjects = Subjects("roomserver")
    await ensure_streams(conn.nc.jetstream(), subjects, StreamLimits(shards=1))
    await conn.nc.jetstream().publish(subjects.output(ROOM), b"{}", headers={"Room-ID": ROOM})

    async def answer(request: Request) -> None:
        await request.respond(b"{}")

    service = await add_service(conn.nc, ServiceConfig(name="roomserver", version="0.1.0"))
    for name, subject in (
        ("send_event", "roomserver.perform.send_event"),
        ("purge_room", "roomserver.perform.purge_room"),
        ("room_version", "roomserver.query.room_version"),
    ):
        await service.add_endpoint(EndpointConfig(name=name, handler=answer, subject=subject))


async def test_each_user_may_do_its_part_and_nothing_else(
    connect: Callable[[str], Awaitable[Conn]],
) -> None:
    await _roomserver(await connect("roomserver"))
    subjects = Subjects("roomserver")
    input_subject = subjects.input(ROOM)

    async def ask(conn: Conn, subject: str) -> bytes:
        return (await conn.nc.request(subject, b"{}", timeout=1)).data

    async def publish_input(conn: Conn) -> Any:
        return await conn.nc.jetstream().publish(input_subject, b"{}", headers={"Room-ID": ROOM},
                                                 timeout=1)

    client = await connect("client_api")
    assert await ask(client, "roomserver.perform.send_event") == b"{}"
    assert await ask(client, "roomserver.query.room_version") == b"{}"
    assert (await publish_input(client)).stream == "ROOMSERVER_INPUT"
    assert "purge_room" in await client.refused(
        lambda: ask(client, "roomserver.perform.purge_room"))
    assert "subscription" in await client.refused(
        lambda: client.nc.subscribe("roomserver.output.>"))

    federation = await connect("federation")
    assert (await publish_input(federation)).stream == "ROOMSERVER_INPUT"
    assert await ask(federation, "roomserver.query.room_version") == b"{}"
    assert "perform" in await federation.refused(
        lambda: ask(federation, "roomserver.perform.send_event"))

    consumer = await connect("consumer")
    assert await ask(consumer, "roomserver.query.room_version") == b"{}"
    sub = await consumer.nc.jetstream().pull_subscribe(
        subjects.output_wildcard, durable="sync", stream=subjects.output_stream
    )
    (msg,) = await sub.fetch(1, timeout=5)
    await msg.ack()
    assert "input" in await consumer.refused(lambda: publish_input(consumer))
    assert "perform" in await consumer.refused(
        lambda: ask(consumer, "roomserver.perform.send_event"))
    assert "$js.api.stream.delete" in await consumer.refused(
        lambda: consumer.nc.jetstream().delete_stream("ROOMSERVER_INPUT"))

    admin = await connect("admin")
    assert await ask(admin, "roomserver.perform.purge_room") == b"{}"
