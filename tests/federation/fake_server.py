"""A fake federation service that also serves the performs' verbs: `make_join`, `send_join`,
`make_leave`, `send_leave`, `invite`, `backfill`, `query_directory`, beside the gap-filling ones of
`FakeFederation` (which it extends).

It stands for the federation service relaying other servers' answers about one room built
with `RoomBuilder(real_ids=True)`: real event IDs and content hashes, every PDU signed with
the resident server's ed25519 key (`worker.core.signing`). Knobs:

- `down`: servers that cannot be reached (the service answers `error_code: unreachable`);
- `garbage`: server -> a way to spoil its answers (see `GARBAGE`);
- `countersigner`: the key that countersigns invites (the invitee's server);
- `directory`: alias -> (room ID, servers), what `query_directory` answers (`not_found` for
  an alias not listed).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nacl.signing import SigningKey
from nats.aio.msg import Msg

from tests.federation.conftest import FakeFederation, enc
from tests.fixtures.builder import RoomBuilder
from worker.core.auth import auth_types_for_event
from worker.core.events import Event
from worker.core.hashes import compute_event_id
from worker.core.signing import ServerKey, hash_and_sign
from worker.core.versions import rules_for

PERFORM_VERBS = (
    "make_join", "send_join", "make_leave", "send_leave", "invite", "backfill", "query_directory",
)
# Ways a server can answer garbage, each refused by the roomserver with its own reason.
GARBAGE = (
    "undecodable",  # the answer is not JSON
    "template_wrong_room",  # make_join's template is for another room
    "template_other_user",  # make_join's template joins someone else
    "template_wrong_type",  # make_join's template is not a member event
    "bad_hash",  # an event of the state has content its hash does not cover
    "missing_auth",  # the auth chain lacks an event the state cites
    "wrong_room_state",  # an event of another room in the state
    "wrong_event",  # send_join answers with another event than our join
    "unsupported_version",  # make_join names a room version nobody knows
    "no_countersignature",  # invite answered without the invitee server's signature
)


def server_key(name: str, seed: int = 7) -> ServerKey:
    return ServerKey(server_name=name, version="fake", key=SigningKey(bytes([seed]) * 32))


def signed_copy(pdu: dict[str, Any], b: RoomBuilder, key: ServerKey) -> dict[str, Any]:
    """The PDU signed by `key`'s server (its ID and content hash do not change)."""
    body = {k: v for k, v in pdu.items() if k not in ("signatures", "event_id")}
    body["signatures"] = {}
    signed = hash_and_sign(body, b.rules, key)
    if "event_id" in pdu:
        signed["event_id"] = pdu["event_id"]
    return signed


@dataclass
class FakeRemote(FakeFederation):
    """See the module docstring. `room` is the room the resident servers hold."""

    room: RoomBuilder | None = None
    key: ServerKey = field(default_factory=lambda: server_key("test"))
    countersigner: ServerKey = field(default_factory=lambda: server_key("elsewhere.test", 9))
    down: set[str] = field(default_factory=set)
    garbage: dict[str, str] = field(default_factory=dict)
    directory: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    # What the resident servers were sent, by verb.
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    signed: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The running state while `host` and `add` walk the room's events.
    _states: dict[tuple[str, str], str] = field(default_factory=dict)

    def host(self, b: RoomBuilder) -> None:
        """Serve `b`'s room: every event signed with the resident's key, and the state
        before each (`state_ids` / `state`), the room being linear."""
        self.room = b
        self.signed = {eid: signed_copy(pdu, b, self.key) for eid, pdu in b.events.items()}
        self.served = self.signed
        self._states = {}
        for eid in b.events:
            self._remember(eid)

    def add(self, event_id: str) -> None:
        """Serve an event built on `room` after `host`."""
        assert self.room is not None
        self.signed[event_id] = signed_copy(self.room.events[event_id], self.room, self.key)
        self._remember(event_id)

    def _remember(self, event_id: str) -> None:
        """The state before `event_id`: the one after the events built before it."""
        self.state_before[event_id] = sorted(self._states.values())
        pdu = self.signed[event_id]
        if "state_key" in pdu:
            self._states[(pdu["type"], pdu["state_key"])] = event_id

    async def start(self) -> None:
        await super().start()
        for verb in PERFORM_VERBS:
            self.subs.append(await self.nc.subscribe(f"{self.prefix}.{verb}", cb=self._perform))

    async def _perform(self, msg: Msg) -> None:
        verb = msg.subject.rsplit(".", 1)[1]
        self.asked.append(verb)
        req = msgspec.json.decode(msg.data)
        self.received.setdefault(verb, []).append(req)
        server = req.get("destination", "")
        if server in self.down:
            await msg.respond(enc({"error_code": "unreachable", "error": f"{server} is down"}))
            return
        spoil = self.garbage.get(server, "")
        if spoil == "undecodable":
            await msg.respond(b"<html>502 Bad Gateway</html>")
            return
        answer = getattr(self, f"_{verb}")(req, spoil)
        await msg.respond(enc(answer))

    # -- the verbs ---------------------------------------------------------------------------

    def _template(self, user_id: str, membership: str) -> dict[str, Any]:
        b = self.room
        assert b is not None
        pdu: dict[str, Any] = {
            "type": "m.room.member", "room_id": b.room_id, "sender": user_id,
            "state_key": user_id, "content": {"membership": membership},
            "origin_server_ts": 2_000_000, "origin": self.key.server_name,
            "depth": 1 + max(b.events[p]["depth"] for p in b.latest),
        }
        probe = Event(pdu, "", b.rules)
        auth = [b.state[k] for k in auth_types_for_event(probe) if k in b.state]
        refs = b._refs
        pdu["prev_events"] = refs(b.latest)
        pdu["auth_events"] = refs(auth)
        return pdu

    def _make_join(self, req: dict[str, Any], spoil: str) -> dict[str, Any]:
        assert self.room is not None
        template = self._template(req["user_id"], "join")
        if spoil == "template_wrong_room":
            template["room_id"] = "!elsewhere:test"
        elif spoil == "template_other_user":
            template["state_key"] = template["sender"] = "@someone:hs.test"
        elif spoil == "template_wrong_type":
            template["type"] = "m.room.message"
        version = "99" if spoil == "unsupported_version" else self.room.version
        return {"room_version": version, "event": template}

    def _send_join(self, req: dict[str, Any], spoil: str) -> dict[str, Any]:
        b = self.room
        assert b is not None
        state_ids = sorted(b.state.values())
        chain_ids = sorted(self.auth_chain(state_ids) - set(state_ids))
        state = [self.signed[e] for e in state_ids]
        chain = [self.signed[e] for e in chain_ids]
        event = req["event"]
        if spoil == "bad_hash":
            state = copy.deepcopy(state)
            victim = next(p for p in state if p["type"] == "m.room.join_rules")
            victim["content"] = {"join_rule": "public", "sneaked": True}
        elif spoil == "missing_auth":
            state = [p for p in state if p["type"] != "m.room.power_levels"]
            chain = [p for p in chain if p["type"] != "m.room.power_levels"]
        elif spoil == "wrong_room_state":
            other = RoomBuilder(b.version, room_id="!elsewhere:test", real_ids=True)
            other.create("alice")
            stray = other.join("alice")
            state = [signed_copy(other.events[stray], other, self.key), *state]
        elif spoil == "wrong_event":
            event = {**event, "content": {"membership": "join", "displayname": "not yours"}}
        return {"origin": req["destination"], "state": state, "auth_chain": chain, "event": event}

    def _make_leave(self, req: dict[str, Any], spoil: str) -> dict[str, Any]:
        assert self.room is not None
        template = self._template(req["user_id"], "leave")
        if spoil == "template_other_user":
            template["state_key"] = template["sender"] = "@someone:hs.test"
        return {"room_version": self.room.version, "event": template}

    def _send_leave(self, req: dict[str, Any], spoil: str) -> dict[str, Any]:
        return {}

    def _invite(self, req: dict[str, Any], spoil: str) -> dict[str, Any]:
        pdu = req["event"]
        if spoil == "no_countersignature":
            return {"event": pdu}
        rules = rules_for(req["room_version"])
        assert rules is not None
        body = {k: v for k, v in pdu.items() if k != "event_id"}
        countersigned = hash_and_sign(body, rules, self.countersigner)
        assert compute_event_id(countersigned, rules) == req["event_id"] or rules.reference_pairs
        return {"event": countersigned}

    def _query_directory(self, req: dict[str, Any], spoil: str) -> dict[str, Any]:
        """Spec /query/directory: the alias's room ID and servers in the room."""
        found = self.directory.get(req["room_alias"])
        if found is None:
            return {"error_code": "not_found", "error": "Room alias not found"}
        return {"room_id": found[0], "servers": found[1]}

    def _backfill(self, req: dict[str, Any], spoil: str) -> dict[str, Any]:
        """Spec /backfill: the events given and those before them, breadth first by
        prev_events, at most `limit`, newest first."""
        limit = req["limit"]
        seen: set[str] = set()
        frontier = [e for e in req["event_ids"] if e in self.signed]
        found: list[str] = []
        while frontier and len(found) < limit:
            nxt: list[str] = []
            for e in frontier:
                if e in seen or len(found) >= limit:
                    continue
                seen.add(e)
                found.append(e)
                nxt.extend(_refs(self.signed[e]["prev_events"]))
            frontier = [e for e in nxt if e in self.signed]
        return {"origin": req["destination"], "pdus": [self.signed[e] for e in found]}


def _refs(refs: list[Any]) -> list[str]:
    return [r[0] if isinstance(r, list) else r for r in refs]


__all__ = ["GARBAGE", "PERFORM_VERBS", "FakeRemote", "server_key", "signed_copy"]
