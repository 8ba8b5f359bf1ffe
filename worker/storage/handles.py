"""State handles: `PgState`, the store's `StateHandle`, and the pure operations on one.

A handle is (room, snapshot NID, pending delta of string entries): `apply` only copies the
small delta, and nothing is written until a write stores the handle as one snapshot row at
most (`worker.storage.event_write`). The rebase functions let consecutive handles of one
room share the snapshots already stored for the handles they extend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.core.events import StateKey
from worker.errors import InvariantViolation
from worker.pipeline.ports import StateHandle

# Snapshots stored by a transaction that `rebase_on_stored` compares a handle with.
_REBASE_CANDIDATES = 4


@dataclass(frozen=True, slots=True, eq=False)
class PgState:
    """The store's `StateHandle`: snapshot `snapshot_nid` (0 = empty) plus `delta`.

    In `delta` an empty event ID removes the key (a resolution may drop entries).
    """

    room_id: str
    snapshot_nid: int
    delta: Mapping[StateKey, str] = field(default_factory=dict)


def own(state: StateHandle) -> PgState:
    """`state` as the `PgState` it must be: a handle of another store is a bug."""
    if not isinstance(state, PgState):
        raise InvariantViolation(f"state handle {state!r} was not made by PostgresStore")
    return state


def apply(state: StateHandle, entries: Mapping[StateKey, str]) -> PgState:
    """The state with `entries` set (an empty event ID removes its key)."""
    h = own(state)
    if not entries:
        return h
    delta = dict(h.delta)
    delta.update(entries)
    return PgState(h.room_id, h.snapshot_nid, delta)


def rebase(current: PgState, before: PgState, before_nid: int) -> PgState:
    """`current` over the snapshot just stored for `before`, when it extends `before`.

    The pipeline builds the state after an event as `apply(state_before, {event})`; over the
    snapshot of the state before, that is a one-entry delta, which is exactly the snapshot the
    next event's `state_after(prev)` will ask for, so both share one row.
    """
    if current.snapshot_nid != before.snapshot_nid or current.room_id != before.room_id:
        return current
    if any(current.delta.get(k) != v for k, v in before.delta.items()):
        return current
    rest = {k: v for k, v in current.delta.items() if k not in before.delta}
    return PgState(current.room_id, before_nid, rest)


def rebase_on_stored(h: PgState, stored: Sequence[tuple[PgState, int]]) -> PgState:
    """`h` over a snapshot this transaction already stored for a handle it extends.

    Events persisted together chain their states: each one's state before is the previous
    one's state after, a handle whose delta (over the snapshot the batch started from) grows
    by one entry per state event. Stored as is, every snapshot would repeat the whole delta;
    rebased on the snapshot just stored for the handle it extends, each adds only its own.
    """
    for cand, nid in reversed(stored[-_REBASE_CANDIDATES:]):
        if cand.room_id != h.room_id or cand.snapshot_nid != h.snapshot_nid:
            continue
        if len(cand.delta) > len(h.delta):
            continue
        if all(h.delta.get(k, None) == v for k, v in cand.delta.items()):
            rest = {k: v for k, v in h.delta.items() if k not in cand.delta}
            return PgState(h.room_id, nid, rest)
    return h


__all__ = ["PgState", "apply", "own", "rebase", "rebase_on_stored"]
