"""The homeserver handlers' own rules over an in-memory `HomeserverStore`: restricted joins
in every room version that has them (v12 creators above everyone), the children order of a
space, and request bounds. The PostgreSQL adapter is tested end to end in
test_homeserver_e2e.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from worker.core.events import StateKey
from worker.messages import query_homeserver as m
from worker.query.handlers import QueryFailed
from worker.query.hierarchy import allowed_room_ids, child_order
from worker.query.homeserver import answer_homeserver
from worker.query.homeserver_ports import Homeserver, RoomState, StateEntry

LOCAL = "a.test"


class MemoryHomeserver:
    """Rooms as (version, state content by key, memberships by user)."""

    def __init__(self) -> None:
        self.rooms: dict[str, tuple[str, dict[StateKey, dict[str, Any]], dict[str, str]]] = {}

    def room(self, room_id: str, version: str, state: dict[StateKey, dict[str, Any]],
             members: dict[str, str]) -> None:
        self.rooms[room_id] = (version, state, members)

    async def current_state(
        self, room_ids: Sequence[str], keys: Sequence[StateKey]
    ) -> dict[str, RoomState]:
        out = {}
        for rid in room_ids:
            if rid not in self.rooms:
                continue
            version, state, _ = self.rooms[rid]
            picked = {
                k: StateEntry(f"${k[0]}{k[1]}", msgspec.json.encode(
                    {"type": k[0], "state_key": k[1], "sender": "@creator:a.test",
                     "content": v, "origin_server_ts": 1}))
                for k, v in state.items()
                if k in keys or (k[0], "*") in keys
            }
            out[rid] = RoomState(version, picked)
        return out

    async def memberships_in(self, room_id: str, user_ids: Sequence[str]) -> dict[str, str]:
        members = self.rooms[room_id][2] if room_id in self.rooms else {}
        return {u: members[u] for u in user_ids if u in members}

    async def memberships_of(self, user_id: str, room_ids: Sequence[str]) -> dict[str, str]:
        return {r: self.rooms[r][2][user_id] for r in room_ids
                if r in self.rooms and user_id in self.rooms[r][2]}

    async def joined_users_of_server(self, room_id: str, server_name: str) -> list[str]:
        return sorted(u for u, mm in self.rooms[room_id][2].items()
                      if mm == "join" and u.endswith(":" + server_name))

    async def joined_counts(self, room_ids: Sequence[str]) -> dict[str, int]:
        return {r: sum(v == "join" for v in self.rooms[r][2].values())
                for r in room_ids if r in self.rooms}

    async def rooms_of_user(self, user_id: str, membership: str) -> list[str]:
        return sorted(r for r, (_, _, mm) in self.rooms.items() if mm.get(user_id) == membership)

    async def shared_users(self, user_id: str, others: Sequence[str]) -> dict[str, int]:
        return {}

    async def known_users(self, user_id: str, search: str, limit: int) -> list[str]:
        return []


def restricted(version: str, *, creator: str = "@creator:a.test", users: dict[str, int],
               members: dict[str, str], invite: int = 0, users_default: int = 0,
               extra_creators: Sequence[str] = ()) -> MemoryHomeserver:
    store = MemoryHomeserver()
    create: dict[str, Any] = {"room_version": version}
    if version in {"8", "9", "10"}:
        create["creator"] = creator
    if extra_creators:
        create["additional_creators"] = list(extra_creators)
    store.room("!space:a.test", "10", {}, {"@bob:b.test": "join"})
    store.room("!r:a.test", version, {
        ("m.room.create", ""): create,
        ("m.room.power_levels", ""): {"users": users, "invite": invite,
                                      "users_default": users_default},
        ("m.room.join_rules", ""): {"join_rule": "restricted", "allow": [
            {"type": "m.room_membership", "room_id": "!nowhere:a.test"},
            {"type": "m.room_membership", "room_id": "!space:a.test"},
        ]},
    }, members)
    return store


async def ask(store: MemoryHomeserver, name: str, body: dict[str, Any]) -> Any:
    reply = await answer_homeserver(Homeserver(store, LOCAL), name, msgspec.json.encode(body))
    return msgspec.to_builtins(reply)


async def test_the_highest_local_power_level_signs() -> None:
    store = restricted("10", users={"@creator:a.test": 100, "@mod:a.test": 50,
                                    "@remote:b.test": 100}, invite=50,
                       members={"@creator:a.test": "leave", "@mod:a.test": "join",
                                "@remote:b.test": "join", "@plain:a.test": "join"})
    got = await ask(store, "restricted_join_allowed", {"room_id": "!r:a.test", "user_id": "@bob:b.test"})
    assert got == {"allowed": True, "authorising_user_id": "@mod:a.test", "reason": "allowed",
                   "via_room_id": "!space:a.test"}


async def test_users_default_can_sign() -> None:
    store = restricted("9", users={"@low:a.test": 0}, users_default=10, invite=10,
                       members={"@low:a.test": "join", "@b:a.test": "join", "@a:a.test": "join"})
    got = await ask(store, "restricted_join_allowed", {"room_id": "!r:a.test", "user_id": "@bob:b.test"})
    # Everyone not named has users_default (10), above the named one (0): the first by ID.
    assert got["authorising_user_id"] == "@a:a.test"


async def test_v12_creators_outrank_everyone() -> None:
    store = restricted("12", users={"@mod:a.test": 100}, invite=50,
                       extra_creators=["@co:a.test"],
                       members={"@mod:a.test": "join", "@co:a.test": "join"})
    got = await ask(store, "restricted_join_allowed", {"room_id": "!r:a.test", "user_id": "@bob:b.test"})
    assert got["authorising_user_id"] == "@co:a.test"


async def test_nobody_local_can_invite() -> None:
    store = restricted("10", users={"@mod:a.test": 10}, invite=50,
                       members={"@mod:a.test": "join"})
    got = await ask(store, "restricted_join_allowed", {"room_id": "!r:a.test", "user_id": "@bob:b.test"})
    assert (got["allowed"], got["reason"]) == (False, "no_authorising_user")


def test_allowed_room_ids_skip_what_is_not_a_room_membership() -> None:
    content = {"allow": [{"type": "m.room_membership", "room_id": "!a:x"}, {"type": "x"},
                         {"type": "m.room_membership", "room_id": 3}, "junk",
                         {"type": "m.room_membership", "room_id": "!a:x"},
                         {"type": "m.room_membership", "room_id": "!b:x"}]}
    assert allowed_room_ids(content) == ["!a:x", "!b:x"]
    assert allowed_room_ids({"allow": "nope"}) == []


def _child(order: Any, ts: int) -> StateEntry:
    content: dict[str, Any] = {"via": ["x"]}
    if order is not None:
        content["order"] = order
    return StateEntry("$c", msgspec.json.encode({"content": content, "origin_server_ts": ts}))


def test_children_order() -> None:
    children = [
        ("!none-late:x", _child(None, 5)),
        ("!b:x", _child("b", 9)),
        ("!bad-order:x", _child("\u00e9", 1)),
        ("!long-order:x", _child("a" * 51, 2)),
        ("!int-order:x", _child(3, 3)),
        ("!a:x", _child("a", 9)),
        ("!none-early:x", _child(None, 1)),
        ("!tie-b:x", _child(None, 4)),
        ("!tie-a:x", _child(None, 4)),
    ]
    ordered = [k for k, e in sorted(children, key=lambda c: child_order(*c))]
    assert ordered == ["!a:x", "!b:x", "!bad-order:x", "!none-early:x", "!long-order:x",
                       "!int-order:x", "!tie-a:x", "!tie-b:x", "!none-late:x"]


@pytest.mark.parametrize(("name", "body"), [
    ("bulk_state_content", {"room_ids": ["!a:x"] * 10_001, "state_tuples": [["t", ""]]}),
    ("bulk_state_content", {"room_ids": ["!a:x"], "state_tuples": [["", ""]]}),
    ("room_hierarchy", {"room_id": "!a:x", "limit": 0}),
    ("room_hierarchy", {"room_id": "!a:x", "max_depth": -1}),
    ("room_hierarchy", {"room_id": "!a:x", "from": "99999"}),
    ("rooms_for_user", {"user_id": ""}),
    ("shared_users", {"user_id": "@a:x", "other_user_ids": ["@b:x"] * 10_001}),
    ("server_banned_from_room", {"room_id": "!a:x"}),
])
async def test_bad_requests(name: str, body: dict[str, Any]) -> None:
    with pytest.raises(QueryFailed) as err:
        await ask(MemoryHomeserver(), name, body)
    assert err.value.code == "bad_request"


async def test_empty_asks_are_empty_answers() -> None:
    store = MemoryHomeserver()
    assert await ask(store, "bulk_state_content", {"room_ids": [], "state_tuples": [["t", ""]]}) == {
        "rooms": {}
    }
    assert m.HOMESERVER_QUERIES["rooms_for_user"][0] is m.RoomsForUserRequest
