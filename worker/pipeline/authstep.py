"""Steps 5 and 7 of DESIGN §2: auth against the event's own auth events, against the state
before it, and (for `kind=new`) the soft-fail check against the room's current state.

The core does the checking (`worker.core.auth`); this module only gathers what it needs,
reading only the state entries the auth rules select ("lookups, not copies").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from worker.core.auth import (
    auth_types_for_event,
    check_auth,
    check_auth_event_list,
    check_soft_fail,
)
from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome, Rejection
from worker.pipeline.model import StateHandle, Work

CREATE_KEY: StateKey = ("m.room.create", "")
HISTORY_KEY: StateKey = ("m.room.history_visibility", "")


def is_create(event: Event) -> bool:
    return event.type == "m.room.create" and event.state_key == ""


def create_event_id(work: Work) -> str | None:
    """The create event's ID where the room ID derives from it (v12+), else None."""
    if work.rules.room_id_from_create_event and work.room_id.startswith("!"):
        return "$" + work.room_id[1:]
    return None


def auth_keys(event: Event) -> list[StateKey]:
    """The state entries the auth check reads, plus history visibility for the outputs."""
    keys = auth_types_for_event(event)
    extra = [k for k in (CREATE_KEY, HISTORY_KEY) if k not in keys]
    return [*keys, *extra]


def check_own_auth_events(work: Work) -> Rejection | None:
    """Auth against the event's own `auth_events` (spec "Checks performed on receipt of a PDU",
    step 4: "Passes authorization rules based on the event's auth events")."""
    event = work.event
    if is_create(event):
        return check_auth(event, {CREATE_KEY: event})
    listed: list[Event] = []
    for aid in event.auth_event_ids:
        stored = work.known[aid]
        if stored.outcome is Outcome.REJECTED:
            # Auth rules, all versions: an event whose auth events were themselves rejected
            # is rejected.
            return Rejection(
                "auth_event_rejected",
                f"auth event {aid} was itself rejected",
                "auth_events",
            )
        listed.append(stored.event)
    problem = check_auth_event_list(event, listed)
    if problem is not None:
        return problem
    by_key: dict[StateKey, Event] = {}
    for e in listed:
        key = e.state_tuple
        if key is not None:
            by_key[key] = e
    create_id = create_event_id(work)
    if CREATE_KEY not in by_key and create_id is not None and create_id in work.known:
        # v12+: the create event is not listed, but the rules still read it.
        by_key[CREATE_KEY] = work.known[create_id].event
    return check_auth(event, by_key)


class AuthStateReads(Protocol):
    """What the auth checks read: entries of a state, and the room's current state."""

    async def current_state(self, room_id: str) -> StateHandle | None:
        """The room's current state; None when it has none yet."""
        ...

    async def lookup(self, state: StateHandle, keys: Sequence[StateKey]) -> dict[StateKey, Event]:
        """The events at the given keys of `state` (absent keys are absent)."""
        ...


async def check_state_before(store: AuthStateReads, work: Work, state: StateHandle) -> Rejection | None:
    """Auth against the state before the event (spec step 5 of PDU receipt)."""
    event = work.event
    if is_create(event):
        return None
    work.before_entries = await store.lookup(state, auth_keys(event))
    return check_auth(event, work.before_entries)


async def check_current_state(store: AuthStateReads, work: Work) -> Rejection | None:
    """Soft-fail check against the room's current state (spec step 6 of PDU receipt)."""
    current = await store.current_state(work.room_id)
    if current is None or is_create(work.event):
        return None
    entries = await store.lookup(current, auth_keys(work.event))
    return check_soft_fail(work.event, entries)
