"""The NATS adapter alone: what it makes of each kind of answer (worker.federation.client)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.federation.conftest import enc
from worker.federation import FederationUnavailable, NatsFederationClient
from worker.messages.federation import GetMissingEventsRequest
from worker.observability.metrics import FEDERATION_REQUESTS


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    try:
        yield conn
    finally:
        await conn.close()


async def answering(nc: NATS, subject: str, body: bytes) -> list[bytes]:
    """Answer every request on `subject` with `body`; returns the requests seen."""
    seen: list[bytes] = []

    async def cb(msg: Msg) -> None:
        seen.append(msg.data)
        await msg.respond(body)

    await nc.subscribe(subject, cb=cb)
    return seen


def count(verb: str, result: str) -> float:
    value = FEDERATION_REQUESTS.labels(verb, result)._value.get()
    assert isinstance(value, float)
    return value


async def test_requests_carry_the_struct_and_answers_decode(nc: NATS, prefix: str) -> None:
    pdu = {"type": "m.room.message", "room_id": "!r:test"}
    seen = await answering(nc, f"{prefix}.get_missing_events", enc({"events": [pdu]}))
    client = NatsFederationClient(nc, prefix)
    got = await client.missing_events("!r:test", ["$a"], ["$b"], 20)
    assert got == [pdu]
    req = GetMissingEventsRequest(
        room_id="!r:test", earliest_events=("$a",), latest_events=("$b",), limit=20
    )
    assert seen == [enc(req)]


async def test_state_ids_and_event(nc: NATS, prefix: str) -> None:
    await answering(nc, f"{prefix}.state_ids", enc({"pdu_ids": ["$a"], "auth_chain_ids": ["$b"]}))
    await answering(nc, f"{prefix}.event", enc({"pdus": [{"type": "x"}]}))
    client = NatsFederationClient(nc, prefix)
    assert await client.state_ids("!r:test", "$e") == (["$a"], ["$b"])
    assert await client.event("!r:test", "$a") == {"type": "x"}


async def test_not_found_is_an_empty_answer(nc: NATS, prefix: str) -> None:
    await answering(nc, f"{prefix}.event_auth", enc({"error_code": "not_found"}))
    await answering(nc, f"{prefix}.event", enc({"error_code": "not_found"}))
    client = NatsFederationClient(nc, prefix)
    assert await client.event_auth("!r:test", "$e") == []
    assert await client.event("!r:test", "$e") is None


async def test_other_errors_and_silence_are_retryable(nc: NATS, prefix: str) -> None:
    await answering(nc, f"{prefix}.state", enc({"error_code": "remote_unreachable"}))
    client = NatsFederationClient(nc, prefix, timeout=0.2, state_timeout=0.2)
    with pytest.raises(FederationUnavailable, match="remote_unreachable"):
        await client.state("!r:test", "$e")
    before = count("event", "no_responders")
    with pytest.raises(FederationUnavailable, match="no federation service"):
        await client.event("!r:test", "$e")
    assert count("event", "no_responders") == before + 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        enc({"events": "not a list"}),
        enc({"events": [1, 2]}),
        enc({"events": [{"type": "x"}] * 21}),
    ],
    ids=["undecodable", "wrong-shape", "not-objects", "over-limit"],
)
async def test_garbage_is_no_answer(nc: NATS, prefix: str, body: bytes) -> None:
    await answering(nc, f"{prefix}.get_missing_events", body)
    client = NatsFederationClient(nc, prefix)
    assert await client.missing_events("!r:test", ["$a"], ["$b"], 20) == []


async def test_oversize_state_is_no_answer(nc: NATS, prefix: str) -> None:
    ids = [f"$e{i}" for i in range(11)]
    await answering(nc, f"{prefix}.state_ids", enc({"pdu_ids": ids}))
    await answering(nc, f"{prefix}.state", enc({"pdus": [{"type": "x"}] * 11}))
    client = NatsFederationClient(nc, prefix, max_events=10)
    assert await client.state_ids("!r:test", "$e") == ([], [])
    assert await client.state("!r:test", "$e") == ([], [])
