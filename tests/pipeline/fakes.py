"""In-memory implementations of the pipeline's ports, for unit tests without services.

`FakeStore` keeps whole state maps per event (no blocks): simple enough to be obviously
right, which is what a test double of the real store must be. `FakeRelay` "publishes" by
moving committed outbox rows into `published`, dropping repeated output IDs the way
JetStream's duplicate window does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome
from worker.core.redaction import redact
from worker.messages import OutputEvent, decode_output
from worker.pipeline.ports import EventWrite, OutputRecord, RoomInfo, StateHandle, StoredEvent


@dataclass(frozen=True)
class FakeState:
    entries: Mapping[StateKey, str]


def _entries(state: StateHandle | None) -> Mapping[StateKey, str]:
    if state is None:
        return {}
    assert isinstance(state, FakeState)
    return state.entries


@dataclass
class FakeStore:
    rooms: dict[str, str] = field(default_factory=dict)
    stored: dict[str, StoredEvent] = field(default_factory=dict)
    json: dict[str, bytes] = field(default_factory=dict)
    before: dict[str, Mapping[StateKey, str]] = field(default_factory=dict)
    current: dict[str, Mapping[StateKey, str]] = field(default_factory=dict)
    latest: dict[str, list[str]] = field(default_factory=dict)
    applied_redactions: set[tuple[str, str]] = field(default_factory=set)
    outbox: dict[str, list[OutputRecord]] = field(default_factory=dict)
    # Accepted redactions by the ID of the event they redact.
    redactions_of: dict[str, set[str]] = field(default_factory=dict)
    output_ids: set[str] = field(default_factory=set)
    persists: int = 0
    # Raise this once from the next persist (a crash before commit).
    fail_next_persist: Exception | None = None

    async def room(self, room_id: str) -> RoomInfo | None:
        version = self.rooms.get(room_id)
        return RoomInfo(room_id, version) if version is not None else None

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        return {e: self.stored[e] for e in event_ids if e in self.stored}

    def _after(self, event_id: str) -> dict[StateKey, str]:
        se = self.stored[event_id]
        state = dict(self.before[event_id])
        key = se.event.state_tuple
        if key is not None and se.outcome is Outcome.ACCEPTED:
            state[key] = event_id
        return state

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        return {e: FakeState(self._after(e)) for e in event_ids if e in self.before}

    async def state_from_ids(self, room_id: str, event_ids: Sequence[str]) -> StateHandle:
        state: dict[StateKey, str] = {}
        for eid in event_ids:
            se = self.stored[eid]
            key = se.event.state_tuple
            if key is not None and se.outcome is not Outcome.REJECTED:
                state[key] = eid
        return FakeState(state)

    async def current_state(self, room_id: str) -> StateHandle | None:
        cur = self.current.get(room_id)
        return FakeState(cur) if cur is not None else None

    async def extremities(self, room_id: str) -> list[str]:
        return list(self.latest.get(room_id, []))

    async def lookup(self, state: StateHandle, keys: Sequence[StateKey]) -> dict[StateKey, Event]:
        entries = _entries(state)
        return {k: self.stored[entries[k]].event for k in keys if k in entries}

    async def materialize(self, state: StateHandle) -> dict[StateKey, str]:
        return dict(_entries(state))

    def apply(self, state: StateHandle, entries: Mapping[StateKey, str]) -> StateHandle:
        return FakeState({**_entries(state), **entries})

    async def handle_from_map(self, room_id: str, state: Mapping[StateKey, str]) -> StateHandle:
        return FakeState(dict(state))

    async def diff(
        self, old: StateHandle | None, new: StateHandle
    ) -> tuple[list[str], list[str]]:
        a, b = set(_entries(old).values()), set(_entries(new).values())
        return sorted(b - a), sorted(a - b)

    async def pending_redactions(self, target_ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for target in target_ids:
            for eid in sorted(self.redactions_of.get(target, ())):
                if (eid, target) not in self.applied_redactions:
                    out.setdefault(target, []).append(eid)
        return out

    async def persist(self, write: EventWrite) -> None:
        if self.fail_next_persist is not None:
            exc, self.fail_next_persist = self.fail_next_persist, None
            raise exc
        self.persists += 1
        self.rooms.setdefault(write.room_id, write.room_version)
        eid = write.event.event_id
        self.stored[eid] = StoredEvent(
            event=write.event,
            outcome=write.outcome,
            reason_code=write.reason_code,
            reason=write.reason,
            kind=write.kind,
            has_state=write.state_before is not None,
        )
        self.json[eid] = write.event_json
        ev = write.event
        if ev.type == "m.room.redaction" and ev.redacts and write.outcome is Outcome.ACCEPTED:
            self.redactions_of.setdefault(ev.redacts, set()).add(eid)
        if write.state_before is not None:
            self.before[eid] = dict(_entries(write.state_before))
        if write.extremities is not None:
            self.latest[write.room_id] = list(write.extremities)
        if write.current_state is not None:
            self.current[write.room_id] = dict(_entries(write.current_state))
        for red_id, target_id in write.redactions:
            self.applied_redactions.add((red_id, target_id))
            target = self.stored[target_id]
            pdu = redact(target.event.pdu, target.event.rules)
            self.json[target_id] = msgspec.json.encode(pdu)
            self.stored[target_id] = StoredEvent(
                event=target.event,
                outcome=target.outcome,
                reason_code=target.reason_code,
                reason=target.reason,
                kind=target.kind,
                has_state=target.has_state,
                redacted=True,
            )
        rows = self.outbox.setdefault(write.room_id, [])
        for row in write.outputs:
            if row.output_id not in self.output_ids:
                self.output_ids.add(row.output_id)
                rows.append(row)


@dataclass
class FakeRelay:
    store: FakeStore
    published: list[OutputRecord] = field(default_factory=list)
    _sent: set[str] = field(default_factory=set)
    # How many of each room's outbox rows were handled already.
    _done: dict[str, int] = field(default_factory=dict)

    async def flush(self, room_id: str) -> None:
        rows = self.store.outbox.get(room_id, [])
        start = self._done.get(room_id, 0)
        for row in rows[start:]:
            if row.output_id not in self._sent:
                self._sent.add(row.output_id)
                self.published.append(row)
        self._done[room_id] = len(rows)

    def outputs(self, output_type: str | None = None) -> list[OutputEvent]:
        decoded = [decode_output(r.payload) for r in self.published]
        return [o for o in decoded if output_type is None or o.type == output_type]
