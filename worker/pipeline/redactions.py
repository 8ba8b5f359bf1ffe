"""Pairing redactions with their targets, in either order of arrival.

A redaction is applied (the target's stored JSON is redacted for good, and `redacted_event`
is published) once both events are stored and the redaction is authorised:
- room versions 1 and 2: the auth rules already checked it (sender's power ≥ `redact`, or
  the target's event ID is from the sender's server), so an accepted redaction is authorised;
- room versions 3 and later (spec "Redactions", client-server API and room versions 3+): the
  redaction's sender has power ≥ `redact` in the state before the redaction, or is on the
  same server as the target's sender.
Only accepted `new`/`old` redactions count (the store's `pending_redactions` lists only
accepted ones); a redaction of itself is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from worker.core.auth import PowerLevels
from worker.core.events import Event, StateKey
from worker.core.versions import EventIdFormat
from worker.messages import RedactedEvent
from worker.pipeline.authstep import CREATE_KEY, AuthStateReads
from worker.pipeline.events import event_raw
from worker.pipeline.memberships import POWER_LEVELS_KEY
from worker.pipeline.model import StateHandle, StoredEvent, Work

REDACTION = "m.room.redaction"


def _server(user_id: str) -> str:
    return user_id.partition(":")[2]


def authorised(redaction: Event, target: Event, state: Mapping[StateKey, Event]) -> bool:
    """Whether `redaction` may redact `target`; `state` is the state before the redaction
    (power levels and create event entries suffice)."""
    if redaction.rules.event_id_format is EventIdFormat.CARRIED:
        return True
    if _server(redaction.sender) == _server(target.sender):
        return True
    power = PowerLevels.from_auth_events(redaction.rules, state)
    return power.user_level(redaction.sender) >= power.named("redact")


class RedactionReads(AuthStateReads, Protocol):
    """What pairing redactions with their targets reads: the target, redactions waiting
    for an event, and the power levels before a redaction."""

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The known events among `event_ids` (unknown ones are absent)."""
        ...

    async def pending_redactions(self, target_ids: Sequence[str]) -> dict[str, list[str]]:
        """For each target, the IDs of stored accepted redactions of it not yet applied."""
        ...

    async def state_after(self, event_ids: Sequence[str]) -> dict[str, StateHandle]:
        """State after each event that has state; others absent (`state.StateBeforeStore`)."""
        ...


async def _state_before_redaction(
    store: RedactionReads, redaction: Event
) -> Mapping[StateKey, Event]:
    """Power entries before a stored redaction: after its one prev event; after a merge or
    without stored state, the room's current state (an approximation that only matters when
    power changed concurrently with the redaction)."""
    keys = [POWER_LEVELS_KEY, CREATE_KEY]
    prevs = redaction.prev_event_ids
    handle = None
    if len(prevs) == 1:
        handle = (await store.state_after(prevs)).get(prevs[0])
    if handle is None:
        handle = await store.current_state(redaction.room_id)
    return await store.lookup(handle, keys) if handle is not None else {}


async def pair(store: RedactionReads, work: Work) -> list[tuple[Event, Event]]:
    """(redaction, target) pairs that become applicable now that `work.event` is accepted."""
    event = work.event
    pairs: list[tuple[Event, Event]] = []
    if event.type == REDACTION and event.redacts and event.redacts != event.event_id:
        target = (await store.events([event.redacts])).get(event.redacts)
        same_room = target is not None and target.event.room_id == event.room_id
        if target is not None and same_room and authorised(event, target.event, work.before_entries):
            pairs.append((event, target.event))
    return pairs + await pair_waiting(store, work)


async def pair_waiting(store: RedactionReads, work: Work) -> list[tuple[Event, Event]]:
    """(redaction, `work.event`) pairs for the stored redactions that arrived before it."""
    event = work.event
    pairs: list[tuple[Event, Event]] = []
    waiting = work.pending_redactions
    if waiting is None:
        waiting = await store.pending_redactions([event.event_id])
    pending = waiting.get(event.event_id, [])
    if pending:
        stored = await store.events(pending)
        for rid in sorted(stored):
            red = stored[rid].event
            if red.room_id != event.room_id or rid == event.event_id:
                continue
            if authorised(red, event, await _state_before_redaction(store, red)):
                pairs.append((red, event))
    return pairs


def redacted_outputs(pairs: list[tuple[Event, Event]]) -> list[tuple[str, RedactedEvent]]:
    return [
        (red.event_id, RedactedEvent(redacted_event_id=target.event_id, redacted_because=event_raw(red)))
        for red, target in pairs
    ]
