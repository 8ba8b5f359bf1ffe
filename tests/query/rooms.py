"""A small in-memory `QueryStore` and a hand-built room for handler and service tests.

The PostgreSQL adapter is tested end to end in `test_e2e.py`; this store lets the handlers'
rules (wildcards, errors, resolution at forks, history visibility, missing events) be pinned
down without the pipeline, against state given explicitly by the test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from worker.core.events import Event, StateKey
from worker.core.redaction import redact
from worker.core.versions import rules_for
from worker.query.handlers import filter_state
from worker.query.ports import QueryEvent, StateFilter
from worker.query.visibility import member_keys_of_server

ROOM = "!room:a.test"
ALICE = "@alice:a.test"
BOB = "@bob:b.test"
CAROL = "@carol:c.test"


class MemoryStore:
    """Events with their state before, as a test declares them."""

    def __init__(self, room_id: str, version: str) -> None:
        rules = rules_for(version)
        assert rules is not None
        self.rules = rules
        self.room_id = room_id
        self.version = version
        self.stored: dict[str, QueryEvent] = {}
        self.before: dict[str, dict[StateKey, str]] = {}
        self.current: dict[StateKey, str] = {}
        self.latest: list[str] = []
        self.ts = 1000
        # What a real store is given, event by event, in order: the PDU as first input, and
        # the extremities after it (for writing the same room into PostgreSQL).
        self.order: list[str] = []
        self.originals: dict[str, dict[str, Any]] = {}
        self.latest_at: dict[str, list[str]] = {}

    def add(
        self,
        event_id: str,
        type_: str,
        sender: str,
        content: dict[str, Any],
        *,
        state_key: str | None = None,
        prevs: Sequence[str] | None = None,
        auth: Sequence[str] = (),
        outcome: str = "accepted",
        state_before: dict[StateKey, str] | None = None,
        redacts: str | None = None,
    ) -> str:
        prevs = list(self.latest if prevs is None else prevs)
        depth = max((self.stored[p].event.depth for p in prevs), default=0) + 1
        self.ts += 1
        pdu: dict[str, Any] = {
            "room_id": self.room_id,
            "type": type_,
            "sender": sender,
            "content": content,
            "prev_events": prevs,
            "auth_events": list(auth),
            "depth": depth,
            "origin_server_ts": self.ts,
            "hashes": {"sha256": "x"},
            "signatures": {},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            pdu["redacts"] = redacts
        if state_before is None:
            assert len(prevs) <= 1, "give the state before a merge explicitly"
            state_before = self.after(prevs[0]) if prevs else {}
        ev = Event(pdu, event_id, self.rules)
        self.stored[event_id] = self._query_event(ev, outcome)
        self.before[event_id] = dict(state_before)
        # The room moves forward: the new event replaces its prevs as an extremity.
        self.latest = sorted((set(self.latest) - set(prevs)) | {event_id})
        self.current = self.after(event_id)
        self.order.append(event_id)
        self.originals[event_id] = pdu
        self.latest_at[event_id] = list(self.latest)
        if redacts is not None and redacts in self.stored and outcome == "accepted":
            old = self.stored[redacts]
            pdu2 = redact(old.event.pdu, self.rules)
            self.stored[redacts] = self._query_event(
                Event(pdu2, redacts, self.rules), old.outcome, redacted=True
            )
        return event_id

    def _query_event(self, ev: Event, outcome: str, redacted: bool = False) -> QueryEvent:
        return QueryEvent(
            event_id=ev.event_id,
            json=msgspec.json.encode(ev.pdu),
            rules=self.rules,
            room_id=ev.room_id,
            depth=ev.depth,
            outcome=outcome,
            has_state=True,
            redacted=redacted,
            membership=ev.membership if ev.type == "m.room.member" else None,
            event=ev,
        )

    def after(self, event_id: str) -> dict[StateKey, str]:
        state = dict(self.before[event_id])
        ev = self.stored[event_id]
        if ev.event.state_tuple is not None and ev.outcome == "accepted":
            state[ev.event.state_tuple] = event_id
        return state

    # --- QueryStore -----------------------------------------------------------------------

    async def room_version(self, room_id: str) -> str | None:
        return self.version if room_id == self.room_id else None

    async def events(self, event_ids: Sequence[str]) -> dict[str, QueryEvent]:
        return {i: self.stored[i] for i in event_ids if i in self.stored}

    async def extremities(self, room_id: str) -> list[str]:
        return list(self.latest) if room_id == self.room_id else []

    async def current_state(self, room_id: str, keys: StateFilter) -> dict[StateKey, str]:
        return filter_state(self.current, keys) if room_id == self.room_id else {}

    async def state_after(
        self, event_ids: Sequence[str], keys: StateFilter
    ) -> dict[str, dict[StateKey, str]]:
        return {i: filter_state(self.after(i), keys) for i in event_ids if i in self.before}

    async def state_before(
        self, event_ids: Sequence[str], keys: StateFilter
    ) -> dict[str, dict[StateKey, str]]:
        return {i: filter_state(self.before[i], keys) for i in event_ids if i in self.before}

    async def auth_chain(self, event_ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        todo = [a for i in event_ids if i in self.stored for a in self.stored[i].event.auth_event_ids]
        while todo:
            i = todo.pop()
            if i in out or i not in self.stored:
                continue
            out.add(i)
            todo.extend(self.stored[i].event.auth_event_ids)
        return out

    async def server_joined(self, room_id: str, server_name: str) -> bool:
        keys = member_keys_of_server(self.current, server_name) if room_id == self.room_id else []
        return any(self.stored[self.current[k]].event.membership == "join" for k in keys)

    async def ever_joined(self, room_id: str, user_id: str) -> bool:
        return any(
            e.outcome == "accepted"
            and e.event.type == "m.room.member"
            and e.event.state_key == user_id
            and e.event.membership == "join"
            for e in self.stored.values()
        )


def build_room(version: str = "10") -> MemoryStore:
    """create, alice joins, power levels, public join rules, shared history, bob joins,
    a message, a fork of two topics merged by a message, history `joined`, bob leaves, a
    message bob's server may not see, a redaction of the first message, carol invited."""
    s = MemoryStore(ROOM, version)
    s.add("$create", "m.room.create", ALICE, {"creator": ALICE, "room_version": version}, state_key="")
    s.add("$a_join", "m.room.member", ALICE, {"membership": "join"}, state_key=ALICE, auth=["$create"])
    base = ["$create", "$a_join"]
    s.add(
        "$pl",
        "m.room.power_levels",
        ALICE,
        {"users": {ALICE: 100}, "users_default": 0, "state_default": 50, "events_default": 0},
        state_key="",
        auth=base,
    )
    base = ["$create", "$a_join", "$pl"]
    s.add("$jr", "m.room.join_rules", ALICE, {"join_rule": "public"}, state_key="", auth=base)
    s.add("$hv1", "m.room.history_visibility", ALICE, {"history_visibility": "shared"}, state_key="", auth=base)
    s.add("$b_join", "m.room.member", BOB, {"membership": "join"}, state_key=BOB, auth=["$create", "$pl", "$jr"])
    s.add("$m1", "m.room.message", BOB, {"body": "hello", "msgtype": "m.text"}, auth=["$create", "$pl", "$b_join"])
    s.add("$t1", "m.room.topic", ALICE, {"topic": "one"}, state_key="", prevs=["$m1"], auth=base)
    s.add("$t2", "m.room.topic", ALICE, {"topic": "two"}, state_key="", prevs=["$m1"], auth=base)
    merged = s.after("$t2")
    s.add("$merge", "m.room.message", ALICE, {"body": "merge", "msgtype": "m.text"}, prevs=["$t1", "$t2"], auth=base, state_before=merged)
    s.add("$hv2", "m.room.history_visibility", ALICE, {"history_visibility": "joined"}, state_key="", auth=base)
    s.add("$b_leave", "m.room.member", BOB, {"membership": "leave"}, state_key=BOB, auth=["$create", "$pl", "$b_join"])
    s.add("$m2", "m.room.message", ALICE, {"body": "secret", "msgtype": "m.text"}, auth=base)
    s.add("$red", "m.room.redaction", ALICE, {}, redacts="$m1", auth=base)
    s.add("$c_invite", "m.room.member", ALICE, {"membership": "invite"}, state_key=CAROL, auth=base)
    return s
