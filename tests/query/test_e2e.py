"""End to end: rooms built through the input stream by the real worker (consumer, pipeline,
PostgreSQL store), then every query asked over NATS, as the sync and federation services ask.

The room has a fork merged by state resolution, a redaction, a history visibility change from
`shared` to `joined`, and members on three servers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from tests.e2e.conftest import Client, WorkerRun, client, worker  # noqa: F401
from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import builder
from worker.query.service import QueryService
from worker.wiring import start_queries

BOB = "@bob:b.test"
CAROL = "@carol:c.test"


class Asker:
    def __init__(self, nats_client: Client, prefix: str) -> None:
        self.client = nats_client
        self.prefix = prefix

    async def raw(self, name: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        msg = await self.client.nc.request(
            f"{self.prefix}.query.{name}", json.dumps(body).encode(), timeout=10
        )
        return json.loads(msg.data), dict(msg.headers or {})

    async def ok(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        data, headers = await self.raw(name, body)
        assert "Nats-Service-Error-Code" not in headers, (name, data)
        return data

    async def error(self, name: str, body: dict[str, Any]) -> tuple[str, str]:
        data, headers = await self.raw(name, body)
        return headers["Nats-Service-Error-Code"], data["code"]


@pytest.fixture
async def asker(
    worker: WorkerRun, client: Client, prefix: str  # noqa: F811
) -> AsyncIterator[Asker]:
    assert worker.pool is not None
    # As worker.app starts it: over the worker's pool, with a store view of its own.
    svc: QueryService = await start_queries(client.nc, worker.pool, prefix=prefix)
    try:
        yield Asker(client, prefix)
    finally:
        await svc.stop()


def ids(b: RoomBuilder, events: list[dict[str, Any]]) -> list[str]:
    """Returned PDUs -> event IDs (the stored JSON carries the event ID)."""
    out = [e["event_id"] for e in events]
    assert all(i in b.events for i in out)
    return out


@pytest.mark.parametrize("version", ["1", "10"])
async def test_queries_over_a_room_built_through_the_stream(
    client: Client, asker: Asker, version: str  # noqa: F811
) -> None:
    b = builder(version)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    jr = b.join_rules("alice", "public")
    b.state_event("m.room.history_visibility", "", {"history_visibility": "shared"}, "alice")
    bob_join = b.join(BOB)
    m1 = b.message(BOB, "hello")
    other = b.fork()
    t1 = b.topic("alice", "one")
    # The fork's clock is a copy: give the second topic a later timestamp of its own.
    t2 = other.topic("alice", "two", extra={"origin_server_ts": b.events[t1]["origin_server_ts"] + 1})
    merge = b.message("alice", "merge", prev=[t1, t2])
    hv2 = b.state_event("m.room.history_visibility", "", {"history_visibility": "joined"}, "alice")
    bob_leave = b.leave(BOB)
    m2 = b.message("alice", "secret")
    red = b.add("m.room.redaction", "alice", {"redacts": m1}, extra={"redacts": m1})
    carol = b.invite("alice", CAROL)
    for eid in list(b.events):
        reply = await client.send(b, eid)
        assert reply.outcome == "accepted", (eid, reply)
    room = b.room_id

    r = await asker.ok("room_version", {"room_id": room})
    assert r["room_version"] == version
    r = await asker.ok("state_after_events", {
        "room_id": room, "prev_event_ids": [t1, t2], "state_tuples": [["m.room.topic", ""]],
    })
    assert r["prev_events_exist"]
    [winner] = ids(b, r["state_events"])
    if version == "10":
        # v2: two topics by the same sender at the same mainline position: the later wins.
        assert winner == t2

    r = await asker.ok("latest_events_and_state", {"room_id": room})
    assert r["latest_event_ids"] == [carol]
    assert r["depth"] == b.events[carol]["depth"] + 1
    state = {(e["type"], e["state_key"]): e for e in r["state_events"]}
    # The pipeline resolved the fork at `merge` the way the query resolves it.
    assert state[("m.room.topic", "")]["event_id"] == winner
    assert state[("m.room.member", BOB)]["content"]["membership"] == "leave"

    r = await asker.ok("current_state", {
        "room_id": room, "state_tuples": [["m.room.member", "*"], ["m.room.topic", ""]],
    })
    assert sorted(ids(b, r["state_events"])) == sorted(
        [b.state[("m.room.member", "@alice:test")], bob_leave, carol, winner]
    )

    r = await asker.ok("state_after_events", {"room_id": room, "prev_event_ids": [t1, "$nope"]})
    assert r == {
        "room_id": room, "room_version": version, "prev_events_exist": False,
        "missing_event_ids": ["$nope"], "state_events": [],
    }

    r = await asker.ok("events_by_id", {"event_ids": [m1, m2, "$nope"]})
    assert r["missing_event_ids"] == ["$nope"]
    assert r["events"][0]["content"] == {}  # redacted by `red`
    assert r["events"][1]["content"]["body"] == "secret"

    r = await asker.ok("membership_for_user", {"room_id": room, "user_id": BOB})
    assert (r["membership"], r["event_id"], r["is_in_room"], r["has_been_in_room"]) == (
        "leave", bob_leave, False, True,
    )
    r = await asker.ok("memberships_for_room", {"room_id": room})
    assert [e["state_key"] for e in r["events"]] == ["@alice:test"]

    r = await asker.ok("membership_at_event", {
        "room_id": room, "user_id": BOB, "event_ids": [bob_join, m1, m2],
    })
    at = {x["event_id"]: x["membership"] for x in r["memberships"]}
    assert at == {bob_join: "leave", m1: "join", m2: "leave"}

    r = await asker.ok("auth_chain", {"event_ids": [bob_join]})
    chain = set(ids(b, r["auth_chain_events"]))
    assert jr in chain and bob_join not in chain
    assert chain == {b.state[("m.room.create", "")], b.state[("m.room.member", "@alice:test")],
                     b.state[("m.room.power_levels", "")], jr}

    r = await asker.ok("state_and_auth_chain", {"room_id": room, "prev_event_ids": [merge]})
    assert r["state_known"]
    got = {(e["type"], e["state_key"]) for e in r["state_events"]}
    assert ("m.room.topic", "") in got and ("m.room.member", BOB) in got
    assert b.state[("m.room.create", "")] in ids(b, r["auth_chain_events"])

    r = await asker.ok("missing_events", {
        "room_id": room, "server_name": "b.test",
        "earliest_events": [merge], "latest_events": [carol], "limit": 10,
    })
    assert ids(b, r["events"]) == [hv2, bob_leave, m2, red]
    assert r["events"][2]["content"] == {}  # b.test may not see it: history is `joined`

    for event_id, server, allowed in [
        (m1, "c.test", True), (hv2, "b.test", True), (m2, "b.test", False), (m2, "test", True),
    ]:
        r = await asker.ok("server_allowed_to_see_event", {
            "event_id": event_id, "server_name": server,
        })
        assert r["allowed"] is allowed, (event_id, server)

    for server, joined in [("test", True), ("b.test", False), ("c.test", False)]:
        r = await asker.ok("server_joined_to_room", {"room_id": room, "server_name": server})
        assert r["is_joined"] is joined, server

    # Errors: the micro service's code in the headers, our stable code in the body.
    assert await asker.error("room_version", {"room_id": "!unknown:test"}) == ("404", "not_found")
    assert await asker.error("server_allowed_to_see_event", {
        "event_id": "$unknown", "server_name": "b.test",
    }) == ("404", "not_found")
    assert await asker.error("current_state", {"room_id": room}) == ("400", "bad_request")
    data, headers = await asker.raw("membership_for_user", {"room_id": room, "user_id": 3})
    assert headers["Nats-Service-Error-Code"] == "400"
    assert "user_id" in msgspec.json.decode(json.dumps(data).encode())["message"]


async def test_answers_follow_the_room_as_it_moves_on(
    client: Client, asker: Asker  # noqa: F811
) -> None:
    """The query side caches nothing mutable: each answer sees the latest committed event."""
    b = builder("10")
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    for eid in list(b.events):
        assert (await client.send(b, eid)).outcome == "accepted"
    tuples = [["m.room.topic", ""]]
    r = await asker.ok("latest_events_and_state", {"room_id": b.room_id, "state_tuples": tuples})
    assert r["state_events"] == []
    for n in range(3):
        topic = b.topic("alice", f"topic {n}")
        assert (await client.send(b, topic)).outcome == "accepted"
        r = await asker.ok("latest_events_and_state", {"room_id": b.room_id, "state_tuples": tuples})
        assert r["latest_event_ids"] == [topic]
        assert [e["event_id"] for e in r["state_events"]] == [topic]
        r = await asker.ok("current_state", {"room_id": b.room_id, "state_tuples": tuples})
        assert r["state_events"][0]["content"] == {"topic": f"topic {n}"}
