"""Tiny event factory for storage tests: PDUs as the store sees them, no auth, no hashes."""

from __future__ import annotations

from typing import Any

import msgspec

from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome
from worker.core.versions import rules_for
from worker.pipeline.ports import EventWrite, OutputRecord, StateHandle

VERSION = "10"
RULES = rules_for(VERSION)
assert RULES is not None


def make_event(
    room_id: str,
    event_id: str,
    etype: str,
    state_key: str | None = None,
    *,
    content: dict[str, Any] | None = None,
    prev: list[str] | None = None,
    auth: list[str] | None = None,
    sender: str = "@alice:test",
    depth: int = 1,
    **extra: Any,
) -> tuple[Event, bytes]:
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "type": etype,
        "sender": sender,
        "content": content if content is not None else {},
        "prev_events": prev or [],
        "auth_events": auth or [],
        "depth": depth,
        "origin_server_ts": 1,
        "hashes": {"sha256": "x"},
        "signatures": {},
        **extra,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    assert RULES is not None
    return Event(pdu, event_id, RULES), msgspec.json.encode(pdu)


def member(
    room_id: str, event_id: str, user: str, membership: str = "join", **kw: Any
) -> tuple[Event, bytes]:
    return make_event(
        room_id, event_id, "m.room.member", user, content={"membership": membership}, **kw
    )


def write(
    event: Event,
    raw: bytes,
    *,
    before: StateHandle | None,
    current: StateHandle | None = None,
    extremities: list[str] | None = None,
    outcome: Outcome = Outcome.ACCEPTED,
    kind: str = "new",
    outputs: tuple[OutputRecord, ...] = (),
    redactions: tuple[tuple[str, str], ...] = (),
) -> EventWrite:
    return EventWrite(
        room_id=event.room_id,
        room_version=VERSION,
        event=event,
        event_json=raw,
        kind=kind,
        outcome=outcome,
        state_before=before,
        extremities=extremities,
        current_state=current,
        outputs=outputs,
        redactions=redactions,
    )


def key(event: Event) -> StateKey:
    k = event.state_tuple
    assert k is not None
    return k
