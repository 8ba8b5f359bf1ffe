"""Forward extremities and current state after an accepted `new` event, and the state deltas
of its `new_room_event` (reference doc §1.12 and §2.3).

Extremities follow the spec and Synapse: the new event replaces the extremities it lists as
prev events; rejected and soft-failed events never become extremities (they never reach
here). The new current state is the resolution of the state after each extremity; the common
linear case (the event's one prev is the one extremity) is computed without reading state.

Deltas, as consumers read them:
- `adds`/`removes`: event IDs that entered/left current state (a replaced entry is in both);
  for a state rewrite (federated join) `adds` is the whole state and `removes` is empty.
- `before_adds`/`before_removes`: the state before the event relative to the new current
  state: in before but not current / in current but not before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker.core.events import Event
from worker.pipeline.authstep import AuthStateReads
from worker.pipeline.model import StateHandle, Work
from worker.pipeline.state import Merge, ResolveStore, resolve_handles


@dataclass(slots=True)
class Advance:
    extremities: list[str]
    # None: current state unchanged.
    current: StateHandle | None
    adds: list[str] = field(default_factory=list)
    removes: list[str] = field(default_factory=list)
    before_adds: list[str] = field(default_factory=list)
    before_removes: list[str] = field(default_factory=list)
    # The events behind `adds`/`removes`, when already at hand (linear case).
    added_events: list[Event] | None = None
    removed_events: list[Event] | None = None
    merge: Merge | None = None


def _new_extremities(work: Work, old: list[str]) -> list[str]:
    if work.inp.state_event_ids is not None:
        # A state rewrite starts the room's DAG afresh from this event.
        return [work.event_id]
    prevs = set(work.event.prev_event_ids)
    return sorted({*(e for e in old if e not in prevs), work.event_id})


# How far back a gap's `old` events are followed: gaps closed by /get_missing_events hold at
# most 20 events (worker.pipeline.fetch_missing), so 25 levels cover them with room to spare.
_OLD_CHAIN_LEVELS = 25


class AdvanceStore(ResolveStore, AuthStateReads, Protocol):
    """What moving the room's extremities and current state reads: the current state, the
    state after the other extremities (resolved with the event's), and stored events."""

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        """State after each event that has state; others absent (`state.StateBeforeStore`)."""
        ...


async def _reached_through_old(store: AdvanceStore, work: Work, candidates: set[str]) -> set[str]:
    """Those of `candidates` (the room's other extremities) that the event reaches by walking
    back through `old` events only. A `new` event on the way would have replaced the
    extremity itself, so only chains of `old` events are walked: in a plain fork the walk
    stops at the event's own prevs, with no read at all."""
    found: set[str] = set()
    frontier = [p for p in work.event.prev_event_ids if work.known.get(p) is not None]
    known = {p: work.known[p] for p in frontier}
    seen = set(frontier)
    for _ in range(_OLD_CHAIN_LEVELS):
        parents: list[str] = []
        for eid in frontier:
            stored = known.get(eid)
            if stored is None or stored.kind != "old":
                continue
            for p in stored.event.prev_event_ids:
                if p in candidates:
                    found.add(p)
                elif p not in seen:
                    seen.add(p)
                    parents.append(p)
        if not parents or found == candidates:
            break
        known = await store.events(parents)
        frontier = parents
    return found


async def _linear(store: AdvanceStore, work: Work, after: StateHandle) -> Advance:
    """The one prev is the one extremity: current state = state after the event."""
    adv = Advance([work.event_id], after, added_events=[], removed_events=[])
    key = work.event.state_tuple
    if key is None:
        return adv
    assert work.state_before is not None
    replaced = work.before_entries.get(key)
    if replaced is None and key not in work.before_entries:
        replaced = (await store.lookup(work.state_before, [key])).get(key)
    adv.adds = adv.before_removes = [work.event_id]
    adv.added_events = [work.event]
    if replaced is not None:
        adv.removes = adv.before_adds = [replaced.event_id]
        adv.removed_events = [replaced]
    return adv


async def advance(store: AdvanceStore, work: Work, after: StateHandle) -> Advance:
    """New extremities and current state once `work.event` is accepted (`kind=new`)."""
    old_ext = work.extremities if work.extremities is not None else []
    rewrites = work.inp.state_event_ids is not None
    prevs = list(work.event.prev_event_ids)
    if not rewrites and len(old_ext) == 1 and prevs == old_ext:
        return await _linear(store, work, after)
    # An extremity the event descends from through a gap closed with `old` events is no
    # longer one (old events never touch extremities, so nothing else removed it).
    others = [e for e in old_ext if e not in prevs]
    stale = await _reached_through_old(store, work, set(others)) if others and not rewrites else set()
    new_ext = _new_extremities(work, [e for e in old_ext if e not in stale])
    old_current = await store.current_state(work.room_id)
    merge: Merge | None = None
    if (
        not rewrites
        and not stale
        and not work.event.is_state
        and len(prevs) == 1
        and prevs[0] in old_ext
        and old_current is not None
    ):
        # A non-state event on one branch of a fork: the state after it equals the state
        # after the extremity it replaces, so the resolution over extremities is unchanged.
        # Not when a stale extremity was dropped: the resolution then loses its branch.
        new_current = old_current
        adv = Advance(new_ext, None)
    else:
        if new_ext == [work.event_id]:
            new_current = after
        else:
            others = [e for e in new_ext if e != work.event_id]
            after_others = await store.state_after(others)
            handles = [after_others[e] for e in others if e in after_others]
            new_current, merge = await resolve_handles(store, work, [*handles, after])
        adv = Advance(new_ext, new_current, merge=merge)
        adv.adds, adv.removes = await store.diff(None if rewrites else old_current, new_current)
    assert work.state_before is not None
    adv.before_adds, adv.before_removes = await store.diff(new_current, work.state_before)
    return adv
