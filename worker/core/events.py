"""The event view: a read-only Python view of a PDU, normalised across room versions.

The PDU dict is kept as given (`pdu`), so hashes and redaction work on the original JSON;
the attributes are what the rules read. Building an `Event` does no validation beyond what it
needs to read its fields: format validation is `worker.core.format`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.core.versions import RoomRules

MEMBER = "m.room.member"
# The content key of a membership event authorised by another server (restricted rooms, v8+).
VIA = "join_authorised_via_users_server"

# (event type, state key): the key of a state map.
StateKey = tuple[str, str]
# A state map: (type, state_key) -> event ID.
StateMap = Mapping[StateKey, str]


def _ids(refs: Any, pairs: bool) -> tuple[str, ...]:
    """Event IDs from a prev_events/auth_events list ([id, hashes] pairs in v1 and v2)."""
    if not isinstance(refs, list):
        return ()
    if pairs:
        return tuple(r[0] for r in refs if isinstance(r, list) and r and isinstance(r[0], str))
    return tuple(r for r in refs if isinstance(r, str))


class Event:
    """A PDU as the rules see it. Immutable by convention; cheap to build."""

    __slots__ = (
        "auth_event_ids",
        "canonical",
        "content",
        "depth",
        "event_id",
        "origin_server_ts",
        "pdu",
        "plain_self_membership",
        "prev_event_ids",
        "redacts",
        "room_id",
        "rules",
        "sender",
        "state_key",
        "type",
    )

    event_id: str
    room_id: str
    type: str
    state_key: str | None
    sender: str
    content: Mapping[str, Any]
    prev_event_ids: tuple[str, ...]
    auth_event_ids: tuple[str, ...]
    depth: int
    origin_server_ts: int
    redacts: str | None
    rules: RoomRules
    # The membership of an m.room.member event about its own sender (a self-join,
    # self-leave, ...) that names no authorising server (`join_authorised_via_users_server`),
    # when it is a string; None for every other event. Whether such an event is allowed
    # depends only on the sender's membership and the join rules before it, so state
    # resolution decides thousands of them in a big room from this field alone, without
    # reading their contents.
    plain_self_membership: str | None
    pdu: Mapping[str, Any]
    # The PDU as canonical JSON, when whoever built the event already had it (`parse_pdu`
    # encodes it to check its size); storing the event then needs no second encoding.
    canonical: bytes | None

    def __init__(self, pdu: Mapping[str, Any], event_id: str, rules: RoomRules) -> None:
        self.pdu = pdu
        self.canonical = None
        self.event_id = event_id
        self.rules = rules
        room_id = pdu.get("room_id")
        self.room_id = room_id if isinstance(room_id, str) else ""
        t = pdu.get("type")
        self.type = t if isinstance(t, str) else ""
        sk = pdu.get("state_key")
        self.state_key = sk if isinstance(sk, str) else None
        s = pdu.get("sender")
        self.sender = s if isinstance(s, str) else ""
        c = pdu.get("content")
        self.content = c if isinstance(c, dict) else {}
        own = self.type == MEMBER and self.state_key == self.sender
        m = self.content.get("membership") if own else None
        plain = isinstance(m, str) and VIA not in self.content
        self.plain_self_membership = m if plain else None
        self.prev_event_ids = _ids(pdu.get("prev_events"), rules.reference_pairs)
        self.auth_event_ids = _ids(pdu.get("auth_events"), rules.reference_pairs)
        d = pdu.get("depth")
        self.depth = d if isinstance(d, int) and not isinstance(d, bool) else 0
        ts = pdu.get("origin_server_ts")
        self.origin_server_ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else 0
        # v11 moved `redacts` into content; older versions keep it top-level. Read both, the
        # version's own place first, so that either form of a v11 redaction is understood.
        top = pdu.get("redacts")
        inner = self.content.get("redacts")
        r = (inner if isinstance(inner, str) else top) if rules.redacts_in_content else top
        self.redacts = r if isinstance(r, str) else None

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def state_tuple(self) -> StateKey | None:
        return (self.type, self.state_key) if self.state_key is not None else None

    @property
    def membership(self) -> str | None:
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    def __repr__(self) -> str:
        return f"Event({self.event_id!r}, {self.type!r}, {self.state_key!r})"
