"""End to end: the homeserver queries over rooms built through the input stream by the real
worker, each answer compared with what the test's own builders say the current state is
(computed independently of the roomserver, event by event, as the events were built).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.conftest import Client, WorkerRun, client, worker  # noqa: F401
from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import builder
from tests.query.test_e2e import Asker
from worker.query.service import QueryService
from worker.wiring import start_queries

LOCAL = "test"  # the builders' server: "alice" is @alice:test
ALICE = "@alice:test"
GINA = "@gina:test"
BOB = "@bob:b.test"
CAROL = "@carol:c.test"
DAVE = "@dave:b.test"
EVE = "@eve:e.test"


@pytest.fixture
async def asker(
    worker: WorkerRun, client: Client, prefix: str  # noqa: F811
) -> AsyncIterator[Asker]:
    assert worker.pool is not None
    svc: QueryService = await start_queries(
        client.nc, worker.pool, prefix=prefix, server_name=LOCAL
    )
    try:
        yield Asker(client, prefix)
    finally:
        await svc.stop()


async def send_all(c: Client, b: RoomBuilder, *, start: int = 0) -> None:
    for eid in list(b.events)[start:]:
        reply = await c.send(b, eid)
        assert reply.outcome == "accepted", (eid, reply)


def room(name: str, version: str = "10", *, creator: str = "alice", rule: str = "public",
         pl: dict[str, Any] | None = None) -> RoomBuilder:
    b = builder(version, room_id=f"!{name}:test")
    b.create(creator)
    b.join(creator)
    b.power_levels(creator, users={creator: 100}, **(pl or {}))
    b.join_rules(creator, rule)
    return b


def memberships(b: RoomBuilder) -> dict[str, str]:
    """User -> membership in the builder's own running state."""
    return {
        key: b.events[eid]["content"]["membership"]
        for (t, key), eid in b.state.items()
        if t == "m.room.member"
    }


async def test_membership_queries_match_the_builders_state(
    worker: WorkerRun, client: Client, asker: Asker  # noqa: F811
) -> None:
    a = room("a")
    a.join(BOB)
    a.invite("alice", CAROL)
    a.join(DAVE)
    a.leave(DAVE)
    a.join(EVE)
    a.ban("alice", EVE)
    a.join(GINA)
    a.topic("alice", "room a")
    b = room("b")
    b.join(BOB)
    b.join(GINA)
    b.leave(GINA)
    c = room("c", rule="invite")
    c.invite("alice", BOB)
    rooms = {"!a:test": a, "!b:test": b, "!c:test": c}
    for r in rooms.values():
        await send_all(client, r)
    users = [ALICE, GINA, BOB, CAROL, DAVE, EVE, "@nobody:test"]

    # rooms_for_user, for each membership, against the builders.
    for user in users:
        for membership in ("join", "invite", "leave", "ban"):
            want = sorted(rid for rid, r in rooms.items() if memberships(r).get(user) == membership)
            got = await asker.ok("rooms_for_user", {"user_id": user, "membership": membership})
            assert got["room_ids"] == want, (user, membership)

    joined = {rid: {u for u, mm in memberships(r).items() if mm == "join"} for rid, r in rooms.items()}
    # joined_user_count and locally_joined_users.
    for rid, members in joined.items():
        got = await asker.ok("joined_user_count", {"room_id": rid})
        assert got["count"] == len(members)
        got = await asker.ok("locally_joined_users", {"room_id": rid})
        assert got["user_ids"] == sorted(u for u in members if u.endswith(":" + LOCAL))

    # shared_users: with given users, and with none (every user sharing a room).
    for user in users:
        mine = [rid for rid, m in joined.items() if user in m]
        want = Counter(u for rid in mine for u in joined[rid])
        got = await asker.ok("shared_users", {"user_id": user})
        assert got["user_ids"] == dict(want), user
        others = [BOB, CAROL, "@nobody:test", user]
        got = await asker.ok("shared_users", {"user_id": user, "other_user_ids": others})
        assert got["user_ids"] == {u: n for u, n in want.items() if u in others}, user

    # known_users: sharing a room, not the asker, search by substring in any case, limit.
    want_known = sorted({u for m in joined.values() if ALICE in m for u in m} - {ALICE})
    got = await asker.ok("known_users", {"user_id": ALICE, "limit": 100})
    assert got["user_ids"] == want_known
    got = await asker.ok("known_users", {"user_id": ALICE, "search": "B.TEST", "limit": 100})
    assert got["user_ids"] == [u for u in want_known if "b.test" in u]
    got = await asker.ok("known_users", {"user_id": ALICE, "limit": 1})
    assert got["user_ids"] == want_known[:1]

    # invite_pending.
    got = await asker.ok("invite_pending", {"room_id": "!a:test", "user_id": CAROL})
    assert got == {"pending": True, "inviter": ALICE}
    got = await asker.ok("invite_pending", {"room_id": "!c:test", "user_id": BOB})
    assert got == {"pending": True, "inviter": ALICE}
    got = await asker.ok("invite_pending", {"room_id": "!a:test", "user_id": BOB})
    assert got == {"pending": False, "inviter": ""}

    # bulk_state_content: exact keys and a wildcard, across rooms, unknown rooms absent.
    tuples = [["m.room.topic", ""], ["m.room.member", "*"], ["m.room.join_rules", ""]]
    got = await asker.ok("bulk_state_content", {
        "room_ids": [*rooms, "!unknown:test"], "state_tuples": tuples,
    })
    want_bulk: dict[str, list[list[Any]]] = {}
    for rid, r in rooms.items():
        entries = [
            [t, k, r.events[eid]["content"]]
            for (t, k), eid in sorted(r.state.items())
            if t == "m.room.member" or (t, k) in {("m.room.topic", ""), ("m.room.join_rules", "")}
        ]
        want_bulk[rid] = entries
    assert got["rooms"] == want_bulk

    # The per-room counts the triggers keep agree with the membership rows.
    assert worker.pool is not None
    assert await worker.pool.fetch(
        """
        SELECT r.room_id FROM rooms r
        WHERE coalesce((SELECT c.joined FROM room_joined_counts c WHERE c.room_nid = r.room_nid), 0)
              <> (SELECT count(*) FROM memberships m WHERE m.room_nid = r.room_nid AND m.membership = 3)
        """
    ) == []

    # Errors.
    assert await asker.error("joined_user_count", {"room_id": "!x:test"}) == ("404", "not_found")
    assert await asker.error("invite_pending", {"room_id": "!x:test", "user_id": BOB}) == (
        "404", "not_found",
    )
    assert await asker.error("rooms_for_user", {"user_id": ALICE, "membership": "x"}) == (
        "400", "bad_request",
    )
    assert await asker.error("known_users", {"user_id": ALICE, "limit": -1}) == (
        "400", "bad_request",
    )


async def test_answers_follow_the_room(client: Client, asker: Asker) -> None:  # noqa: F811
    """Nothing mutable is cached: each answer sees the latest committed event."""
    a = room("moving")
    await send_all(client, a)
    for n, user in enumerate([BOB, CAROL, DAVE], start=2):
        a.join(user)
        a.topic("alice", f"topic {n}")
        await send_all(client, a, start=len(a.events) - 2)
        assert (await asker.ok("joined_user_count", {"room_id": a.room_id}))["count"] == n
        got = await asker.ok("bulk_state_content", {
            "room_ids": [a.room_id], "state_tuples": [["m.room.topic", ""]],
        })
        assert got["rooms"][a.room_id] == [["m.room.topic", "", {"topic": f"topic {n}"}]]
        assert a.room_id in (await asker.ok("rooms_for_user", {"user_id": user}))["room_ids"]
    # A redaction rewrites the stored JSON of an event still in the current state: the next
    # answer has the redacted content, though the room's state did not change.
    a.redact("alice", a.state[("m.room.topic", "")])
    await send_all(client, a, start=len(a.events) - 1)
    got = await asker.ok("bulk_state_content", {
        "room_ids": [a.room_id], "state_tuples": [["m.room.topic", ""]],
    })
    assert got["rooms"][a.room_id] == [["m.room.topic", "", {}]]


async def test_restricted_join_allowed(client: Client, asker: Asker) -> None:  # noqa: F811
    space = room("space")
    space.join(BOB)
    space.join(GINA)
    await send_all(client, space)
    allow = [{"type": "m.room_membership", "room_id": "!space:test"}, {"type": "other"}, "junk"]
    r = room("restricted", rule="public")
    r.join(GINA)
    r.power_levels("alice", users={"alice": 100, "gina": 50}, invite=50)
    r.join_rules("alice", "restricted", allow=allow)
    r.invite("alice", CAROL)
    await send_all(client, r)

    async def ask(room_id: str, user: str) -> dict[str, Any]:
        return await asker.ok("restricted_join_allowed", {"room_id": room_id, "user_id": user})

    # Bob is in the allowed room: alice (the highest local power level) signs for him.
    assert await ask(r.room_id, BOB) == {
        "allowed": True, "authorising_user_id": ALICE, "reason": "allowed",
        "via_room_id": "!space:test",
    }
    assert (await ask(r.room_id, DAVE))["reason"] == "not_in_allowed_room"
    assert await ask(r.room_id, CAROL) == {
        "allowed": True, "authorising_user_id": "", "reason": "invited", "via_room_id": "",
    }
    assert (await ask(r.room_id, GINA))["reason"] == "already_joined"
    r.ban("alice", EVE)
    await send_all(client, r, start=len(r.events) - 1)
    space.join(EVE)
    await send_all(client, space, start=len(space.events) - 1)
    assert await ask(r.room_id, EVE) == {
        "allowed": False, "authorising_user_id": "", "reason": "banned", "via_room_id": "",
    }
    assert (await ask(space.room_id, BOB))["reason"] == "not_restricted"
    # Alice leaves: gina (50) can still invite.
    r.leave("alice")
    await send_all(client, r, start=len(r.events) - 1)
    assert (await ask(r.room_id, BOB))["authorising_user_id"] == GINA
    # Gina leaves too: no local user can sign.
    r.leave("gina")
    await send_all(client, r, start=len(r.events) - 1)
    assert await ask(r.room_id, BOB) == {
        "allowed": False, "authorising_user_id": "", "reason": "no_authorising_user",
        "via_room_id": "!space:test",
    }
    old = room("old", version="7")
    await send_all(client, old)
    assert (await ask(old.room_id, BOB))["reason"] == "unsupported_room_version"


async def test_server_banned_from_room(client: Client, asker: Asker) -> None:  # noqa: F811
    r = room("acl")
    await send_all(client, r)

    async def banned(server: str) -> bool:
        got = await asker.ok("server_banned_from_room", {"room_id": r.room_id, "server_name": server})
        return bool(got["banned"])

    assert not await banned("evil.test")
    r.state_event("m.room.server_acl", "", {
        "allow": ["*", 3], "deny": ["evil.test", "*.evil.test"], "allow_ip_literals": False,
    }, "alice")
    await send_all(client, r, start=len(r.events) - 1)
    for server, want in [
        ("evil.test", True), ("EVIL.test:8448", True), ("a.evil.test", True),
        ("notevil.test", False), ("1.2.3.4", True), ("[::1]:8448", True), ("b.test", False),
    ]:
        assert await banned(server) is want, server
    assert await asker.error("server_banned_from_room", {"room_id": "!x:test", "server_name": "a"}) == (
        "404", "not_found",
    )


async def test_server_acl_is_enforced_on_input(
    client: Client, asker: Asker  # noqa: F811
) -> None:
    r = room("guarded")
    r.join(BOB)
    r.state_event("m.room.server_acl", "", {"allow": ["*"], "deny": ["evil.test"]}, "alice")
    await send_all(client, r)
    msg = r.message(BOB, "relayed")
    # From a denied origin: refused with its own code, and not stored...
    reply = await client.send(r, msg, origin="evil.test:8448")
    assert (reply.outcome, reply.reason_code) == ("rejected", "server_acl_denied")
    assert "evil.test" in reply.reason
    got = await asker.ok("events_by_id", {"event_ids": [msg]})
    assert got["missing_event_ids"] == [msg]
    # ...so the same event relayed by an allowed server is taken.
    reply = await client.send(r, msg, origin="b.test", msg_id=msg + "-again")
    assert (reply.outcome, reply.reason_code, reply.duplicate) == ("accepted", "", False)
    # An input without origin is ours: never checked.
    mine = r.message("alice", "local")
    assert (await client.send(r, mine)).outcome == "accepted"


async def test_room_hierarchy_of_spaces_with_a_cycle(
    client: Client, asker: Asker  # noqa: F811
) -> None:
    def space(name: str, rule: str = "public") -> RoomBuilder:
        b = builder("10", room_id=f"!{name}:test")
        b.create("alice", type="m.space")
        b.join("alice")
        b.power_levels("alice", users={"alice": 100})
        b.join_rules("alice", rule)
        return b

    def child(parent: RoomBuilder, target: str, **content: Any) -> None:
        parent.state_event("m.space.child", target, {"via": ["test"], **content}, "alice")

    s, t = space("s"), space("t")
    s.state_event("m.room.name", "", {"name": "Top"}, "alice")
    a = room("a")
    a.state_event("m.room.topic", "", {"topic": "A room"}, "alice")
    p = room("p", rule="invite")
    w = room("w", rule="invite")
    w.state_event("m.room.history_visibility", "", {"history_visibility": "world_readable"}, "alice")
    i = room("i", rule="invite")
    i.invite("alice", BOB)
    child(s, "!a:test", order="b", suggested=True)
    child(s, "!t:test", order="a")
    child(s, "!ghost:test")  # unknown here: left out
    s.state_event("m.space.child", "!p:test", {"via": []}, "alice")  # no via: not a child
    child(t, "!s:test")  # the cycle
    child(t, "!p:test")
    child(t, "!w:test")
    child(t, "!i:test")
    child(a, "!p:test")  # a is not a space: its children are not walked
    for b in (s, t, a, p, w, i):
        await send_all(client, b)

    async def walk(**req: Any) -> tuple[list[str], str]:
        got = await asker.ok("room_hierarchy", {"room_id": "!s:test", **req})
        return [r["room_id"] for r in got["rooms"]], got["next_batch"]

    assert await walk() == (["!s:test", "!t:test", "!w:test", "!a:test"], "")
    assert await walk(user_id=BOB) == (
        ["!s:test", "!t:test", "!w:test", "!i:test", "!a:test"], "",
    )
    assert await walk(max_depth=1) == (["!s:test", "!t:test", "!a:test"], "")
    assert await walk(max_depth=0) == (["!s:test"], "")
    assert await walk(suggested_only=True) == (["!s:test", "!a:test"], "")
    assert await walk(limit=2) == (["!s:test", "!t:test"], "2")
    assert await walk(limit=2, **{"from": "2"}) == (["!w:test", "!a:test"], "")

    got = await asker.ok("room_hierarchy", {"room_id": "!s:test", "limit": 1})
    [top] = got["rooms"]
    assert (top["name"], top["room_type"], top["join_rule"], top["num_joined_members"]) == (
        "Top", "m.space", "public", 1,
    )
    assert [c["state_key"] for c in top["children_state"]] == ["!t:test", "!a:test", "!ghost:test"]
    assert top["children_state"][1]["content"] == {"via": ["test"], "order": "b", "suggested": True}
    got = await asker.ok("room_hierarchy", {"room_id": "!a:test"})
    assert [(r["room_id"], r["topic"], r["children_state"]) for r in got["rooms"]] == [
        ("!a:test", "A room", []),
    ]
    # A room the asker may not see lists nothing, not even itself.
    assert (await asker.ok("room_hierarchy", {"room_id": "!p:test"}))["rooms"] == []
    assert await asker.error("room_hierarchy", {"room_id": "!x:test"}) == ("404", "not_found")
    assert await asker.error("room_hierarchy", {"room_id": "!s:test", "from": "x"}) == (
        "400", "bad_request",
    )
