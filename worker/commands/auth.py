"""`python -m worker auth FILE`: run the authorisation rules on one event of a JSON DAG.

Input (FILE, or `-` for stdin):

    {"room_version": "10", "events": [PDU, ...], "state": [event_id, ...], "event_id": "..."}

`events` holds the event to check, its auth events and the state events; `state` lists the
state before the event (its (type, state_key) come from the events); without `state` only the
event's own auth events are used, as for an outlier. A PDU's carried
`event_id` is used as given (readable IDs such as "$join_bob" are fine, as in test DAGs),
otherwise the room version derives it. The event is checked as the pipeline does (DESIGN §2):
its own `auth_events` list (rule 2/3), the rules against its auth events, then the rules
against the given state. Output on stdout:

    {"outcome": "accepted" | "rejected", "reason_code": ..., "reason": ..., "rule": ...}

Bad input (unreadable file, bad JSON, unknown room version, invalid PDU, an ID that names no
event) prints one clear line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from worker.commands._dag import EXIT_BAD_INPUT, BadInput, parse_events, read_document
from worker.core.auth import check_auth, check_auth_event_list
from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome, Rejection

HELP = "check one event of a JSON DAG against the authorisation rules"

_CREATE_KEY: StateKey = ("m.room.create", "")



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="JSON input, or - for stdin")


def _lookup(events: Mapping[str, Event], event_id: Any, what: str) -> Event:
    if not isinstance(event_id, str):
        raise BadInput(f"{what} must be an event ID string")
    found = events.get(event_id)
    if found is None:
        raise BadInput(f"{what} {event_id!r} is not among the events")
    return found


def _as_state(ids: list[Event], what: str) -> dict[StateKey, Event]:
    state: dict[StateKey, Event] = {}
    for ev in ids:
        key = ev.state_tuple
        if key is None:
            raise BadInput(f"{what} names {ev.event_id!r}, which is not a state event")
        if key in state:
            raise BadInput(f"{what} has two events for {key}")
        state[key] = ev
    return state


def _create_for(
    event: Event, events: Mapping[str, Event], *maps: Mapping[StateKey, Event]
) -> Event | None:
    """The room's create event: from the given maps, else (v12) the one the room ID names."""
    for m in maps:
        found = m.get(_CREATE_KEY)
        if found is not None:
            return found
    if event.rules.room_id_from_create_event and event.room_id.startswith("!"):
        return events.get("$" + event.room_id[1:])
    return None


def judge(doc: Any) -> Rejection | None:
    """Rule 2/3 on the event's list, then the rules against its auth events and the state."""
    if not isinstance(doc, dict):
        raise BadInput("the input must be a JSON object")
    events, _ = parse_events(doc)
    event = _lookup(events, doc.get("event_id"), '"event_id"')
    # Without "state", only the event's own auth events are used (an outlier's check).
    raw_state = doc.get("state")
    if raw_state is not None and not isinstance(raw_state, list):
        raise BadInput('"state" must be a list of event IDs')
    state_ids = raw_state or []
    state = _as_state([_lookup(events, e, '"state"') for e in state_ids], '"state"')
    listed = [_lookup(events, a, f"auth event of {event.event_id}") for a in event.auth_event_ids]
    failure = check_auth_event_list(event, listed)
    if failure is not None:
        return failure
    own = _as_state(listed, "auth_events")
    create = _create_for(event, events, own, state)
    if create is not None:
        own.setdefault(_CREATE_KEY, create)
        state.setdefault(_CREATE_KEY, create)
    failure = check_auth(event, own)
    if failure is not None or raw_state is None:
        return failure
    return check_auth(event, state)


def run(args: argparse.Namespace) -> int:
    try:
        failure = judge(read_document(args.file))
    except BadInput as exc:
        print(f"roomserver auth: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if failure is None:
        out: dict[str, Any] = {
            "outcome": Outcome.ACCEPTED.value,
            "reason_code": None,
            "reason": None,
            "rule": None,
        }
    else:
        out = {
            "outcome": Outcome.REJECTED.value,
            "reason_code": failure.code,
            "reason": failure.reason,
            "rule": failure.rule,
        }
    print(json.dumps(out))
    return 0
