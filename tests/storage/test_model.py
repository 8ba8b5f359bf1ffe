"""Hypothesis stateful model test: the PostgreSQL store against a dict-per-event reference.

Random state changes (accepted and rejected), messages, forks (any earlier event as parent),
merges (a resolution result given in full, sometimes with an entry dropped, as a state reset
would) and authoritative states (`state_from_ids`). The compaction thresholds are shrunk so that
merges of layers, new roots and bucket splits all happen within a few dozen events. At the end
a store with cold caches must read the same state at every event and the same current state,
and the memberships table must match the current state's member events.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.storage.helpers import VERSION, make_event, write
from worker.core import stateblocks as sb
from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome
from worker.storage import PgState, PostgresStore, apply_migrations
from worker.storage.events import MEMBERSHIP_CODES

USERS = [f"@u{i}:test" for i in range(6)]
KEYS: list[StateKey] = [("m.room.member", u) for u in USERS] + [
    ("m.room.topic", ""),
    ("m.room.name", ""),
    ("m.room.power_levels", ""),
    ("x.custom", "k"),
]
MEMBERSHIPS = ["join", "leave", "invite", "ban"]


@pytest.fixture
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(sb, "FANOUT", 3)
    monkeypatch.setattr(sb, "MIN_REBUILD_ENTRIES", 3)
    monkeypatch.setattr(sb, "REBUILD_DIVISOR", 1)
    monkeypatch.setattr(sb, "TARGET_BLOCK_ENTRIES", 2)
    monkeypatch.setattr(sb, "MAX_ROOT_BLOCKS", 4)
    monkeypatch.setattr(sb, "MAX_BLOCKS", 10)
    yield


class StoreModel(RuleBasedStateMachine):
    nodes = Bundle("nodes")

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: asyncpg.Pool) -> None:
        super().__init__()
        self.loop = loop
        self.pool = pool
        self.store = PostgresStore(pool)
        self.room = f"!{uuid.uuid4().hex[:12]}:test"
        self.ref: dict[str, dict[StateKey, str]] = {}
        self.membership: dict[str, str] = {}
        self.current: dict[StateKey, str] = {}
        self.ids = itertools.count()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _persist(
        self,
        event: Event,
        raw: bytes,
        before: PgState,
        before_ref: dict[StateKey, str],
        accepted: bool = True,
    ) -> str:
        after_ref = dict(before_ref)
        after = before
        if accepted and event.state_tuple is not None:
            after_ref[event.state_tuple] = event.event_id
            after = self.store.apply(before, {event.state_tuple: event.event_id})
        outcome = Outcome.ACCEPTED if accepted else Outcome.REJECTED
        w = write(
            event, raw, before=before, current=after, extremities=[event.event_id], outcome=outcome
        )
        self.run(self.store.persist(w))
        self.ref[event.event_id] = after_ref
        self.current = after_ref
        return event.event_id

    def _new_id(self) -> str:
        return f"$e{next(self.ids)}_{self.room[1:13]}"

    @initialize(target=nodes)
    def create(self) -> str:
        ev, raw = make_event(
            self.room, self._new_id(), "m.room.create", "", content={"room_version": VERSION}
        )
        empty = self.run(self.store.handle_from_map(self.room, {}))
        return self._persist(ev, raw, empty, {})

    @rule(
        target=nodes,
        parent=nodes,
        k=st.sampled_from(KEYS),
        m=st.sampled_from(MEMBERSHIPS),
        accepted=st.booleans(),
    )
    def state_event(self, parent: str, k: StateKey, m: str, accepted: bool) -> str:
        content = {"membership": m} if k[0] == "m.room.member" else {"v": 1}
        ev, raw = make_event(self.room, self._new_id(), k[0], k[1], content=content, prev=[parent])
        if k[0] == "m.room.member":
            self.membership[ev.event_id] = m
        before = self.run(self.store.state_after([parent]))[parent]
        return self._persist(ev, raw, before, self.ref[parent], accepted)

    @rule(target=nodes, parent=nodes)
    def message(self, parent: str) -> str:
        ev, raw = make_event(self.room, self._new_id(), "m.room.message", prev=[parent])
        before = self.run(self.store.state_after([parent]))[parent]
        return self._persist(ev, raw, before, self.ref[parent])

    @rule(target=nodes, a=nodes, b=nodes, drop=st.booleans())
    def merge(self, a: str, b: str, drop: bool) -> str:
        handles = self.run(self.store.state_after([a, b]))
        for h in handles.values():
            self.run(self.store.materialize(h))
        resolved = {**self.ref[b], **self.ref[a]}
        if drop and len(resolved) > 1:
            victim = sorted(k for k in resolved if k[0] != "m.room.create")[-1]
            del resolved[victim]
        before = self.run(self.store.handle_from_map(self.room, resolved))
        ev, raw = make_event(self.room, self._new_id(), "m.room.message", prev=sorted({a, b}))
        return self._persist(ev, raw, before, resolved)

    @rule(target=nodes, parent=nodes, data=st.data())
    def authoritative_state(self, parent: str, data: st.DataObject) -> str:
        ref = self.ref[parent]
        others = sorted(k for k in ref if k[0] != "m.room.create")
        chosen = {("m.room.create", "")}
        if others:
            chosen |= data.draw(st.sets(st.sampled_from(others)), label="kept keys")
        ids = [ref[k] for k in sorted(chosen)]
        before = self.run(self.store.state_from_ids(self.room, ids))
        ev, raw = make_event(self.room, self._new_id(), "m.room.message", prev=[parent])
        return self._persist(ev, raw, before, {k: ref[k] for k in chosen})

    @rule(node=nodes)
    def read_back(self, node: str) -> None:
        h = self.run(self.store.state_after([node]))[node]
        assert self.run(self.store.materialize(h)) == self.ref[node]
        ks = KEYS[::2]
        got = self.run(self.store.lookup(h, ks))
        assert {k: e.event_id for k, e in got.items()} == {
            k: self.ref[node][k] for k in ks if k in self.ref[node]
        }

    @invariant()
    def current_state_agrees(self) -> None:
        if not self.ref:
            return
        cur = self.run(self.store.current_state(self.room))
        assert cur is not None
        assert self.run(self.store.materialize(cur)) == self.current

    def teardown(self) -> None:
        if not self.ref:
            return
        cold = PostgresStore(self.pool)
        handles = self.run(cold.state_after(list(self.ref)))
        assert set(handles) == set(self.ref)
        for eid, h in handles.items():
            assert self.run(cold.materialize(h)) == self.ref[eid], eid
            chain = self.run(self._chain(cold, h))
            assert sb.chain_blocks(chain) <= sb.MAX_BLOCKS
        cur = self.run(cold.current_state(self.room))
        assert cur is not None and self.run(cold.materialize(cur)) == self.current
        rows = self.run(
            self.pool.fetch(
                """SELECT k.state_key, m.membership, e.event_id FROM memberships m
               JOIN rooms r USING (room_nid) JOIN state_keys k ON k.state_key_nid = m.target_nid
               JOIN events e ON e.event_nid = m.event_nid WHERE r.room_id = $1""",
                self.room,
            )
        )
        got = {r["state_key"]: (r["membership"], r["event_id"]) for r in rows}
        want = {
            k[1]: (MEMBERSHIP_CODES.get(self.membership.get(v, ""), 0), v)
            for k, v in self.current.items()
            if k[0] == "m.room.member"
        }
        assert got == want

    async def _chain(self, store: PostgresStore, h: PgState) -> sb.Chain:
        async with self.pool.acquire() as conn:
            return await store.states.chain(conn, h.snapshot_nid)


def test_store_matches_model(database_dsn: str, small_thresholds: None) -> None:
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        pool = loop.run_until_complete(asyncpg.create_pool(database_dsn, min_size=1, max_size=4))
        assert pool is not None
        loop.run_until_complete(apply_migrations(pool))
        try:
            run_state_machine_as_test(
                lambda: StoreModel(loop, pool),
                settings=settings(
                    max_examples=12,
                    derandomize=True,
                    database=None,
                    stateful_step_count=40,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                ),
            )
        finally:
            loop.run_until_complete(pool.close())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
