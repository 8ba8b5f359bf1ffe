"""Every query's answers, over two stores holding the same room (rooms.py `build_room`):

- `memory`: the in-memory store, whose state the test declares;
- `postgres`: the same events written through `PostgresStore.persist` into a fresh database
  and read back through `PostgresQueryReads` (real PostgreSQL, the production adapter).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from worker.embedded import EmbeddedPostgres
from worker.query.handlers import QueryFailed, answer

from .pgroom import Backed, persist_room
from .rooms import BOB, CAROL, ROOM, MemoryStore, build_room


async def ask(store: MemoryStore, name: str, body: Any) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    response = await answer(store, name, data)
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(response))
    return out


async def fails(store: MemoryStore, name: str, body: Any) -> QueryFailed:
    with pytest.raises(QueryFailed) as info:
        await ask(store, name, body)
    return info.value


def ids(events: list[dict[str, Any]], store: MemoryStore) -> list[str]:
    """Event IDs of returned PDUs (v3+ PDUs do not carry them): each test event has its own
    origin_server_ts, which survives redaction."""
    by_ts = {e.event.origin_server_ts: i for i, e in store.stored.items()}
    return [by_ts[e["origin_server_ts"]] for e in events]


@pytest.fixture(scope="module", params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest, embedded_pg: EmbeddedPostgres) -> AsyncIterator[Any]:
    """Read-only for the tests, so one room per module and store kind is enough."""
    room = build_room()
    if request.param == "memory":
        yield room
        return
    import asyncpg

    from worker.storage.migrations import apply_migrations
    from worker.storage.query_reads import PostgresQueryReads
    from worker.storage.store import PostgresStore

    name = f"q_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(embedded_pg.dsn())
    await admin.execute(f'CREATE DATABASE "{name}"')
    pool = await asyncpg.create_pool(embedded_pg.dsn(name), min_size=1, max_size=4)
    try:
        await apply_migrations(pool)
        pg = PostgresStore(pool)
        await persist_room(pg, room)
        yield Backed(PostgresQueryReads(pool, pg), room)
    finally:
        await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_room_version_and_unknown_room(store: MemoryStore) -> None:
    assert await ask(store, "room_version", {"room_id": ROOM}) == {
        "room_id": ROOM,
        "room_version": "10",
    }
    err = await fails(store, "room_version", {"room_id": "!nope:a.test"})
    assert err.code == "not_found"


async def test_bad_requests_say_why(store: MemoryStore) -> None:
    assert (await fails(store, "room_version", b"{not json")).code == "bad_request"
    err = await fails(store, "current_state", {"room_id": ROOM})
    assert err.code == "bad_request" and "state_tuples" in err.message
    err = await fails(store, "room_version", {"room_id": 5})
    assert err.code == "bad_request" and "room_id" in err.message
    err = await fails(store, "missing_events", {
        "room_id": ROOM, "server_name": "b.test", "earliest_events": [], "latest_events": [],
        "limit": -1,
    })
    assert err.code == "bad_request" and "limit" in err.message
    err = await fails(store, "state_after_events", {"room_id": ROOM, "prev_event_ids": []})
    assert err.code == "bad_request"


async def test_latest_events_and_state(store: MemoryStore) -> None:
    r = await ask(store, "latest_events_and_state", {"room_id": ROOM})
    assert r["latest_event_ids"] == ["$c_invite"]
    assert r["depth"] == store.stored["$c_invite"].event.depth + 1
    assert r["room_version"] == "10"
    assert sorted(ids(r["state_events"], store)) == sorted(store.current.values())
    r = await ask(store, "latest_events_and_state", {
        "room_id": ROOM, "state_tuples": [["m.room.topic", ""]],
    })
    assert ids(r["state_events"], store) == ["$t2"]
    r = await ask(store, "latest_events_and_state", {"room_id": ROOM, "state_tuples": []})
    assert r["state_events"] == []


async def test_current_state_with_wildcards(store: MemoryStore) -> None:
    r = await ask(store, "current_state", {
        "room_id": ROOM, "state_tuples": [["m.room.member", "*"], ["m.room.create", ""]],
    })
    # Sorted by (type, state_key).
    assert ids(r["state_events"], store) == ["$create", "$a_join", "$b_leave", "$c_invite"]
    r = await ask(store, "current_state", {
        "room_id": ROOM, "state_tuples": [["m.room.name", ""], ["m.room.member", BOB]],
    })
    assert ids(r["state_events"], store) == ["$b_leave"]


async def test_state_after_events_single_and_forked(store: MemoryStore) -> None:
    r = await ask(store, "state_after_events", {
        "room_id": ROOM, "prev_event_ids": ["$t1"], "state_tuples": [["m.room.topic", ""]],
    })
    assert r["prev_events_exist"] and ids(r["state_events"], store) == ["$t1"]
    # Two topics by the same sender at the same mainline position: the later one wins.
    r = await ask(store, "state_after_events", {
        "room_id": ROOM, "prev_event_ids": ["$t1", "$t2"],
    })
    got = ids(r["state_events"], store)
    assert "$t2" in got and "$t1" not in got
    assert sorted(got) == sorted(store.after("$t2").values())
    r = await ask(store, "state_after_events", {
        "room_id": ROOM, "prev_event_ids": ["$t1", "$nope"],
    })
    assert r["prev_events_exist"] is False and r["missing_event_ids"] == ["$nope"]
    assert r["state_events"] == []


async def test_events_by_id_redacted_and_missing(store: MemoryStore) -> None:
    r = await ask(store, "events_by_id", {"event_ids": ["$m1", "$nope", "$m2", "$m1"]})
    assert r["missing_event_ids"] == ["$nope"]
    m1, m2 = r["events"]
    assert m1["content"] == {} and m1["type"] == "m.room.message"
    assert m2["content"]["body"] == "secret"
    r = await ask(store, "events_by_id", {"event_ids": ["$m2"], "room_id": ROOM})
    assert len(r["events"]) == 1
    err = await fails(store, "events_by_id", {"event_ids": ["$m2"], "room_id": "!x:a.test"})
    assert err.code == "not_found"


async def test_memberships(store: MemoryStore) -> None:
    r = await ask(store, "membership_for_user", {"room_id": ROOM, "user_id": BOB})
    assert r == {
        "room_id": ROOM, "membership": "leave", "event_id": "$b_leave",
        "is_in_room": False, "has_been_in_room": True,
    }
    r = await ask(store, "membership_for_user", {"room_id": ROOM, "user_id": CAROL})
    assert r["membership"] == "invite" and not r["has_been_in_room"]
    r = await ask(store, "membership_for_user", {"room_id": ROOM, "user_id": "@dan:d.test"})
    assert r["membership"] == "leave" and r["event_id"] == ""
    r = await ask(store, "memberships_for_room", {"room_id": ROOM})
    assert ids(r["events"], store) == ["$a_join"]
    r = await ask(store, "memberships_for_room", {"room_id": ROOM, "joined_only": False})
    assert ids(r["events"], store) == ["$a_join", "$b_leave", "$c_invite"]


async def test_membership_at_event(store: MemoryStore) -> None:
    r = await ask(store, "membership_at_event", {
        "room_id": ROOM, "user_id": BOB,
        "event_ids": ["$m1", "$b_join", "$b_leave", "$m2", "$nope"],
    })
    assert r["missing_event_ids"] == ["$nope"]
    at = {x["event_id"]: (x["membership"], x["membership_event_id"]) for x in r["memberships"]}
    assert at == {
        "$b_join": ("leave", ""),  # the state *before* bob's own join
        "$b_leave": ("join", "$b_join"),
        "$m1": ("join", "$b_join"),
        "$m2": ("leave", "$b_leave"),
    }


async def test_auth_chain_and_state_and_auth_chain(store: MemoryStore) -> None:
    r = await ask(store, "auth_chain", {"event_ids": ["$b_join", "$nope"]})
    assert r["missing_event_ids"] == ["$nope"]
    assert ids(r["auth_chain_events"], store) == ["$create", "$a_join", "$pl", "$jr"]
    r = await ask(store, "state_and_auth_chain", {"room_id": ROOM, "prev_event_ids": ["$m1"]})
    assert r["state_known"]
    assert sorted(ids(r["state_events"], store)) == sorted(store.after("$m1").values())
    assert set(ids(r["auth_chain_events"], store)) == {"$create", "$a_join", "$pl", "$jr"}
    r = await ask(store, "state_and_auth_chain", {
        "room_id": ROOM, "prev_event_ids": ["$b_join"], "auth_event_ids": ["$jr"],
        "only_auth_chain": True,
    })
    assert ids(r["auth_chain_events"], store) == ["$create", "$a_join", "$pl", "$jr"]
    assert r["state_events"] == []
    r = await ask(store, "state_and_auth_chain", {
        "room_id": ROOM, "prev_event_ids": ["$b_leave"], "state_before": True,
    })
    assert sorted(ids(r["state_events"], store)) == sorted(store.before["$b_leave"].values())
    assert "$b_join" in ids(r["state_events"], store)
    err = await fails(store, "state_and_auth_chain", {
        "room_id": ROOM, "prev_event_ids": ["$t1", "$t2"], "state_before": True,
    })
    assert err.code == "bad_request"
    r = await ask(store, "state_and_auth_chain", {"room_id": ROOM, "prev_event_ids": ["$zz"]})
    assert r["state_known"] is False and r["missing_event_ids"] == ["$zz"]


async def test_history_visibility_for_servers(store: MemoryStore) -> None:
    async def allowed(event_id: str, server: str) -> bool:
        r = await ask(store, "server_allowed_to_see_event", {
            "event_id": event_id, "server_name": server,
        })
        return bool(r["allowed"])

    # `shared` while bob was in: everyone may see.
    assert await allowed("$m1", "c.test")
    # `joined` from $hv2 on: b.test while bob is joined, nobody else.
    assert await allowed("$hv2", "b.test")
    assert not await allowed("$hv2", "c.test")
    assert not await allowed("$m2", "b.test")
    assert await allowed("$m2", "a.test")
    err = await fails(store, "server_allowed_to_see_event", {"event_id": "$nope", "server_name": "b.test"})
    assert err.code == "not_found"


async def test_missing_events_walks_back_and_redacts_hidden(store: MemoryStore) -> None:
    r = await ask(store, "missing_events", {
        "room_id": ROOM, "server_name": "b.test",
        "earliest_events": ["$merge"], "latest_events": ["$c_invite"], "limit": 10,
    })
    got = ids(r["events"], store)
    assert got == ["$hv2", "$b_leave", "$m2", "$red"]
    by_id = dict(zip(got, r["events"], strict=True))
    # b.test left before $m2 and history is `joined`: the content is hidden.
    assert by_id["$m2"]["content"] == {}
    assert by_id["$hv2"]["content"] == {"history_visibility": "joined"}
    r = await ask(store, "missing_events", {
        "room_id": ROOM, "server_name": "b.test",
        "earliest_events": ["$merge"], "latest_events": ["$c_invite"], "limit": 2,
    })
    # The nearest to `latest_events` come first in the walk; the answer is oldest first.
    assert ids(r["events"], store) == ["$m2", "$red"]
    # Through the fork: both branches, each once.
    r = await ask(store, "missing_events", {
        "room_id": ROOM, "server_name": "a.test",
        "earliest_events": ["$m1"], "latest_events": ["$hv2"], "limit": 10,
    })
    assert ids(r["events"], store) == ["$t1", "$t2", "$merge"]


async def test_server_joined_to_room(store: MemoryStore) -> None:
    async def joined(server: str) -> bool:
        r = await ask(store, "server_joined_to_room", {"room_id": ROOM, "server_name": server})
        return bool(r["is_joined"])

    assert await joined("a.test")
    assert not await joined("b.test")  # left
    assert not await joined("c.test")  # only invited
    err = await fails(store, "server_joined_to_room", {"room_id": "!x:y", "server_name": "a.test"})
    assert err.code == "not_found"



async def test_queries_about_only_unknown_events_are_not_found(store: MemoryStore) -> None:
    asks: list[tuple[str, dict[str, Any]]] = [
        ("auth_chain", {"event_ids": ["$nope"]}),
        ("membership_at_event", {"room_id": ROOM, "user_id": BOB, "event_ids": ["$nope"]}),
        ("missing_events", {"room_id": ROOM, "server_name": "b.test", "earliest_events": [],
                            "latest_events": ["$nope"], "limit": 10}),
    ]
    for name, body in asks:
        err = await fails(store, name, body)
        assert err.code == "not_found", name
        assert "$nope" in err.message
    # Partly known: answered, with the unknown ones listed.
    r = await ask(store, "auth_chain", {"event_ids": ["$m1", "$nope"]})
    assert r["missing_event_ids"] == ["$nope"] and r["auth_chain_events"]
