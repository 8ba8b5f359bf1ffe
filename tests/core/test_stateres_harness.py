"""Reference harness for state resolution: random forked DAGs, and Synapse as the oracle.

Not a test module by itself (it defines no tests); `test_stateres_differential.py`, the
property tests and `bench/stateres.py` import it. Synapse (`matrix-synapse`, a dev-only
dependency) is driven through its own `synapse/state/v1.py` and `v2.py` with a fake store
and clock: every event is handed over as "unpersisted", so Synapse computes the auth
difference and the v2.1 conflicted subgraph itself, in memory, and the fake store only
answers "nothing more persisted".

Synapse's coroutines never suspend here (the fake store and clock complete immediately), so
they are driven by hand with `send(None)` instead of an event loop.
"""

from __future__ import annotations

import random
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from synapse import event_auth
from synapse.api.errors import AuthError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import EventBase, make_event_from_dict
from synapse.state import v1 as syn_v1
from synapse.state import v2 as syn_v2
from synapse.storage.databases.main.event_federation import StateDifference

from worker.core.events import Event, StateKey
from worker.core.outcomes import Rejection
from worker.core.stateres import ResolutionStats, resolve
from worker.core.versions import RoomRules, rules_for

USERS = ("@alice:a", "@bob:b", "@carol:c", "@dave:a", "@eve:b")


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never really suspends, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the Synapse coroutine suspended; the fake store must not")


class _Clock:
    async def sleep(self, duration: Any) -> None:
        return None


class _Store:
    def __init__(self, events: Mapping[str, EventBase]) -> None:
        self._events = events

    async def get_events(
        self, event_ids: Iterable[str], allow_rejected: bool = False
    ) -> dict[str, EventBase]:
        return {e: self._events[e] for e in event_ids if e in self._events}

    async def get_auth_chain_difference(
        self,
        room_id: str,
        state_sets: list[set[str]],
        conflicted_state: set[str] | None,
        additional_backwards_reachable_conflicted_events: set[str] | None,
    ) -> StateDifference:
        # Everything was passed as unpersisted, so nothing is left for "the database".
        return StateDifference(
            auth_difference=set(),
            conflicted_subgraph=set() if conflicted_state is not None else None,
        )


@dataclass
class Dag:
    """A room DAG built twice: as our `Event`s and as Synapse's `EventBase`s."""

    version: str
    rules: RoomRules
    room_id: str = ""
    ours: dict[str, Event] = field(default_factory=dict)
    syn: dict[str, EventBase] = field(default_factory=dict)
    pdus: list[dict[str, Any]] = field(default_factory=list)
    state_sets: list[dict[StateKey, str]] = field(default_factory=list)
    # The states along the linear shared history, oldest first: each extends the ones
    # before it with events that passed the auth rules.
    linear_states: list[dict[StateKey, str]] = field(default_factory=list)
    # Events rejected here (Synapse's `rejected_reason` is set on theirs).
    rejected: set[str] = field(default_factory=set)


def _auth_keys(
    rules: RoomRules, etype: str, sender: str, skey: str | None, content: dict[str, Any]
) -> list[StateKey]:
    keys: list[StateKey] = []
    if etype == "m.room.create":
        return keys
    if not rules.room_id_from_create_event:
        keys.append(("m.room.create", ""))
    keys += [("m.room.power_levels", ""), ("m.room.member", sender)]
    if etype == "m.room.member" and skey is not None:
        keys.append(("m.room.member", skey))
        if content.get("membership") in ("join", "invite", "knock"):
            keys.append(("m.room.join_rules", ""))
        via = content.get("join_authorised_via_users_server")
        if rules.restricted_join_rule and content.get("membership") == "join" and via:
            keys.append(("m.room.member", via))
    return list(dict.fromkeys(keys))


class DagBuilder:
    """Builds events that pass the auth rules (Synapse's) against the state they extend."""

    def __init__(self, version: str, rng: random.Random, readable_ids: bool = True) -> None:
        rules = rules_for(version)
        assert rules is not None
        self.rules = rules
        self.rv = KNOWN_ROOM_VERSIONS[version]
        self.rng = rng
        self.dag = Dag(version, rules, room_id="!room:a")
        self.n = 0
        self.readable_ids = readable_ids

    def add(
        self,
        etype: str,
        sender: str,
        skey: str | None,
        content: dict[str, Any],
        state: dict[StateKey, str],
        prev: list[str],
        ts: int,
        check: bool = True,
        rejected: bool = False,
        keep_failed: bool = False,
    ) -> str | None:
        """Create an event on top of `state` (updated in place if it is accepted).

        `rejected`: the event passes the auth rules against `state` (the fork's server
        accepted it) but was rejected here; so is any event citing a rejected one.
        `keep_failed`: an event failing the auth rules is kept as a rejected event (which
        later events may use as a prev event) instead of being dropped; `state` stays.
        """
        dag = self.dag
        rules = self.rules
        self.n += 1
        keys = _auth_keys(rules, etype, sender, skey, content)
        auth_ids = [state[k] for k in keys if k in state]
        depth = 1 + max((dag.ours[p].depth for p in prev), default=0)
        pdu: dict[str, Any] = {
            "type": etype,
            "sender": sender,
            "content": content,
            "depth": depth,
            "origin_server_ts": ts,
            "hashes": {"sha256": "x"},
            # Placeholders: signatures are verified upstream, but the auth rules want the
            # authorising server's entry on a restricted join.
            "signatures": {
                u.split(":", 1)[1]: {"ed25519:k": "x"}
                for u in (sender, content.get("join_authorised_via_users_server"))
                if isinstance(u, str) and ":" in u
            },
        }
        if skey is not None:
            pdu["state_key"] = skey
        if not (rules.room_id_from_create_event and etype == "m.room.create"):
            pdu["room_id"] = dag.room_id
        if rules.reference_pairs:
            pdu["event_id"] = f"${self.n}-{etype.rsplit('.', 1)[-1]}:{sender.split(':')[1]}"
            pdu["auth_events"] = [[a, {"sha256": "x"}] for a in auth_ids]
            pdu["prev_events"] = [[p, {"sha256": "x"}] for p in prev]
        else:
            pdu["auth_events"] = auth_ids
            pdu["prev_events"] = prev
        syn = make_event_from_dict(pdu, self.rv)
        eid = syn.event_id
        passed = True
        if check and etype != "m.room.create":
            auth = [dag.syn[a] for a in auth_ids]
            if rules.room_id_from_create_event:
                auth.append(dag.syn[state[("m.room.create", "")]])
            try:
                event_auth.check_state_dependent_auth_rules(syn, auth)
            except AuthError:
                if not keep_failed:
                    return None
                passed = False
        # An event built again (the same ID on another fork) stays rejected: a server never
        # changes its verdict on an event.
        if (
            rejected
            or not passed
            or eid in dag.rejected
            or any(a in dag.rejected for a in auth_ids)
        ):
            syn = make_event_from_dict(pdu, self.rv, rejected_reason="auth_error")
            dag.rejected.add(eid)
        if rules.room_id_from_create_event and etype == "m.room.create":
            dag.room_id = "!" + eid[1:]
        dag.syn[eid] = syn
        dag.ours[eid] = Event(pdu, eid, rules)
        dag.pdus.append(pdu)
        if skey is not None and passed:
            state[(etype, skey)] = eid
        return eid


def _pl_content(rules: RoomRules, rng: random.Random, creators: set[str]) -> dict[str, Any]:
    users: dict[str, int] = {}
    for u in USERS:
        if rules.privileged_creators and u in creators:
            continue
        r = rng.random()
        if u == "@alice:a":
            users[u] = 100
        elif r < 0.3:
            users[u] = rng.choice([0, 25, 50, 75, 100])
    return {
        "users": users,
        "users_default": 0,
        "state_default": rng.choice([0, 50]),
        "events_default": 0,
        "ban": rng.choice([25, 50]),
        "kick": rng.choice([25, 50]),
        "invite": 0,
        "redact": 50,
        "events": {"m.room.power_levels": rng.choice([50, 100])},
    }


def random_forked_dag(rng: random.Random, version: str, readable_ids: bool = True) -> Dag:
    """A room with a shared history, then 2-3 forks from random (possibly stale) points."""
    b = DagBuilder(version, rng, readable_ids)
    rules = b.rules
    state: dict[StateKey, str] = {}
    ts = 1000
    creators = {"@alice:a"}
    create: dict[str, Any] = {"room_version": version}
    if not rules.implicit_room_creator:
        create["creator"] = "@alice:a"
    if rules.privileged_creators and rng.random() < 0.3:
        create["additional_creators"] = ["@bob:b"]
        creators.add("@bob:b")
    last = b.add("m.room.create", "@alice:a", "", create, state, [], ts)
    assert last is not None
    history: list[tuple[dict[StateKey, str], str]] = []

    def step(st: dict[StateKey, str], prev: str, rejecting: bool = False) -> str:
        """One random event on top of `st`; `rejecting`: it may be rejected here (see
        `DagBuilder.add`), or kept as a rejected prev event when it fails the rules."""
        nonlocal ts
        ts += rng.randint(0, 3)
        flags: dict[str, bool] = {}
        if rejecting:
            flags = {"rejected": rng.random() < 0.2, "keep_failed": rng.random() < 0.5}

        def add(*args: Any) -> str | None:
            return b.add(*args, **flags)

        sender = rng.choice(USERS)
        kind = rng.choices(
            ["topic", "join", "leave", "kick", "ban", "invite", "pl", "jr", "name", "knock", "via"],
            weights=[3, 4, 1, 2, 2, 2, 2, 1, 1, 1, 1],
        )[0]
        target = rng.choice(USERS)
        if kind == "topic":
            got = add("m.room.topic", sender, "", {"topic": f"t{b.n}"}, st, [prev], ts)
        elif kind == "name":
            got = add("m.room.name", sender, "", {"name": f"n{b.n}"}, st, [prev], ts)
        elif kind in ("join", "leave") or (kind == "knock" and rules.knock):
            got = add("m.room.member", sender, sender, {"membership": kind}, st, [prev], ts)
        elif kind == "via" and rules.restricted_join_rule:
            content = {"membership": "join", "join_authorised_via_users_server": target}
            got = add("m.room.member", sender, sender, content, st, [prev], ts)
        elif kind in ("kick", "ban", "invite"):
            m = {"kick": "leave", "ban": "ban", "invite": "invite"}[kind]
            got = add("m.room.member", sender, target, {"membership": m}, st, [prev], ts)
        elif kind == "pl":
            content = _pl_content(rules, rng, creators)
            got = add("m.room.power_levels", sender, "", content, st, [prev], ts)
        elif kind == "jr":
            rules_ok = ["public", "invite"]
            rules_ok += ["knock"] if rules.knock else []
            rules_ok += ["restricted"] if rules.restricted_join_rule else []
            rules_ok += ["knock_restricted"] if rules.knock_restricted_join_rule else []
            jr_content: dict[str, Any] = {"join_rule": rng.choice(rules_ok)}
            if jr_content["join_rule"].endswith("restricted"):
                jr_content["allow"] = [{"type": "m.room_membership", "room_id": "!other:a"}]
            got = add("m.room.join_rules", sender, "", jr_content, st, [prev], ts)
        else:
            got = None
        return got if got is not None else prev

    for etype, skey, content in (
        ("m.room.member", "@alice:a", {"membership": "join"}),
        (
            "m.room.power_levels",
            "",
            _pl_content(rules, rng, creators)
            | {"users": {} if rules.privileged_creators else {"@alice:a": 100}},
        ),
        ("m.room.join_rules", "", {"join_rule": "public"}),
    ):
        got = b.add(etype, "@alice:a", skey, content, state, [last], ts)
        assert got is not None, (etype, version)
        last = got
        history.append((dict(state), last))
    for u in USERS[1:]:
        if rng.random() < 0.8:
            got = b.add("m.room.member", u, u, {"membership": "join"}, state, [last], ts)
            if got is not None:
                last = got
                history.append((dict(state), last))
    for _ in range(rng.randint(0, 10)):
        last = step(state, last)
        history.append((dict(state), last))
    b.dag.linear_states = [st for st, _ in history]
    forks = rng.randint(2, 3)
    for _ in range(forks):
        base, prev = rng.choice(history[len(history) // 2 :]) if rng.random() < 0.5 else history[-1]
        st = dict(base)
        rejecting = rng.random() < 0.4
        for _ in range(rng.randint(1, 10)):
            prev = step(st, prev, rejecting)
            history.append((dict(st), prev))
        if rng.random() < 0.3:
            _mix_in_older(rng, st, history)
        b.dag.state_sets.append(st)
    sets = b.dag.state_sets
    if rng.random() < 0.5:
        # Partial merges: one fork's entry copied into another, so that a later event of
        # one fork becomes unconflicted next to conflicted earlier ones.
        for _ in range(rng.randint(1, 3)):
            i, j = rng.sample(range(len(sets)), 2)
            key = rng.choice(sorted(sets[j]))
            sets[i][key] = sets[j][key]
    return b.dag


def _mix_in_older(
    rng: random.Random, st: dict[StateKey, str], history: list[tuple[dict[StateKey, str], str]]
) -> None:
    """Replace a few entries by older (or other forks') values of the same key.

    Such state sets arise after earlier resolutions ("state resets", MSC4297's examples):
    they put later events in the unconflicted state next to earlier conflicted ones, which
    is where v2 and v2.1 part ways.
    """
    for _ in range(rng.randint(1, 3)):
        old, _ = rng.choice(history)
        key = rng.choice(sorted(st))
        if key == ("m.room.create", ""):
            continue
        if key in old:
            st[key] = old[key]


# --- resolving the same DAG both ways ------------------------------------------------------


def synapse_resolve(dag: Dag) -> dict[StateKey, str]:
    """Synapse's answer: v1.py for room version 1, v2.py (with v2.1) for the others."""
    rv = KNOWN_ROOM_VERSIONS[dag.version]
    events = dict(dag.syn)
    if dag.rules.state_res.value == "v1":

        async def factory(ids: Iterable[str]) -> dict[str, EventBase]:
            return {e: dag.syn[e] for e in ids if e in dag.syn}

        got = drive(
            syn_v1.resolve_events_with_store(dag.room_id, rv, dag.state_sets, events, factory)
        )
    else:
        got = drive(
            syn_v2.resolve_events_with_store(
                _Clock(), dag.room_id, rv, dag.state_sets, events, _Store(dag.syn)
            )
        )
    return dict(got)


class SynapseAuthorizer:
    """Synapse's auth rules behind our `Authorizer` port: isolates the algorithm under test."""

    def __init__(self, dag: Dag) -> None:
        self.dag = dag
        self.rv = KNOWN_ROOM_VERSIONS[dag.version]

    def auth_types(self, event: Event) -> Iterable[StateKey]:
        keys = event_auth.auth_types_for_event(self.rv, self.dag.syn[event.event_id])
        return sorted(k for k in keys if k[1] is not None)  # type: ignore[misc]

    def check(self, event: Event, auth_events: Mapping[StateKey, Event]) -> Rejection | None:
        syn = self.dag.syn[event.event_id]
        try:
            event_auth.check_state_dependent_auth_rules(
                syn, [self.dag.syn[e.event_id] for e in auth_events.values()]
            )
        except AuthError as exc:
            return Rejection("synapse_auth_error", str(exc))
        return None


def ours_resolve(
    dag: Dag, synapse_auth: bool = False
) -> tuple[dict[StateKey, str], ResolutionStats]:
    return resolve(
        dag.rules,
        dag.state_sets,
        dag.ours.get,
        rejected=frozenset(dag.rejected),
        authorizer=SynapseAuthorizer(dag) if synapse_auth else None,
    )
