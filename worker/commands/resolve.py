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

from worker.commands._dag import EXIT_BAD_INPUT, BadInput, parse_events, read_document
from worker.core.events import Event, StateKey
from worker.core.stateres import UnknownEvent, resolve
from worker.core.versions import RoomRules

HELP = "resolve state sets of a room DAG given as JSON; print the resolved state"




def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="JSON input, or - for stdin")
    parser.add_argument("--stats", action="store_true", help="also print resolution stats")


def _str_list(doc: Mapping[str, Any], name: str, default: list[str] | None = None) -> list[str]:
    value = doc.get(name, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f'"{name}" must be a list of strings')
    return value


def parse_input(doc: Any) -> tuple[RoomRules, list[dict[StateKey, str]], dict[str, Event], list[str]]:
    """Validate the input document; every problem is a `BadInput` with a clear message."""
    events, rules = parse_events(doc)
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
        rules, state_sets, events, rejected = parse_input(read_document(args.file))
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
