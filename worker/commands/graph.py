"""`roomserver graph ROOM`: an SVG picture of a room's DAG (see worker.inspect.svg).

One box per stored event; forks, merges, rejected and soft-failed events, the conflicts state
resolution decided and flagged state resets are drawn. Writes to `-o FILE` or stdout. Exit
status: 0 written, 1 unknown room, 3 database unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from worker.config import EXIT_CONFIG, load_or_report
from worker.inspect.reads import InspectError, database_dsn, read_room
from worker.inspect.svg import event_count, render

HELP = "draw a room's DAG as SVG: forks, merges, refused events, resolved conflicts"

EXIT_UNKNOWN = 1
EXIT_UNREACHABLE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="room ID")
    parser.add_argument("-o", "--output", help="write the SVG here (default: stdout)")
    parser.add_argument("--database-url", help="PostgreSQL DSN (default: DATABASE_URL, "
                        "else the embedded server)")
    parser.add_argument("--limit", type=int, default=2000,
                        help="draw at most this many events (the most recent)")


def run(args: argparse.Namespace) -> int:
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    try:
        dump = asyncio.run(read_room(database_dsn(settings, args.database_url), args.room,
                                     args.limit))
    except InspectError as exc:
        print(f"roomserver: {exc.code}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    except Exception as exc:  # asyncpg raises many kinds when unreachable
        print(f"roomserver: cannot read the database: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    assert not isinstance(dump, list)
    svg = render(dump)
    if args.output:
        Path(args.output).write_text(svg, encoding="utf-8")
        print(f"wrote {args.output}: {event_count(svg)} events", file=sys.stderr)
    else:
        sys.stdout.write(svg)
    return 0
