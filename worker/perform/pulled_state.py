"""The state before a backfilled event whose prev events we lack, from the server that
answered the backfill (DESIGN §4 Perform API, `backfill`).

Synapse computes the state at each pulled event the same way: where the prev events are
not all known, the remote is asked for the state at the event. Here: `state_ids` names the
state and its auth chain; the events not stored here are fetched with `event`, or with one
`state` call when most are missing (the gap filler's rule, `GapSettings`). Everything
fetched is checked as a federated join's state is (`worker.core.joins`): format, derived
ID, room, content hash, the event asked for, every auth event it cites among the answer,
and the auth rules against its own auth events; the state must have a create event and no
key twice. Events stored here already were checked when they were stored and are not
checked again; one stored as rejected is left out of the state (as the gap filler does).

What comes back is a value: the checked events to store as outliers (auth order) and the
IDs of the state, or a `Rejection` saying why the answer cannot be used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.core.auth.common import CREATE_KEY
from worker.core.events import Event, StateKey
from worker.core.joins import auth_order, check_event, check_own_auth
from worker.core.outcomes import Rejection
from worker.core.versions import RoomRules
from worker.errors import RetryableError
from worker.pipeline.fetch_missing import GapSettings
from worker.query.ports import QueryStore

Pdu = Mapping[str, object]


class StateFederation(Protocol):
    """The gap filler's federation verbs (`worker.pipeline.fetch_missing.FederationClient`,
    implemented by `worker.federation.NatsFederationClient`), asked of one server first."""

    async def state_ids(
        self, room_id: str, event_id: str, *, origin: str = ""
    ) -> tuple[list[str], list[str]]: ...

    async def state(
        self, room_id: str, event_id: str, *, origin: str = ""
    ) -> tuple[list[Pdu], list[Pdu]]: ...

    async def event(self, room_id: str, event_id: str, *, origin: str = "") -> Pdu | None: ...


@dataclass(frozen=True, slots=True)
class PulledState:
    """A checked state before an event: the events to store as outliers, each after its
    auth events, and the state's event IDs (sorted)."""

    fetched: tuple[Event, ...]
    state_ids: tuple[str, ...]


def _bad(code: str, reason: str) -> Rejection:
    return Rejection(code, reason, "federation")


async def pull_state(
    fed: StateFederation,
    reads: QueryStore,
    rules: RoomRules,
    room_id: str,
    event_id: str,
    server: str,
    settings: GapSettings,
) -> PulledState | Rejection:
    """The state before `event_id` from `server` (see the module docstring)."""
    try:
        return await _pull(fed, reads, rules, room_id, event_id, server, settings)
    except RetryableError as exc:
        return _bad("unavailable", f"the state could not be asked for: {exc}")


async def _pull(
    fed: StateFederation,
    reads: QueryStore,
    rules: RoomRules,
    room_id: str,
    event_id: str,
    server: str,
    settings: GapSettings,
) -> PulledState | Rejection:
    state_ids, chain_ids = await fed.state_ids(room_id, event_id, origin=server)
    if not state_ids:
        return _bad("no_state", "state_ids gave no state")
    everything = sorted({*state_ids, *chain_ids})
    found = await reads.events(everything)
    stored: dict[str, Event] = {}
    rejected: set[str] = set()
    for eid, ev in found.items():
        if ev.room_id != room_id:
            return _bad("wrong_room", f"event {eid} of the state is of another room here")
        stored[eid] = ev.event
        if ev.outcome == "rejected":
            rejected.add(eid)
    missing = [i for i in everything if i not in stored]
    got: dict[str, Event] = {}
    if len(missing) > settings.state_fallback_fraction * len(everything):
        state, chain = await fed.state(room_id, event_id, origin=server)
        problem = _check_into(got, [*state, *chain], rules, room_id)
        if problem is not None:
            return problem
    left = [i for i in missing if i not in got]
    single = await _fetch_each(fed, room_id, left, server, settings.fetch_concurrency)
    problem = _check_into(got, single, rules, room_id)
    if problem is not None:
        return problem
    return check_pulled(state_ids, everything, stored, rejected, got)


def _check_into(
    out: dict[str, Event], pdus: Sequence[object], rules: RoomRules, room_id: str
) -> Rejection | None:
    """Each PDU checked (`check_event`: format, derived ID, room, content hash) into
    `out` by its ID; the first bad one refuses the answer."""
    for pdu in pdus:
        event = check_event(pdu, rules, room_id)
        if isinstance(event, Rejection):
            return event
        out[event.event_id] = event
    return None


async def _fetch_each(
    fed: StateFederation, room_id: str, ids: Sequence[str], server: str, concurrency: int
) -> list[Pdu]:
    """`event` for each ID, `concurrency` at a time; IDs nobody had are absent."""
    gate = asyncio.Semaphore(concurrency)

    async def one(eid: str) -> tuple[str, Pdu | None]:
        async with gate:
            return eid, await fed.event(room_id, eid, origin=server)

    return [pdu for _, pdu in await asyncio.gather(*(one(i) for i in ids)) if pdu is not None]


def check_pulled(
    state_ids: Sequence[str],
    everything: Sequence[str],
    stored: Mapping[str, Event],
    rejected: set[str],
    got: Mapping[str, Event],
) -> PulledState | Rejection:
    """The fetched events (each checked on its own already) checked against what
    `state_ids` named, and together with the stored ones as a state (pure)."""
    wanted = set(everything)
    fetched: dict[str, Event] = {}
    for eid, event in got.items():
        if eid not in wanted:
            return _bad("not_asked", f"the answer holds {eid}, which the state does not name")
        if eid not in stored:
            fetched[eid] = event
    by_id = {**stored, **fetched}
    lacking = [i for i in everything if i not in by_id]
    if lacking:
        shown = ", ".join(lacking[:5]) + (" ..." if len(lacking) > 5 else "")
        return _bad("missing_events", f"{len(lacking)} events of the state could not be had: {shown}")
    keys: dict[StateKey, str] = {}
    for eid in state_ids:
        key = by_id[eid].state_tuple
        if key is None:
            return _bad("not_state", f"event {eid} of the state has no state_key")
        if keys.setdefault(key, eid) != eid:
            return _bad("duplicate_state", f"the state has two events for {key}")
    create_id = keys.get(CREATE_KEY)
    if create_id is None:
        return _bad("no_create_event", "the state has no m.room.create event")
    ordered = auth_order(by_id.values())
    if isinstance(ordered, Rejection):
        return ordered
    create = by_id[create_id]
    for event in ordered:
        if event.event_id in fetched:
            problem = check_own_auth(event, by_id, create)
            if problem is not None:
                return _bad(problem.code, f"event {event.event_id}: {problem.reason}")
    usable = sorted(i for i in keys.values() if i not in rejected)
    return PulledState(tuple(e for e in ordered if e.event_id in fetched), tuple(usable))


__all__ = ["PulledState", "StateFederation", "check_pulled", "pull_state"]
