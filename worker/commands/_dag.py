"""Reading a JSON DAG file for the debugging commands (`auth`, `resolve`).

Both take `{"room_version": "...", "events": [PDU, ...], ...}`. A PDU's carried `event_id`
is used as given: test DAGs use readable IDs ("$pl_bob", "!room:test") where v3+ wants
hashes, so for a PDU that carries its own ID those two ID-format problems are forgiven;
every other format rule still applies. Otherwise the room version derives the ID.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from worker.core.events import Event
from worker.core.format import parse_pdu
from worker.core.outcomes import Rejection
from worker.core.reasons import Reason
from worker.core.versions import RoomRules, rules_for

EXIT_BAD_INPUT = 2
_READABLE_ID_CODES = frozenset({Reason.BAD_EVENT_ID.value, Reason.BAD_ROOM_ID.value})


class BadInput(Exception):
    """The input cannot be used; the message says why."""


def read_document(path: str) -> Any:
    """The JSON document at `path` (`-`: stdin)."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path} is not UTF-8: {exc.reason}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from exc


def parse_events(doc: Any) -> tuple[dict[str, Event], RoomRules]:
    """The document's events by ID, and its room version's rules."""
    if not isinstance(doc, Mapping):
        raise BadInput("the input must be a JSON object")
    version = doc.get("room_version")
    if not isinstance(version, str):
        raise BadInput('"room_version" must be a string')
    rules = rules_for(version)
    if rules is None:
        raise BadInput(f"unknown room version {version!r}")
    pdus = doc.get("events")
    if not isinstance(pdus, list):
        raise BadInput('"events" must be a list of PDUs')
    events: dict[str, Event] = {}
    for i, pdu in enumerate(pdus):
        if not isinstance(pdu, dict):
            raise BadInput(f"events[{i}] is not a JSON object")
        carried = pdu.get("event_id")
        parsed = parse_pdu(pdu, rules, event_id=carried if isinstance(carried, str) else None)
        if isinstance(parsed, Rejection):
            if not (isinstance(carried, str) and parsed.code in _READABLE_ID_CODES):
                raise BadInput(f"events[{i}] is invalid ({parsed.code}): {parsed.reason}")
            parsed = Event(pdu, carried, rules)
        if parsed.event_id in events:
            raise BadInput(f"events[{i}] repeats the event ID {parsed.event_id!r}")
        events[parsed.event_id] = parsed
    return events, rules
