"""The one event builder: from what a user wants to say to a hashed, signed, checked PDU.

Spec: https://spec.matrix.org/latest/server-server-api/#pdus (the fields of a PDU),
https://spec.matrix.org/latest/server-server-api/#auth-events-selection,
https://spec.matrix.org/latest/server-server-api/#signing-events, and the room version pages
for event and room ID formats.

A `Draft` (type, sender, content, state key, redacts) is built on a `RoomHead`: the room's
forward extremities and the current state events the auth selection needs. The result is the
PDU with

- `prev_events`: the extremities, at most `MAX_PREV_EVENTS`, deepest first (Synapse keeps ten
  and prefers the most recent: a room with many forks merges them a few at a time);
- `auth_events`: the spec's selection from current state (v12: never the create event);
- `depth`: the greatest depth among the prev events plus one (1 for the create event);
- `hashes.sha256` and this server's signature; the event ID (and for a v12 create event the
  room ID) derived as the room version says.

Then it is checked as the roomserver will check it: format, its auth event list, and the auth
rules against the state it was built on. A refusal is returned, never raised, so the perform
can answer `forbidden` without submitting anything.

Pure: the clock, the random parts of v1-v11 IDs and the key come in as arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.core.auth import auth_types_for_event, check_auth, check_auth_event_list
from worker.core.auth.common import CREATE, CREATE_KEY
from worker.core.canonical import check_json_values
from worker.core.events import Event, StateKey
from worker.core.format import parse_pdu
from worker.core.hashes import (
    event_id_of_reference_hash,
    reference_hash,
    room_id_of_reference_hash,
    unpadded_b64,
)
from worker.core.outcomes import Rejection
from worker.core.signing import ServerKey, hash_and_sign_bytes
from worker.core.versions import EventIdFormat, RoomRules

# Synapse's bound on prev_events for events it creates (`_get_prev_events_for_room`).
MAX_PREV_EVENTS = 10
# Exempt from the strict value rules, as format validation exempts it.
_UNSIGNED = ("unsigned",)


@dataclass(frozen=True, slots=True)
class Draft:
    """What a user wants to send. `state_key` None: a message (non-state) event."""

    type: str
    sender: str
    content: Mapping[str, Any]
    state_key: str | None = None
    # The event a redaction redacts; placed where the room version keeps it.
    redacts: str | None = None


@dataclass(frozen=True, slots=True)
class RoomHead:
    """What the next event of a room is built on.

    `latest`: the forward extremities (events with their PDUs, for depth and, in v1/v2, the
    reference hashes of prev_events). `state`: current state events, at least those of the
    keys `needed_state` names. A room being created starts from `RoomHead(rules, room_id)`
    (v12: `room_id` empty, the create event makes it).
    """

    rules: RoomRules
    room_id: str
    latest: tuple[Event, ...] = ()
    state: Mapping[StateKey, Event] = field(default_factory=dict)

    def advance(self, built: Built) -> RoomHead:
        """The head after `built` was accepted: it is the only extremity, its state applied.

        Used to build a chain of events (room creation, upgrades) before any is stored.
        """
        event = built.event
        state = dict(self.state)
        if event.state_tuple is not None:
            state[event.state_tuple] = event
        return RoomHead(self.rules, built.room_id, (event,), state)


@dataclass(frozen=True, slots=True)
class Built:
    """A built event: the signed PDU (no `event_id` in v3+), its ID and its view."""

    pdu: dict[str, Any]
    event: Event
    # The room's ID; for a v12 create event, the one its reference hash makes.
    room_id: str

    @property
    def event_id(self) -> str:
        return self.event.event_id


@dataclass(frozen=True, slots=True)
class Refused:
    """The event would not be allowed. `invalid`: its format is wrong (a bad request), else
    the auth rules refuse it (forbidden)."""

    rejection: Rejection
    invalid: bool = False


def _draft_view(draft: Draft, rules: RoomRules, room_id: str) -> Event:
    """An Event view of the draft, enough for the auth events selection."""
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "type": draft.type,
        "sender": draft.sender,
        "content": dict(draft.content),
    }
    if draft.state_key is not None:
        pdu["state_key"] = draft.state_key
    return Event(pdu, "", rules)


def needed_state(draft: Draft, rules: RoomRules) -> list[StateKey]:
    """The current state keys `build` reads for `draft`: its auth selection and the create
    event (the rules always need it, also in v12 where it is not listed)."""
    keys = auth_types_for_event(_draft_view(draft, rules, ""))
    if CREATE_KEY not in keys and draft.type != CREATE:
        keys.insert(0, CREATE_KEY)
    return keys


def choose_prev_events(latest: Iterable[Event]) -> list[Event]:
    """At most `MAX_PREV_EVENTS` extremities, deepest first (ties by ID, deterministic)."""
    ordered = sorted(latest, key=lambda e: (-e.depth, e.event_id))
    return ordered[:MAX_PREV_EVENTS]


def _refs(events: Iterable[Event], rules: RoomRules) -> list[Any]:
    """prev_events / auth_events as the room version writes them."""
    if rules.reference_pairs:
        # v1, v2: [event_id, {"sha256": reference hash}] pairs.
        return [
            [e.event_id, {"sha256": unpadded_b64(reference_hash(e.pdu, rules))}] for e in events
        ]
    return [e.event_id for e in events]


def build(
    draft: Draft,
    head: RoomHead,
    *,
    key: ServerKey,
    origin_server_ts: int,
    event_id_hint: str = "",
) -> Built | Refused:
    """Build, hash, sign and check one event on `head`.

    `event_id_hint`: the event ID of a v1/v2 event (`$opaque:server`, which those versions
    carry); ignored from v3 on, where the ID is the reference hash.
    """
    rules = head.rules
    is_create = draft.type == CREATE and draft.state_key == ""
    prevs = [] if is_create else choose_prev_events(head.latest)
    view = _draft_view(draft, rules, head.room_id)
    selected = [head.state[k] for k in auth_types_for_event(view) if k in head.state]
    content = dict(draft.content)
    # v1-v10: the create event names its creator; v11+ take the sender instead.
    if is_create and not rules.implicit_room_creator:
        content.setdefault("creator", draft.sender)
    pdu: dict[str, Any] = {
        "type": draft.type,
        "sender": draft.sender,
        "content": content,
        "origin_server_ts": origin_server_ts,
        "depth": max((e.depth for e in prevs), default=0) + 1,
        "prev_events": _refs(prevs, rules),
        "auth_events": _refs(selected, rules),
    }
    # v12: the create event has no room ID; its reference hash makes one.
    if not (is_create and rules.room_id_from_create_event):
        pdu["room_id"] = head.room_id
    if draft.state_key is not None:
        pdu["state_key"] = draft.state_key
    if draft.redacts is not None:
        if rules.redacts_in_content:
            content["redacts"] = draft.redacts
        else:
            pdu["redacts"] = draft.redacts
    if rules.event_id_format is EventIdFormat.CARRIED:
        pdu["event_id"] = event_id_hint
    # The first step of format validation, before hashing: the draft's values decide it
    # (what the builder adds are strings and in-range integers), and under strict rules it
    # leaves no float to look for when the hashes and the size check encode the event.
    problem = check_json_values(pdu, strict=rules.strict_canonical_json, lenient_keys=_UNSIGNED)
    if problem is not None:
        return Refused(problem, invalid=True)
    signed, covered = hash_and_sign_bytes(pdu, rules, key, float_free=rules.strict_canonical_json)
    # The signed bytes are the reference hash's (v3+ events carry no `event_id` here): the
    # ID and a v12 room ID come from them without redacting and encoding the event again.
    digest = hashlib.sha256(covered).digest()
    if rules.event_id_format is EventIdFormat.CARRIED:
        event_id = event_id_hint
    else:
        event_id = event_id_of_reference_hash(digest, rules)
    event = parse_pdu(signed, rules, event_id=event_id, values_checked=True)
    if isinstance(event, Rejection):
        return Refused(event, invalid=True)
    room_id = head.room_id
    if is_create and rules.room_id_from_create_event:
        room_id = room_id_of_reference_hash(digest)
    refusal = check(event, selected, head.state)
    if refusal is not None:
        return Refused(refusal)
    return Built(signed, event, room_id)


def check(event: Event, listed: list[Event], state: Mapping[StateKey, Event]) -> Rejection | None:
    """The roomserver's own checks on a built event: its auth event list, then the rules
    against the state it was built on (with the create event, which v12 does not list)."""
    bad = check_auth_event_list(event, listed)
    if bad is not None:
        return bad
    auth: dict[StateKey, Event] = {e.state_tuple: e for e in listed if e.state_tuple}
    create = state.get(CREATE_KEY)
    if create is not None:
        auth.setdefault(CREATE_KEY, create)
    return check_auth(event, auth)


__all__ = [
    "MAX_PREV_EVENTS",
    "Built",
    "Draft",
    "Refused",
    "RoomHead",
    "build",
    "check",
    "choose_prev_events",
    "needed_state",
]
