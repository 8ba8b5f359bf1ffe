"""`python -m worker resolve FILE`: run state resolution over a JSON description of a DAG.

Input (FILE, or `-` for stdin):

    {"room_version": "10", "events": [PDU, ...], "state_sets": [[event_id, ...], ...],
     "rejected": [event_id, ...]}

A PDU that carries its `event_id` may use readable IDs ("$pl_bob", "!room:test") even in
v3+ rooms, as test DAGs do; every other format rule still applies. Each state set lists event IDs; their (type, state_key) come from the events. A PDU's carried
`event_id` is used as given, otherwise the room version derives it. Output on stdout:

    {"state": [[type, state_key, event_id], ...]}   sorted by type, then state key

Bad input (unreadable file, bad JSON, unknown room version, invalid PDU, an ID that names no
event, a non-state event in a state set) prints one clear line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from worker.core.events import Event, StateKey
from worker.core.format import parse_pdu
from worker.core.outcomes import Rejection
from worker.core.reasons import Reason
from worker.core.stateres import UnknownEvent, resolve
from worker.core.versions import RoomRules, rules_for

HELP = "resolve state sets of a room DAG given as JSON; print the resolved state"

EXIT_BAD_INPUT = 2
_READABLE_ID_CODES = frozenset({Reason.BAD_EVENT_ID.value, Reason.BAD_ROOM_ID.value})


class BadInput(Exception):
    """The input file cannot be resolved; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="JSON input, or - for stdin")
    parser.add_argument("--stats", action="store_true", help="also print resolution stats")


def _read(path: str) -> Any:
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


def _str_list(doc: Mapping[str, Any], name: str, default: list[str] | None = None) -> list[str]:
    value = doc.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f'"{name}" must be a list of strings')
    return value


def parse_input(doc: Any) -> tuple[RoomRules, list[dict[StateKey, str]], dict[str, Event], list[str]]:
    """Validate the input document; every problem is a `BadInput` with a clear message."""
    if not isinstance(doc, dict):
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
            # Test DAGs use readable IDs ("$pl_bob", "!room:test") where v3+ wants hashes:
            # a PDU that carries its own `event_id` may use them; nothing else is relaxed.
            if not (isinstance(carried, str) and parsed.code in _READABLE_ID_CODES):
                raise BadInput(f"events[{i}] is invalid ({parsed.code}): {parsed.reason}")
            parsed = Event(pdu, carried, rules)
        if parsed.event_id in events:
            raise BadInput(f"events[{i}] repeats the event ID {parsed.event_id!r}")
        events[parsed.event_id] = parsed
    raw_sets = doc.get("state_sets")
    if not isinstance(raw_sets, list) or not raw_sets:
        raise BadInput('"state_sets" must be a non-empty list of lists of event IDs')
    state_sets: list[dict[StateKey, str]] = []
    for i, ids in enumerate(raw_sets):
        if not isinstance(ids, list) or not all(isinstance(e, str) for e in ids):
            raise BadInput(f"state_sets[{i}] must be a list of event IDs")
        state: dict[StateKey, str] = {}
        for eid in ids:
            ev = events.get(eid)
            if ev is None:
                raise BadInput(f"state_sets[{i}] names {eid!r}, which is not among the events")
            key = ev.state_tuple
            if key is None:
                raise BadInput(f"state_sets[{i}] names {eid!r}, which is not a state event")
            if key in state:
                raise BadInput(f"state_sets[{i}] has two events for {key}")
            state[key] = eid
        state_sets.append(state)
    rejected = _str_list(doc, "rejected", [])
    return rules, state_sets, events, rejected


def run(args: argparse.Namespace) -> int:
    try:
        rules, state_sets, events, rejected = parse_input(_read(args.file))
        state, stats = resolve(rules, state_sets, events.get, rejected=frozenset(rejected))
    except BadInput as exc:
        print(f"roomserver resolve: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UnknownEvent as exc:
        print(f"roomserver resolve: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out: dict[str, Any] = {"state": [[t, k, e] for (t, k), e in sorted(state.items())]}
    if args.stats:
        out["stats"] = {
            "conflicted": stats.conflicted,
            "auth_difference": stats.auth_difference,
            "auth_checked": stats.auth_checked,
        }
    print(json.dumps(out, indent=1))
    return 0
