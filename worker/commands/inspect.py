"""`roomserver inspect [ROOM]`: what the roomserver stored about a room, for operators.

Prints the room version, a summary of the current state, members by membership, forward
extremities, forks, the conflicts state resolution decided at each merge (with any state
reset the detector flags), and every rejected or soft-failed event with its reason. Without
ROOM it lists the known rooms. `--json` prints the same as one JSON object.

Reads PostgreSQL directly (DATABASE_URL, else the embedded server of `roomserver run`), so it
works while the worker runs and also when it is stopped. Exit status: 0 shown, 1 unknown room,
3 database unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import Any

import msgspec

from worker.config import EXIT_CONFIG, load_or_report
from worker.core.events import Event
from worker.inspect.model import Summary, summarize
from worker.inspect.reads import InspectError, database_dsn, read_room
from worker.inspect.svg import describe, label

HELP = "show a room: version, state, members, extremities, forks, conflicts, refused events"

EXIT_UNKNOWN = 1
EXIT_UNREACHABLE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", nargs="?", help="room ID (omit to list the known rooms)")
    parser.add_argument("--database-url", help="PostgreSQL DSN (default: DATABASE_URL, "
                        "else the embedded server)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--limit", type=int, default=5000,
                        help="read at most this many events (the most recent)")


def run(args: argparse.Namespace) -> int:
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    dsn = database_dsn(settings, args.database_url)
    try:
        found = asyncio.run(read_room(dsn, args.room, args.limit))
    except InspectError as exc:
        print(f"roomserver: {exc.code}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    except Exception as exc:  # asyncpg raises many kinds when unreachable
        print(f"roomserver: cannot read the database: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    if isinstance(found, list):
        if args.json:
            print(msgspec.json.encode({"rooms": found}).decode())
        else:
            print("\n".join(found) if found else "(no rooms)")
        return 0
    summary = summarize(found)
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(as_json(summary))).decode())
    else:
        print(as_text(summary, {i.event_id: i.event for i in found.events}))
    return 0


def as_json(s: Summary) -> dict[str, Any]:
    return {
        "room_id": s.room_id,
        "room_version": s.version,
        "events": s.event_count,
        "outcomes": dict(s.outcomes),
        "current_state": dict(s.state),
        "members": dict(s.members),
        "extremities": list(s.extremities),
        "forks": s.forks,
        "merges": [
            {
                "event_id": m.event_id,
                "conflicts": [
                    {"type": c.key[0], "state_key": c.key[1], "candidates": list(c.candidates),
                     "winner": c.winner}
                    for c in m.conflicts
                ],
                "state_resets": [dict(r) for r in m.resets],
            }
            for m in s.merges
        ],
        "refused": [
            {"event_id": i.event_id, "type": i.event.type, "sender": i.event.sender,
             "outcome": i.outcome, "reason_code": i.reason_code, "reason": i.reason}
            for i in s.refused
        ],
    }


def as_text(s: Summary, events: Mapping[str, Event]) -> str:
    lines = [
        f"room        {s.room_id}",
        f"version     {s.version}",
        f"events      {s.event_count} ("
        + ", ".join(f"{n} {o}" for o, n in s.outcomes.items()) + ")",
        "",
        f"current state: {sum(s.state.values())} entries",
    ]
    lines += [f"  {t:<32} {n}" for t, n in s.state.items()]
    lines.append("members:")
    lines += [f"  {m:<7} {len(us):>3}  {', '.join(us)}" for m, us in s.members.items()]
    lines.append(f"forward extremities: {len(s.extremities)}")
    lines += [f"  {e}" for e in s.extremities]
    lines.append(f"forks: {len(s.forks)}")
    lines += [f"  {e}" for e in s.forks]
    lines.append(f"merges (state resolution): {len(s.merges)}")
    for m in s.merges:
        lines.append(f"  {m.event_id}: {len(m.conflicts)} conflicted key(s)")
        for c in m.conflicts:
            cands = " vs ".join(describe(v, events) for v in c.candidates)
            won = f"kept {describe(c.winner, events)}" if c.winner else "removed from the state"
            lines.append(f"    {c.key[0]} {c.key[1]!r}: {cands}")
            lines.append(f"      -> {won}")
        for r in m.resets:
            lines.append(f"    STATE RESET {r.get('kind')}: {r.get('user_id')} "
                         f"lost {r.get('lost')}")
    lines.append(f"rejected and soft-failed: {len(s.refused)}")
    for i in s.refused:
        lines.append(f"  {i.outcome:<11} {i.event_id}  {label(i.event)} by {i.event.sender}")
        lines.append(f"              {i.reason_code}: {i.reason}")
    return "\n".join(lines)
