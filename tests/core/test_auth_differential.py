"""Differential test: our auth rules against Synapse's `synapse.event_auth`, rooms v1 to v12.

Random rooms are grown event by event (random memberships, power level changes, join rules,
third-party invites, state, messages, redactions, aliases) from a fixed seed. Every candidate
event is judged by `check_auth` (and `check_auth_event_list`) and by Synapse's
`check_state_dependent_auth_rules` (create events: Synapse's `_check_create`, the part of
`check_state_independent_auth_rules` that applies to them, which needs no store); the verdicts
must agree. Accepted state events join the room state, so later events meet realistic state.
The auth event selections are compared too.

Where Synapse reads the spec differently, we read it as Synapse does, because two servers
that disagree on an event split the room (docs/interop.md has the table); those cases are
generated and compared like any other:

1. `m.federate`: any value but `true` keeps other servers out, and a membership event whose
   target is on another server than the creator's is refused too (`federate_values`).
2. Power levels events with a state key other than "" are compared with the previous event
   of that state key, which is never among the auth events (`step`, roll 0.60-0.64).
3. Third-party invite signatures: only the first ed25519 signature listed counts
   (`third_party_content` lists one, two or three, good and bad in random order).
4. v1-v9 power levels that are JSON booleans are 1 and 0 (`level`).

Left out, because Synapse gives no verdict to compare (it raises where we reject; see
docs/interop.md):

5. v1-v9 power levels that are neither integers, integer strings, booleans nor (v1-v5)
   floats: Synapse raises TypeError/ValueError while comparing. Not generated.
6. Synapse's state-independent checks index `signed["token"]` of a third-party invite
   without a guard (KeyError), and raise RuntimeError (not AuthError) for a v12 event that
   lists the create event; the first has no verdict to compare, the second counts as a
   rejection.

Rule 5.2 (v8+, the authorising server's signature on a restricted join) is outside
`check_state_dependent_auth_rules`; the builder signs for the authorising server.

`ROOMSERVER_FUZZ_DAGS` (see `make fuzz`) scales the number of rooms per version.
"""

from __future__ import annotations

import base64
import copy
import functools
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from nacl.signing import SigningKey
from synapse.api.errors import SynapseError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.event_auth import (
    _check_create,
    check_state_dependent_auth_rules,
    check_state_independent_auth_rules,
)
from synapse.event_auth import (
    auth_types_for_event as synapse_auth_types,
)
from synapse.events import EventBase, make_event_from_dict

from tests.fixtures.builder import RoomBuilder
from worker.core.auth import (
    PowerLevels,
    auth_types_for_event,
    check_auth,
    check_auth_event_list,
)
from worker.core.canonical import encode_canonical
from worker.core.events import Event

ROOMS_PER_VERSION = int(os.environ.get("ROOMSERVER_FUZZ_DAGS", "0")) // 12 or 20
EVENTS_PER_ROOM = 90
LOCAL = ["@alice:test", "@bob:test", "@carol:test"]
REMOTE = ["@dave:other.example", "@erin:other.example"]
USERS = LOCAL + REMOTE
GOOD_KEY = SigningKey(b"\x01" * 32)
BAD_KEY = SigningKey(b"\x02" * 32)
TOKENS = ["tokA", "tokB"]
# Restricted rules twice: joins through them need several preconditions to meet.
JOIN_RULES = [
    *("public", "invite", "knock", "private"),
    *("restricted", "restricted", "knock_restricted", "knock_restricted"),
]
EVENT_TYPES = ["m.room.topic", "m.room.message", "m.room.power_levels", "m.room.join_rules"]


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


class Room:
    """One random room: our builder plus the same events as Synapse objects."""

    def __init__(self, version: str, rng: random.Random, name: str = "room") -> None:
        self.version = version
        self.rv = KNOWN_ROOM_VERSIONS[version]
        self.rng = rng
        self.creator = rng.choice(["@alice:test", "@alice:test", "@dave:other.example"])
        room_id = f"!{name}:" + self.creator.split(":", 1)[1]
        self.b = RoomBuilder(version, room_id=room_id, event_id_fn=self._synapse_id)
        self.rules = self.b.rules
        self.syn: dict[str, EventBase] = {}
        self.compared = 0

    def _to_synapse(self, pdu: dict[str, Any]) -> EventBase:
        data = copy.deepcopy(pdu)
        if not self.rules.reference_pairs:
            data.pop("event_id", None)
        return make_event_from_dict(data, self.rv)

    def _synapse_id(self, pdu: dict[str, Any]) -> str:
        return self._to_synapse(pdu).event_id

    # -- judging -------------------------------------------------------------------------

    def judge(self, eid: str, compare: bool = True) -> bool:
        """Both verdicts on a freshly built event; apply it to state when accepted."""
        b = self.b
        ev = b.event(eid)
        syn_ev = self._to_synapse(b.events[eid])
        assert syn_ev.event_id == eid
        self.syn[eid] = syn_ev
        listed = [b.event(a) for a in ev.auth_event_ids]
        assert check_auth_event_list(ev, listed) is None, eid
        ours = check_auth(ev, b.auth_map(eid))
        if ev.type == "m.room.create":
            theirs = _synapse_verdict(lambda: _check_create(syn_ev))
        else:
            auth = [self.syn[a] for a in ev.auth_event_ids]
            if self.rules.room_id_from_create_event:
                auth.append(self.syn[b.state[("m.room.create", "")]])
            theirs = _synapse_verdict(lambda: check_state_dependent_auth_rules(syn_ev, auth))
            self.compare_selection(ev, syn_ev)
        if compare:
            self.compared += 1
            assert (ours is None) == (theirs is None), (
                f"v{self.version} {ev.type} {b.events[eid]['content']} sender={ev.sender} "
                f"state_key={ev.state_key}: ours={ours} synapse={theirs}"
            )
        if ours is None and ev.state_key is not None:
            b.state[(ev.type, ev.state_key)] = eid
        return ours is None

    def compare_selection(self, ev: Any, syn_ev: EventBase) -> None:
        signed = ev.content.get("third_party_invite", {}).get("signed", {})
        if ev.membership == "invite" and "token" not in signed:
            return  # Synapse raises KeyError on a `signed` without a token; we select nothing.
        mine = set(auth_types_for_event(ev))
        expected = synapse_auth_types(self.rv, syn_ev)
        if self.rules.room_id_from_create_event:
            expected.discard(("m.room.create", ""))
        assert mine == expected, (ev.event_id, mine, expected)

    # -- generating ----------------------------------------------------------------------

    def level(self) -> Any:
        rng = self.rng
        n = rng.choice([0, 0, 10, 25, 50, 50, 75, 100, 100, 101, -5])
        if not self.rules.integer_power_levels and rng.random() < 0.2:
            return rng.choice([f"{n}", f" {n} ", f"+{n}" if n >= 0 else f"{n}", f"00{abs(n)}"])
        if not self.rules.strict_canonical_json and rng.random() < 0.1:
            return n + 0.75
        if self.rules.integer_power_levels and rng.random() < 0.08:
            return rng.choice([f"{n}", True])  # not an integer in v10+: both reject
        if not self.rules.integer_power_levels and rng.random() < 0.05:
            return rng.choice([True, False])  # 1 and 0 in v1-v9, as Synapse reads them
        return n

    def creators(self) -> set[str]:
        create = self.b.event(self.b.state[("m.room.create", "")])
        found = {create.sender}
        if self.rules.privileged_creators:
            found.update(create.content.get("additional_creators", []))
        return found

    def pl_content(self) -> dict[str, Any]:
        rng = self.rng
        current = self.b.state.get(("m.room.power_levels", ""))
        content = copy.deepcopy(self.b.events[current]["content"]) if current else {}
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.45:
                users = content.setdefault("users", {})
                user = rng.choice(USERS)
                if (
                    self.rules.privileged_creators
                    and user in self.creators()
                    and rng.random() < 0.8
                ):
                    continue
                if rng.random() < 0.2:
                    users.pop(user, None)
                else:
                    users[user] = self.level()
                if rng.random() < 0.02:
                    users[rng.choice(["notauser", "@nocolon"])] = 50  # invalid user ID
            elif op < 0.75:
                name = rng.choice(
                    [
                        "ban",
                        "kick",
                        "redact",
                        "invite",
                        "users_default",
                        "events_default",
                        "state_default",
                    ]
                )
                if rng.random() < 0.2:
                    content.pop(name, None)
                else:
                    content[name] = self.level()
            elif op < 0.92:
                events = content.setdefault("events", {})
                key = rng.choice(EVENT_TYPES)
                if rng.random() < 0.2:
                    events.pop(key, None)
                else:
                    events[key] = self.level()
            else:
                notifications = content.setdefault("notifications", {})
                notifications["room"] = self.level()
        return content

    def third_party_content(self, target: str) -> dict[str, Any]:
        rng = self.rng
        token = rng.choice(TOKENS)
        signed: dict[str, Any] = {
            "mxid": target if rng.random() < 0.9 else rng.choice(USERS),
            "token": token,
        }
        message = encode_canonical(signed)
        # One to three signatures, good and bad in random order: only the first counts.
        signatures: dict[str, Any] = {}
        for server in rng.sample(["id.example", "aaa.example", "zzz.example"], rng.randint(1, 3)):
            key = GOOD_KEY if rng.random() < 0.6 else BAD_KEY
            signatures[server] = {"ed25519:0": _b64(key.sign(message).signature)}
        signed["signatures"] = signatures
        if rng.random() < 0.05:
            del signed["token"]
            return {"display_name": "x", "signed": signed}
        return {"display_name": "x", "signed": signed}

    def step(self) -> None:
        rng, b = self.rng, self.b
        joined = [
            u
            for u in USERS
            if (e := b.state.get(("m.room.member", u))) and b.event(e).membership == "join"
        ]
        sender = rng.choice(joined) if joined and rng.random() < 0.85 else rng.choice(USERS)
        roll = rng.random()
        if joined and rng.random() < 0.6:
            # Power users act more often, so that changes of power actually happen.
            power = PowerLevels.from_auth_events(self.rules, b.state_events())
            top = max(joined, key=power.user_level)
            if roll >= 0.5 or rng.random() < 0.3:
                sender = top
        compare = True
        if roll < 0.5:
            target = sender if rng.random() < 0.45 else rng.choice(USERS)
            membership = rng.choices(
                ["join", "invite", "leave", "ban", "knock", "foo"], [30, 20, 10, 8, 12, 2]
            )[0]
            content: dict[str, Any] = {}
            if membership in ("join", "knock") and rng.random() < 0.6:
                sender = target = rng.choice([u for u in USERS if u not in joined] or USERS)
            if membership == "join" and self.rules.restricted_join_rule and rng.random() < 0.5:
                content["join_authorised_via_users_server"] = rng.choice(
                    joined if joined and rng.random() < 0.6 else USERS
                )
            if membership == "invite" and rng.random() < 0.25:
                content["third_party_invite"] = self.third_party_content(target)
                tpi = b.state.get(
                    (
                        "m.room.third_party_invite",
                        content["third_party_invite"]["signed"].get("token", ""),
                    )
                )
                if tpi is not None and rng.random() < 0.8:
                    sender = b.events[tpi]["sender"]
            eid = b.member(sender, target, membership, apply=False, **content)
        elif roll < 0.60:
            eid = b.power_levels(sender, apply=False, **self.pl_content())
        elif roll < 0.64:
            key = rng.choice(["x", sender])
            eid = b.state_event("m.room.power_levels", key, self.pl_content(), sender, apply=False)
        elif roll < 0.72:
            rule = rng.choice(JOIN_RULES)
            eid = b.join_rules(sender, rule, apply=False)
        elif roll < 0.76:
            content = {"display_name": "x", "key_validity_url": "https://id.example/v"}
            if rng.random() < 0.5:
                content["public_key"] = _b64(bytes(GOOD_KEY.verify_key))
            else:
                content["public_key"] = _b64(bytes(BAD_KEY.verify_key))
                content["public_keys"] = [{"public_key": _b64(bytes(GOOD_KEY.verify_key))}]
            eid = b.state_event(
                "m.room.third_party_invite", rng.choice(TOKENS), content, sender, apply=False
            )
        elif roll < 0.84:
            eid = b.message(sender)
        elif roll < 0.89:
            eid = b.topic(sender, apply=False)
        elif roll < 0.93:
            key = rng.choice([sender, rng.choice(USERS), "plain"])
            eid = b.state_event("org.example.status", key, {"s": 1}, sender, apply=False)
        elif roll < 0.97:
            target = rng.choice(list(b.events))
            eid = b.redact(sender, target)
        else:
            key = rng.choice(["test", "other.example", ""])
            eid = b.state_event("m.room.aliases", key, {"aliases": []}, sender, apply=False)
        self.judge(eid, compare)

    def grow(self, steps: int) -> None:
        rng, b = self.rng, self.b
        content: dict[str, Any] = {}
        if rng.random() < 0.1:
            content["m.federate"] = rng.choice([False, False, "no", 0, None])
        if self.rules.privileged_creators and rng.random() < 0.4:
            content["additional_creators"] = ["@bob:test"]
        creator = self.creator
        self.judge(b.create(creator, **content))
        self.judge(b.join(creator))
        # Often start like createRoom does, so that later events meet a populated room.
        if rng.random() < 0.7:
            users = {} if self.rules.privileged_creators else {creator: 100}
            for user in rng.sample(USERS, 2):
                if user != creator and user not in self.creators():
                    users[user] = rng.choice([50, 75, 100])
            self.judge(b.power_levels(creator, users=users, apply=False))
            self.judge(b.join_rules(creator, rng.choice(["public", "invite"]), apply=False))
            for user in rng.sample(USERS, 3):
                self.judge(b.join(user, apply=False))
        for _ in range(steps):
            self.step()


def _synapse_verdict(check: Callable[[], object]) -> str | None:
    try:
        check()
    except SynapseError as exc:  # AuthError is a SynapseError
        return f"{exc.code}: {exc.msg}"
    return None


@pytest.mark.parametrize("version", [str(v) for v in range(1, 13)])
def test_differential_against_synapse(version: str) -> None:
    rng = random.Random(f"auth-differential-{version}")
    total = 0
    for _ in range(ROOMS_PER_VERSION):
        room = Room(version, rng)
        room.grow(EVENTS_PER_ROOM)
        total += room.compared
    assert total >= ROOMS_PER_VERSION * EVENTS_PER_ROOM * 0.9


def test_differential_create_events() -> None:
    """Rule 1 on random create events (Synapse's `_check_create`), every version."""
    rng = random.Random("auth-differential-create")
    for _ in range(600):
        version = rng.choice([str(v) for v in range(1, 13)])
        b = RoomBuilder(version, room_id=rng.choice(["!r:test", "!r:other.example"]))
        content: dict[str, Any] = {}
        if rng.random() < 0.8:
            content["room_version"] = rng.choice([version, "1", "11", "999"])
        if rng.random() < 0.3:
            content["additional_creators"] = rng.choice(
                [["@bob:test"], [], ["bob"], "@bob:test", [1], ["@bob:test", "@c:o.example"]]
            )
        eid = b.create("alice", **content)
        pdu = b.events[eid]
        if "room_version" not in content:
            del pdu["content"]["room_version"]
        if not b.rules.implicit_room_creator and rng.random() < 0.2:
            del pdu["content"]["creator"]
        if rng.random() < 0.1:
            pdu["prev_events"] = b._refs(["$p:test"])
        b.edit(eid)  # drop the cached view of the changed PDU
        room = Room(version, rng)
        syn = room._to_synapse(pdu)
        theirs = _synapse_verdict(functools.partial(_check_create, syn))
        ours = check_auth(b.event(eid), {})
        assert (ours is None) == (theirs is None), (version, pdu, ours, theirs)


class _FakeStore:
    """The one store method `check_state_independent_auth_rules` calls, over memory."""

    def __init__(self, events: dict[str, EventBase]) -> None:
        self.events = events

    async def get_events(self, event_ids: Any, *args: Any, **kwargs: Any) -> dict[str, EventBase]:
        return {e: self.events[e] for e in event_ids if e in self.events}


@pytest.mark.parametrize("version", [str(v) for v in range(1, 13)])
async def test_differential_auth_event_lists(version: str) -> None:
    """Rule 2/3 (the event's own auth_events list) against Synapse's state-independent checks:
    duplicates, entries the selection does not select, a missing create event (v1-v11), an
    entry from another room; reordered and shortened lists stay acceptable."""
    rng = random.Random(f"auth-differential-lists-{version}")
    room = Room(version, rng)
    room.grow(40)
    other = Room(version, random.Random(f"other-{version}"), name="other")
    other.grow(5)
    b = room.b
    store = _FakeStore({**other.syn, **room.syn})
    foreign_events = {k: other.b.event(k) for k in other.b.events}
    by_key: dict[Any, list[str]] = {}
    for eid in b.events:
        key = b.event(eid).state_tuple
        if key is not None:
            by_key.setdefault(key, []).append(eid)
    candidates = [e for e in b.events if b.event(e).type != "m.room.create"]
    checked = 0
    for eid in rng.sample(candidates, min(60, len(candidates))):
        auth = list(b.event(eid).auth_event_ids)
        variants: list[list[str]] = [auth[::-1], auth[1:]]
        for a in auth:
            twins = [t for t in by_key.get(b.event(a).state_tuple, []) if t != a]
            if twins:
                variants.append([*auth, rng.choice(twins)])
        stray = [e for e in b.events if b.event(e).is_state and e not in auth]
        if stray:
            variants.append([*auth, rng.choice(stray)])
        # (v1/v2 readable IDs can repeat across the two rooms; those are not foreign.)
        foreign = [e for e in other.b.events if other.b.event(e).is_state and e not in b.events]
        if foreign:
            variants.append([*auth, rng.choice(foreign)])
        for variant in variants:
            pdu = copy.deepcopy(b.events[eid])
            pdu["auth_events"] = b._refs(variant)
            pdu.pop("event_id", None)
            if b.rules.reference_pairs:
                pdu["event_id"] = eid.split(":")[0] + "_v" + str(checked) + ":test"
            syn_ev = room._to_synapse(pdu)
            pdu["event_id"] = syn_ev.event_id
            ev = Event(pdu, syn_ev.event_id, b.rules)
            listed = [b.event(a) if a in b.events else foreign_events[a] for a in variant]
            ours = check_auth_event_list(ev, listed)
            try:
                await check_state_independent_auth_rules(store, syn_ev)
                theirs = None
            except SynapseError as exc:
                theirs = str(exc)
            except KeyError:
                # Synapse's selection indexes `signed["token"]` unguarded; no verdict to compare.
                continue
            except RuntimeError as exc:
                # v12: Synapse raises (rather than rejects) on a listed create event.
                assert b.rules.room_id_from_create_event, exc
                theirs = str(exc)
            assert (ours is None) == (theirs is None), (variant, ours, theirs)
            checked += 1
    assert checked > 100
