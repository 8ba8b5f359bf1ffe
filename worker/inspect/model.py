"""What the inspector knows about one room, and the pure analysis of it (no I/O).

`worker.inspect.reads` fills a `RoomDump` from PostgreSQL; everything here is a function of
that value, so the summary (`summarize`), the conflicts at merges (`merge_conflicts`) and the
picture's layout (`layout`) are testable without a database. Iteration orders are fixed by
sort keys (STYLE R9): the same room always gives byte-identical text and SVG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.core.events import Event, StateKey
from worker.pipeline.memberships import detect_resets

MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One stored event with what the roomserver decided about it."""

    event: Event
    kind: str  # new | outlier | old
    outcome: str  # accepted | soft_failed | rejected | outlier | invalid
    reason_code: str
    reason: str
    has_state: bool
    redacted_by: str | None

    @property
    def event_id(self) -> str:
        return self.event.event_id


@dataclass(frozen=True, slots=True)
class Conflict:
    """A state key the prev events of a merge disagreed on, and what resolution kept."""

    key: StateKey
    candidates: tuple[str, ...]  # event IDs the sides had (sorted); "" = absent on a side
    winner: str | None  # None: resolution left the key out of the state


@dataclass(frozen=True, slots=True)
class Merge:
    """An event with several prev events: where state resolution ran."""

    event_id: str
    conflicts: tuple[Conflict, ...]
    # Findings of the state-reset detector (worker.pipeline.memberships.detect_resets).
    resets: tuple[Mapping[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RoomDump:
    """Everything read from the store about one room."""

    room_id: str
    version: str
    extremities: tuple[str, ...]
    events: tuple[EventInfo, ...]  # in arrival (storage) order
    current_state: Mapping[StateKey, str]
    # For each merge: the state after each prev event that has state, and the state before it.
    merge_inputs: Mapping[str, tuple[Sequence[Mapping[StateKey, str]], Mapping[StateKey, str]]]
    notes: Mapping[str, str] = field(default_factory=dict)


def merge_conflicts(
    event_id: str,
    sides: Sequence[Mapping[StateKey, str]],
    resolved: Mapping[StateKey, str],
    events: Mapping[str, Event],
) -> Merge:
    """The conflicted keys of a merge (keys whose value differs between its prev events'
    states, absence included) with the winner resolution chose, and any state reset found."""
    keys = sorted({k for side in sides for k in side})
    conflicts: list[Conflict] = []
    removed: list[Event] = []
    for key in keys:
        values = {side.get(key, "") for side in sides}
        if len(values) < 2:
            continue
        winner = resolved.get(key)
        conflicts.append(Conflict(key, tuple(sorted(values)), winner))
        removed.extend(events[v] for v in sorted(values) if v and v != winner and v in events)
    resets = detect_resets(removed, resolved, events)
    return Merge(event_id, tuple(conflicts), tuple(resets))


def merges(dump: RoomDump) -> dict[str, Merge]:
    by_id = {i.event_id: i.event for i in dump.events}
    return {
        eid: merge_conflicts(eid, sides, resolved, by_id)
        for eid, (sides, resolved) in sorted(dump.merge_inputs.items())
    }


def children(dump: RoomDump) -> dict[str, list[str]]:
    """Stored events naming each event as a prev event, in arrival order."""
    out: dict[str, list[str]] = {}
    for info in dump.events:
        for prev in info.event.prev_event_ids:
            out.setdefault(prev, []).append(info.event_id)
    return out


def forks(dump: RoomDump) -> list[str]:
    """Events that two or more stored events extend: where the DAG branched. Rejected and
    invalid children do not count (they never become part of the room's DAG of state)."""
    refused = {i.event_id for i in dump.events if i.outcome in ("rejected", "invalid")}
    kids = children(dump)
    return [
        i.event_id
        for i in dump.events
        if len([k for k in kids.get(i.event_id, ()) if k not in refused]) > 1
    ]


@dataclass(frozen=True, slots=True)
class Summary:
    room_id: str
    version: str
    event_count: int
    outcomes: Mapping[str, int]
    state: Mapping[str, int]  # event type -> entries in the current state
    members: Mapping[str, list[str]]  # membership -> user IDs
    extremities: tuple[str, ...]
    forks: list[str]
    merges: list[Merge]
    refused: list[EventInfo]  # rejected, soft-failed and invalid events


def summarize(dump: RoomDump) -> Summary:
    by_id = {i.event_id: i for i in dump.events}
    outcomes: dict[str, int] = {}
    for info in dump.events:
        outcomes[info.outcome] = outcomes.get(info.outcome, 0) + 1
    state: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    for (etype, skey), eid in sorted(dump.current_state.items()):
        state[etype] = state.get(etype, 0) + 1
        member = by_id.get(eid)
        if etype == "m.room.member" and member is not None:
            members.setdefault(member.event.membership or "?", []).append(skey)
    refused = [i for i in dump.events if i.outcome in ("rejected", "soft_failed", "invalid")]
    return Summary(
        room_id=dump.room_id,
        version=dump.version,
        event_count=len(dump.events),
        outcomes=dict(sorted(outcomes.items())),
        state=dict(sorted(state.items())),
        members={m: members[m] for m in [*MEMBERSHIPS, *sorted(members)] if m in members},
        extremities=dump.extremities,
        forks=forks(dump),
        merges=[m for m in merges(dump).values()],
        refused=refused,
    )


def layout(dump: RoomDump) -> dict[str, tuple[int, int]]:
    """(row, column) of each event: rows by longest path from the roots (prev events above),
    columns as lanes that an event inherits from its first prev event when that is free."""
    known = {i.event_id for i in dump.events}
    row: dict[str, int] = {}
    pending = list(dump.events)
    # Arrival order is mostly topological; repeat until every row is settled (a prev event
    # that arrived later, e.g. an `old` event, pushes its children down on the next pass).
    for _ in range(len(pending) + 1):
        changed = False
        for info in pending:
            prevs = [p for p in info.event.prev_event_ids if p in known and p != info.event_id]
            r = 1 + max((row.get(p, 0) for p in prevs), default=-1)
            if row.get(info.event_id) != r:
                row[info.event_id] = r
                changed = True
        if not changed:
            break
    lane: dict[str, int] = {}
    taken: dict[int, set[int]] = {}
    # Refused events go last in their row, so accepted events keep their branch's lane.
    refused = ("rejected", "invalid")
    order = sorted(
        dump.events, key=lambda i: (row[i.event_id], i.outcome in refused, i.event.depth)
    )
    for info in order:
        r = row[info.event_id]
        used = taken.setdefault(r, set())
        wanted = [lane[p] for p in info.event.prev_event_ids if p in lane]
        col = next((c for c in wanted if c not in used), None)
        if col is None:
            col = 0
            while col in used:
                col += 1
        used.add(col)
        lane[info.event_id] = col
    return {eid: (row[eid], lane[eid]) for eid in row}


__all__ = [
    "Conflict",
    "EventInfo",
    "Merge",
    "RoomDump",
    "Summary",
    "children",
    "forks",
    "layout",
    "merge_conflicts",
    "merges",
    "summarize",
]
