"""`python -m worker admin purge-room ROOM`, `admin purge-history ROOM --before-ts T |
--before-event ID`, `admin evacuate-room ROOM` and `admin evacuate-user USER`: the admin
performs (DESIGN §3 "Lifecycle") asked of the running roomserver over its perform endpoints.

All ask for confirmation (`--yes` skips it; without a terminal and without `--yes` nothing
is done). `purge-room` is one transaction, and an evacuation one request whose leaves the
roomserver builds: a bar counts the seconds until it answers (an evacuation's answer lists
the leaves that failed, if any, beside those done).
`purge-history` goes in bounded steps (`--batch` events per request, each its own
transaction) and the bar shows how many of the old events are done. Exit status: 0 done, 1
the roomserver refused (unknown room or event; the code and message go to stderr) or some
leaves of an evacuation failed (listed in the answer's `failed`), 2 not
confirmed or invalid arguments, 3 NATS unreachable or no answer in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from worker.config import EXIT_CONFIG, load_or_report
from worker.messages.admin import (
    EvacuateRoomResponse,
    EvacuateUserResponse,
    PurgeHistoryResponse,
    PurgeRoomResponse,
)

HELP = "purge or evacuate a room, purge its older history, or evacuate a user"

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    room = sub.add_parser("purge-room", help="delete every row of a room (it can be joined again)")
    room.add_argument("room_id", metavar="ROOM")
    history = sub.add_parser("purge-history", help="delete a room's events before a point")
    history.add_argument("room_id", metavar="ROOM")
    point = history.add_mutually_exclusive_group(required=True)
    point.add_argument("--before-ts", type=_timestamp, metavar="TIME",
                       help="milliseconds since the epoch, or an ISO 8601 date and time (UTC "
                            "unless it says otherwise)")
    point.add_argument("--before-event", metavar="EVENT_ID", help="an event of the room")
    history.add_argument("--batch", type=int, default=5000,
                         help="events deleted per request (default 5000)")
    evacuate_room = sub.add_parser(
        "evacuate-room", help="every member of this server leaves the room")
    evacuate_room.add_argument("room_id", metavar="ROOM")
    evacuate_user = sub.add_parser(
        "evacuate-user", help="a user of this server leaves every room")
    evacuate_user.add_argument("user_id", metavar="USER")
    for p in (evacuate_room, evacuate_user):
        p.add_argument("--reason", default="", help="the reason the leave events carry")
    for p in (room, history, evacuate_room, evacuate_user):
        p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        p.add_argument("--url", help="NATS URL (default: NATS_URL, else the embedded server)")
        p.add_argument("--prefix", help="subject prefix (default: ROOMSERVER_PREFIX setting)")
        p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait per request")


def _timestamp(raw: str) -> int:
    if raw.isdigit():
        return int(raw)
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not milliseconds nor an ISO 8601 time: {raw!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


class _Bar:
    """A one-line bar on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.on = stream.isatty()

    def show(self, done: float, total: float, note: str) -> None:
        if not self.on:
            return
        width = 30
        filled = width if total <= 0 else min(width, int(width * done / total))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {note[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self.on:
            self.stream.write("\n")


def _confirm(args: argparse.Namespace, what: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        answer = sys.stdin.readline()
    else:
        answer = input(f"{what} This cannot be undone. Go on? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


async def _ask(nc: Any, subject: str, body: dict[str, Any], timeout: float) -> bytes:
    msg = await nc.request(subject, msgspec.json.encode(body), timeout=timeout)
    headers = dict(msg.headers or {})
    if "Nats-Service-Error-Code" in headers:
        code = headers.get("Roomserver-Error") or headers["Nats-Service-Error-Code"]
        raise _Refused(str(code), str(headers.get("Nats-Service-Error", "")))
    data: bytes = msg.data
    return data


async def _one_request(nc: Any, subject: str, body: dict[str, Any], timeout: float, bar: _Bar,
                       doing: str) -> bytes:
    started = time.monotonic()
    ask = asyncio.ensure_future(_ask(nc, subject, body, timeout))
    while not ask.done():
        elapsed = time.monotonic() - started
        # One request: no steps to count, so the bar fills over a minute as a clock.
        bar.show(min(elapsed, 60.0), 60.0, f"{doing} ({elapsed:.0f} s)")
        await asyncio.wait([ask], timeout=0.2)
    bar.show(1, 1, "done")
    return ask.result()


async def _purge_room(nc: Any, prefix: str, args: argparse.Namespace, bar: _Bar) -> dict[str, Any]:
    data = await _one_request(nc, f"{prefix}.perform.purge_room", {"room_id": args.room_id},
                              args.timeout, bar, f"purging {args.room_id}")
    answer = msgspec.json.decode(data, type=PurgeRoomResponse)
    return {"room_id": answer.room_id, "removed": answer.removed,
            "removed_bytes": answer.removed_bytes}


async def _purge_history(nc: Any, prefix: str, args: argparse.Namespace,
                         bar: _Bar) -> dict[str, Any]:
    body: dict[str, Any] = {"room_id": args.room_id, "limit": args.batch}
    if args.before_ts is not None:
        body["before_ts"] = args.before_ts
    else:
        body["before_event_id"] = args.before_event
    removed: dict[str, int] = {}
    size: dict[str, int] = {}
    events = 0
    kept = 0
    while True:
        data = await _ask(nc, f"{prefix}.perform.purge_history", body, args.timeout)
        step = msgspec.json.decode(data, type=PurgeHistoryResponse)
        for table, n in step.removed.items():
            removed[table] = removed.get(table, 0) + n
        for table, n in step.removed_bytes.items():
            size[table] = size.get(table, 0) + n
        events += step.removed.get("events", 0)
        kept = step.kept_for_state
        bar.show(events, events + step.remaining, f"{events} events purged, {step.remaining} left")
        if step.remaining == 0 or not step.removed.get("events", 0):
            break
    return {"room_id": args.room_id, "removed": removed, "removed_bytes": size,
            "kept_for_state": kept}


async def _evacuate(nc: Any, prefix: str, args: argparse.Namespace, bar: _Bar) -> dict[str, Any]:
    answer: EvacuateRoomResponse | EvacuateUserResponse
    if args.action == "evacuate-room":
        data = await _one_request(
            nc, f"{prefix}.perform.evacuate_room", {"room_id": args.room_id,
                                                    "reason": args.reason},
            args.timeout, bar, f"evacuating {args.room_id}")
        answer = msgspec.json.decode(data, type=EvacuateRoomResponse)
    else:
        data = await _one_request(
            nc, f"{prefix}.perform.evacuate_user", {"user_id": args.user_id,
                                                    "reason": args.reason},
            args.timeout, bar, f"evacuating {args.user_id}")
        answer = msgspec.json.decode(data, type=EvacuateUserResponse)
    result: dict[str, Any] = msgspec.to_builtins(answer)
    return result


def _question(args: argparse.Namespace) -> str:
    if args.action == "purge-room":
        return f"Purge room {args.room_id} and every row of it?"
    if args.action == "purge-history":
        return (f"Purge the history of {args.room_id} before "
                f"{args.before_event or args.before_ts}?")
    if args.action == "evacuate-room":
        return f"Make every member of this server leave {args.room_id}?"
    return f"Make {args.user_id} leave every room?"


def run(args: argparse.Namespace) -> int:
    if args.action == "purge-history" and args.batch < 1:
        print("roomserver: --batch must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    what = _question(args)
    if not _confirm(args, what):
        print("roomserver: not confirmed; nothing done", file=sys.stderr)
        return EXIT_CONFIG
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    from worker.connections import nats_options

    url = args.url or settings.nats.url or f"nats://127.0.0.1:{settings.nats.embedded_port}"
    prefix = args.prefix or settings.bus.prefix

    async def go() -> dict[str, Any]:
        import nats

        nc = await nats.connect(servers=[u.strip() for u in url.split(",")],
                                connect_timeout=10, allow_reconnect=False,
                                **nats_options(settings))
        bar = _Bar(sys.stderr)
        try:
            if args.action == "purge-room":
                return await _purge_room(nc, prefix, args, bar)
            if args.action == "purge-history":
                return await _purge_history(nc, prefix, args, bar)
            return await _evacuate(nc, prefix, args, bar)
        finally:
            bar.close()
            await nc.close()

    try:
        result = asyncio.run(go())
    except _Refused as exc:
        print(f"roomserver: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as exc:
        print(f"roomserver: no answer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(result)) + b"\n")
    if result.get("failed"):
        print(f"roomserver: {len(result['failed'])} leave(s) failed; see \"failed\"",
              file=sys.stderr)
        return EXIT_REFUSED
    return 0
