"""Checks on what other servers answer a joining, leaving or inviting server.

Spec: https://spec.matrix.org/latest/server-server-api/#joining-rooms (make_join's template,
send_join's state and auth chain), https://spec.matrix.org/latest/server-server-api/#leaving-rooms-rejecting-invites,
https://spec.matrix.org/latest/server-server-api/#inviting-to-a-room, and "Checks performed on
receipt of a PDU" (https://spec.matrix.org/latest/server-server-api/#checks-performed-on-receipt-of-a-pdu).

A resident server's answer is trusted for nothing it can be held to:

- a template must be the membership event asked for (type, state key, sender, membership,
  room) in a room version we support; we fill in the rest ourselves, sign it, and our own
  auth rules judge it again when it is submitted;
- the state and auth chain of a `send_join` answer must each be a well-formed event of the
  room (format, event ID derived as the version says, content hash), every auth event they
  cite must be among them, and each must pass the auth rules against its own auth events
  (steps 1-4 of the receipt checks). One bad event refuses the whole answer: a server that
  sends one forged event is not trusted for the others.

Pure: the events come in decoded, the verdict goes out as a value.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.core.auth import check_auth, check_auth_event_list
from worker.core.auth.common import CREATE, CREATE_KEY
from worker.core.events import MEMBER, Event, StateKey
from worker.core.format import parse_pdu, room_version_of_create
from worker.core.hashes import content_hash, room_id_for_create, unpadded_b64
from worker.core.outcomes import Rejection
from worker.core.versions import EventIdFormat, RoomRules

# Keys a template may carry that we replace or drop before signing.
_NOT_KEPT = ("signatures", "hashes", "unsigned", "age_ts", "outlier", "destinations")


def _bad(code: str, reason: str) -> Rejection:
    return Rejection(code, reason, "federation")


def check_template(
    pdu: object,
    rules: RoomRules,
    *,
    room_id: str,
    user_id: str,
    membership: str,
) -> dict[str, Any] | Rejection:
    """The template of a `make_join` / `make_leave` answer, cleaned for signing, or why it is
    not the event asked for.

    The template must be `user_id`'s own `m.room.member` event with `membership` in
    `room_id`, naming prev and auth events (we cannot choose those: only a resident knows
    the room's head).
    """
    if not isinstance(pdu, Mapping):
        return _bad("bad_template", "the template is not a JSON object")
    if pdu.get("type") != MEMBER:
        return _bad("bad_template", f"the template is a {pdu.get('type')!r} event, not m.room.member")
    if pdu.get("room_id") != room_id:
        return _bad("wrong_room", f"the template is for room {pdu.get('room_id')!r}, not {room_id}")
    if pdu.get("state_key") != user_id or pdu.get("sender") != user_id:
        return _bad(
            "wrong_user",
            f"the template is for {pdu.get('state_key')!r} sent by {pdu.get('sender')!r}, "
            f"not {user_id}",
        )
    content = pdu.get("content")
    if not isinstance(content, Mapping) or content.get("membership") != membership:
        got = content.get("membership") if isinstance(content, Mapping) else None
        return _bad("wrong_membership", f"the template's membership is {got!r}, not {membership}")
    for refs in ("prev_events", "auth_events"):
        if not isinstance(pdu.get(refs), list):
            return _bad("bad_template", f"the template has no {refs} list")
    if not pdu.get("prev_events"):
        return _bad("bad_template", "the template names no prev_events")
    template = {k: v for k, v in pdu.items() if k not in _NOT_KEPT}
    if rules.event_id_format is not EventIdFormat.CARRIED:
        template.pop("event_id", None)
    return template


def fill_template(
    template: Mapping[str, Any],
    *,
    origin: str,
    origin_server_ts: int,
    content: Mapping[str, Any],
    event_id_hint: str,
    rules: RoomRules,
) -> dict[str, Any]:
    """Our event from a checked template: our time, origin and extra content (the
    template's membership wins), and in v1/v2 an event ID of ours. Unsigned yet."""
    pdu = dict(template)
    pdu["origin"] = origin
    pdu["origin_server_ts"] = origin_server_ts
    pdu["content"] = {**content, **dict(template["content"])}
    if rules.event_id_format is EventIdFormat.CARRIED:
        pdu["event_id"] = event_id_hint
    return pdu


def check_event(pdu: object, rules: RoomRules, room_id: str) -> Event | Rejection:
    """One PDU of an answer, as an `Event`: format, event ID (v3+ derived; a carried one
    must agree), room, content hash. A redacted event whose hash no longer covers its
    content is refused too: a state we store must be whole."""
    if not isinstance(pdu, Mapping):
        return _bad("not_object", "an event of the answer is not a JSON object")
    body: dict[str, Any] = dict(pdu)
    carried = body.get("event_id")
    if rules.event_id_format is not EventIdFormat.CARRIED:
        body.pop("event_id", None)
    event = parse_pdu(body, rules)
    if isinstance(event, Rejection):
        return event
    if isinstance(carried, str) and carried != event.event_id:
        return _bad(
            "event_id_mismatch", f"an event claims the ID {carried}, its hash gives {event.event_id}"
        )
    room = room_id_for_create(body, rules) if _is_create(event) and rules.room_id_from_create_event else event.room_id
    if room != room_id:
        return _bad("wrong_room", f"event {event.event_id} is of room {room!r}, not {room_id}")
    hashes = body.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if claimed != unpadded_b64(content_hash(body)):
        return _bad("bad_content_hash", f"event {event.event_id}: content hash mismatch")
    return event


def _is_create(event: Event) -> bool:
    return event.type == CREATE and event.state_key == ""


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """A checked `send_join` answer: every event in an order where auth events come first,
    and the IDs of the state before the join."""

    events: tuple[Event, ...]
    state_ids: tuple[str, ...]
    create: Event


def check_room_events(
    state: Sequence[object],
    auth_chain: Sequence[object],
    rules: RoomRules,
    room_id: str,
    *,
    max_events: int,
) -> RoomSnapshot | Rejection:
    """The state and auth chain of a `send_join` answer, checked (see the module docstring).

    `max_events` bounds the two together: a bigger answer is refused before any hashing.
    """
    if len(state) + len(auth_chain) > max_events:
        return _bad(
            "oversized_state",
            f"the answer has {len(state) + len(auth_chain)} events, more than {max_events}",
        )
    by_id: dict[str, Event] = {}
    state_ids: list[str] = []
    keys: dict[StateKey, str] = {}
    for part, pdus in (("state", state), ("auth_chain", auth_chain)):
        for pdu in pdus:
            event = check_event(pdu, rules, room_id)
            if isinstance(event, Rejection):
                return event
            by_id.setdefault(event.event_id, event)
            if part != "state":
                continue
            key = event.state_tuple
            if key is None:
                return _bad("not_state", f"event {event.event_id} of the state has no state_key")
            if keys.setdefault(key, event.event_id) != event.event_id:
                return _bad("duplicate_state", f"the state has two events for {key}")
            state_ids.append(event.event_id)
    create_id = keys.get(CREATE_KEY)
    if create_id is None:
        return _bad("no_create_event", "the state has no m.room.create event")
    create = by_id[create_id]
    if room_version_of_create(create.pdu) != rules.version:
        return _bad(
            "wrong_room_version",
            f"the create event names version {room_version_of_create(create.pdu)!r}, "
            f"the template {rules.version!r}",
        )
    ordered = auth_order(by_id.values())
    if isinstance(ordered, Rejection):
        return ordered
    for event in ordered:
        problem = check_own_auth(event, by_id, create)
        if problem is not None:
            return _bad(problem.code, f"event {event.event_id}: {problem.reason}")
    return RoomSnapshot(tuple(ordered), tuple(state_ids), create)


def auth_order(events: Iterable[Event]) -> list[Event] | Rejection:
    """The events with each one's auth events before it (ties by depth, then ID), or why
    that cannot be: an auth event that is not among them, or a cycle."""
    by_id = {e.event_id: e for e in events}
    waiting: dict[str, int] = {}
    cited_by: dict[str, list[str]] = {}
    for event in by_id.values():
        deps = set(event.auth_event_ids)
        missing = sorted(d for d in deps if d not in by_id)
        if missing:
            return _bad(
                "missing_auth_events",
                f"event {event.event_id} cites auth events the answer lacks: {', '.join(missing)}",
            )
        waiting[event.event_id] = len(deps)
        for dep in deps:
            cited_by.setdefault(dep, []).append(event.event_id)
    # A heap of (depth, ID): the order never depends on the answer's order (STYLE R9).
    ready = [(by_id[i].depth, i) for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    out: list[Event] = []
    while ready:
        _, event_id = heapq.heappop(ready)
        out.append(by_id[event_id])
        for later in cited_by.get(event_id, ()):
            waiting[later] -= 1
            if waiting[later] == 0:
                heapq.heappush(ready, (by_id[later].depth, later))
    if len(out) != len(by_id):
        return _bad("auth_cycle", "the answer's auth events form a cycle")
    return out


def check_own_auth(event: Event, by_id: Mapping[str, Event], create: Event) -> Rejection | None:
    """The auth rules against the event's own auth events (receipt step 4); v12+ reads the
    create event, which it does not list."""
    if _is_create(event):
        return check_auth(event, {CREATE_KEY: event})
    listed = [by_id[a] for a in event.auth_event_ids]
    problem = check_auth_event_list(event, listed)
    if problem is not None:
        return problem
    auth: dict[StateKey, Event] = {e.state_tuple: e for e in listed if e.state_tuple is not None}
    auth.setdefault(CREATE_KEY, create)
    return check_auth(event, auth)


def stripped_state(events: Iterable[Event]) -> list[dict[str, Any]]:
    """Stripped state events (spec "Stripped state": type, state_key, sender, content) for
    an invite's `invite_room_state`, in a fixed order."""
    out = [
        {"type": e.type, "state_key": e.state_key, "sender": e.sender, "content": dict(e.content)}
        for e in events
        if e.state_key is not None
    ]
    return sorted(out, key=lambda s: (s["type"], s["state_key"]))


__all__ = [
    "RoomSnapshot",
    "auth_order",
    "check_event",
    "check_own_auth",
    "check_room_events",
    "check_template",
    "fill_template",
    "stripped_state",
]
