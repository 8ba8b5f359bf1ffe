"""`room_hierarchy`: the rooms of a space and of its sub-spaces, as `/hierarchy` lists them.

Spec: https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidhierarchy
and "Spaces" (`m.space.child`). We walk as Synapse's `RoomSummaryHandler` walks
(`handlers/room_summary.py`), so that clients see the same order from either server:

- depth first from the root: a room's children go on a stack in reverse of the spec's order
  (a valid `order` string first, ascending; then the child event's `origin_server_ts`; then
  the child's room ID), so the next room visited is the first child;
- a room is visited once (a space that contains itself, or two spaces that contain each
  other, are listed once, and the walk ends);
- only an `m.space.child` whose `via` is a non-empty list of strings is a child; with
  `suggested_only`, only one whose `suggested` is `true`; only spaces (create event `type`
  `m.space`) have their children listed and walked;
- a room the asker may not see is left out, and so are its children: it may be seen when its
  join rule is `public` (or `knock`, `knock_restricted` where the room version has them), its
  history is `world_readable`, the asker is joined or invited, or its join rule is restricted
  and the asker is joined to an allowed room (Synapse `_is_local_room_accessible`);
- rooms this server does not know are left out (the federation API summarises those).

Pages are stateless: `next_batch` is the number of rooms already listed, and a page walks
again from the root, skipping them. A walk is bounded by `MAX_WALK` listed rooms.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from worker.core.events import StateKey
from worker.core.versions import RoomRules, rules_for
from worker.messages import query_homeserver as m
from worker.query.handlers import QueryFailed
from worker.query.homeserver_ports import WILDCARD, Homeserver, RoomState, StateEntry

MAX_LIMIT = 1_000
MAX_WALK = 10_000
# Rooms summarised per round of reads: the next ones on the stack come along.
_BATCH = 50

SPACE_CHILD = "m.space.child"
_KEYS: list[StateKey] = [
    ("m.room.create", ""),
    ("m.room.name", ""),
    ("m.room.topic", ""),
    ("m.room.avatar", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.join_rules", ""),
    ("m.room.guest_access", ""),
    ("m.room.history_visibility", ""),
    (SPACE_CHILD, WILDCARD),
]
# An `order` may only hold printable ASCII (space to `~`), at most 50 characters.
_BAD_ORDER = re.compile(r"[^\x20-\x7E]")


def _text(content: dict[str, Any], key: str) -> str:
    value = content.get(key)
    return value if isinstance(value, str) else ""


def _valid_via(content: dict[str, Any]) -> bool:
    via = content.get("via")
    return isinstance(via, list) and bool(via) and all(isinstance(v, str) for v in via)


def allowed_room_ids(join_rules_content: dict[str, Any]) -> list[str]:
    """The `allow` entries of type `m.room_membership` with a string `room_id`, in order;
    anything else in the list is ignored, as the spec says (restricted rooms)."""
    allow = join_rules_content.get("allow")
    if not isinstance(allow, list):
        return []
    out: list[str] = []
    for entry in allow:
        if (
            isinstance(entry, dict)
            and entry.get("type") == "m.room_membership"
            and isinstance(entry.get("room_id"), str)
            and entry["room_id"] not in out
        ):
            out.append(entry["room_id"])
    return out


def child_order(state_key: str, entry: StateEntry) -> tuple[bool, str, int, str]:
    """The spec's order of children: valid `order` first (ascending), then the child
    event's `origin_server_ts`, then the child's room ID."""
    order = entry.content.get("order")
    if not isinstance(order, str) or len(order) > 50 or _BAD_ORDER.search(order):
        order = None
    return order is None, order or "", entry.origin_server_ts, state_key


@dataclass
class _Room:
    room_id: str
    rules: RoomRules | None
    state: dict[StateKey, StateEntry]
    joined: int
    children: list[tuple[str, StateEntry]] = field(default_factory=list)

    def content(self, event_type: str) -> dict[str, Any]:
        entry = self.state.get((event_type, ""))
        return entry.content if entry is not None else {}

    @property
    def join_rule(self) -> str:
        return _text(self.content("m.room.join_rules"), "join_rule")

    @property
    def is_space(self) -> bool:
        return self.content("m.room.create").get("type") == "m.space"

    def restricted(self) -> bool:
        rules, rule = self.rules, self.join_rule
        if rules is None:
            return False
        return (rules.restricted_join_rule and rule == "restricted") or (
            rules.knock_restricted_join_rule and rule == "knock_restricted"
        )

    def allowed_rooms(self) -> list[str]:
        return allowed_room_ids(self.content("m.room.join_rules")) if self.restricted() else []

    def summary(self) -> m.HierarchyRoom:
        create = self.content("m.room.create")
        history = _text(self.content("m.room.history_visibility"), "history_visibility")
        return m.HierarchyRoom(
            room_id=self.room_id,
            room_type=_text(create, "type"),
            name=_text(self.content("m.room.name"), "name"),
            topic=_text(self.content("m.room.topic"), "topic"),
            avatar_url=_text(self.content("m.room.avatar"), "url"),
            canonical_alias=_text(self.content("m.room.canonical_alias"), "alias"),
            join_rule=self.join_rule,
            world_readable=history == "world_readable",
            guest_can_join=_text(self.content("m.room.guest_access"), "guest_access") == "can_join",
            num_joined_members=self.joined,
            allowed_room_ids=self.allowed_rooms(),
            children_state=[_stripped(key, e) for key, e in self.children],
        )


def _stripped(state_key: str, entry: StateEntry) -> msgspec.Raw:
    return msgspec.Raw(
        msgspec.json.encode(
            {
                "type": SPACE_CHILD,
                "state_key": state_key,
                "content": entry.raw_content,
                "sender": entry.sender,
                "origin_server_ts": entry.origin_server_ts,
            }
        )
    )


class _Walk:
    """Summaries read in batches, and who may see them, for one request."""

    def __init__(self, hs: Homeserver, req: m.RoomHierarchyRequest) -> None:
        self.hs = hs
        self.req = req
        self.rooms: dict[str, _Room | None] = {}
        keys = list(_KEYS)
        if req.user_id:
            keys.append(("m.room.member", req.user_id))
        self.keys = keys

    async def load(self, room_ids: Sequence[str]) -> None:
        wanted = sorted({r for r in room_ids if r not in self.rooms})
        if not wanted:
            return
        states = await self.hs.store.current_state(wanted, self.keys)
        counts = await self.hs.store.joined_counts(sorted(states))
        for room_id in wanted:
            state = states.get(room_id)
            self.rooms[room_id] = self._room(room_id, state, counts.get(room_id, 0))

    def _room(self, room_id: str, state: RoomState | None, joined: int) -> _Room | None:
        if state is None or not state.entries:
            return None
        room = _Room(room_id, rules_for(state.version), state.entries, joined)
        if room.is_space:
            kids = [
                (key[1], e)
                for key, e in state.entries.items()
                if key[0] == SPACE_CHILD and key[1] and _valid_via(e.content)
            ]
            if self.req.suggested_only:
                kids = [(k, e) for k, e in kids if e.content.get("suggested") is True]
            room.children = sorted(kids, key=lambda c: child_order(*c))
        return room

    async def visible(self, room: _Room) -> bool:
        rules, rule = room.rules, room.join_rule
        if rules is None:
            return False
        if rule == "public" or (rules.knock and rule == "knock"):
            return True
        if rules.knock_restricted_join_rule and rule == "knock_restricted":
            return True
        history = _text(room.content("m.room.history_visibility"), "history_visibility")
        if history == "world_readable":
            return True
        user = self.req.user_id
        if not user:
            return False
        member = room.state.get(("m.room.member", user))
        if member is not None and member.content.get("membership") in ("join", "invite"):
            return True
        allowed = room.allowed_rooms()
        if not allowed:
            return False
        memberships = await self.hs.store.memberships_of(user, allowed)
        return any(v == "join" for v in memberships.values())


def _offset(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise QueryFailed("bad_request", f"from: not a token of this query: {token!r}")
    return int(token)


async def room_hierarchy(hs: Homeserver, req: m.RoomHierarchyRequest) -> m.RoomHierarchyResponse:
    if not req.room_id:
        raise QueryFailed("bad_request", "room_id is required")
    if not 1 <= req.limit <= MAX_LIMIT:
        raise QueryFailed("bad_request", f"limit must be within 1..{MAX_LIMIT}")
    if req.max_depth is not None and req.max_depth < 0:
        raise QueryFailed("bad_request", "max_depth must not be negative")
    skip = _offset(req.from_)
    if skip + req.limit > MAX_WALK:
        raise QueryFailed("bad_request", f"a hierarchy is listed up to {MAX_WALK} rooms")
    walk = _Walk(hs, req)
    await walk.load([req.room_id])
    if walk.rooms.get(req.room_id) is None:
        known = await hs.store.current_state([req.room_id], [])
        if req.room_id not in known:
            raise QueryFailed("not_found", f"unknown room {req.room_id}")
    stack: list[tuple[str, int]] = [(req.room_id, 0)]
    done: set[str] = set()
    listed = 0
    out: list[m.HierarchyRoom] = []
    while stack and len(out) < req.limit:
        room_id, depth = stack.pop()
        if room_id in done:
            continue
        done.add(room_id)
        if room_id not in walk.rooms:
            # This room and the next ones on the stack, in one round of reads.
            await walk.load([room_id, *(r for r, _ in stack[-_BATCH:])])
        room = walk.rooms[room_id]
        if room is None or not await walk.visible(room):
            continue
        listed += 1
        if listed > skip:
            out.append(room.summary())
        if req.max_depth is None or depth < req.max_depth:
            stack.extend((child, depth + 1) for child, _ in reversed(room.children))
    more = await _any_listable(walk, stack, done)
    return m.RoomHierarchyResponse(rooms=out, next_batch=str(listed) if more else "")


async def _any_listable(walk: _Walk, stack: list[tuple[str, int]], done: set[str]) -> bool:
    """Is a room left to list? (Then the page has a `next_batch`: never one that leads to an
    empty page.) Rooms that would be left out are dropped from the top of the stack."""
    while stack:
        room_id = stack[-1][0]
        if room_id not in done:
            if room_id not in walk.rooms:
                await walk.load([r for r, _ in stack[-_BATCH:]])
            room = walk.rooms[room_id]
            if room is not None and await walk.visible(room):
                return True
        done.add(room_id)
        stack.pop()
    return False
