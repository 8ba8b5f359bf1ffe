"""`roomserver send FILE`: publish input events from a file and report what was decided.

FILE (or `-` for stdin) holds one JSON object per line: an `InputRoomEvent` (DESIGN §4), or
with `--room-version V` a plain PDU, wrapped as `{"kind": KIND, "event": PDU, "room_version":
V}`. Blank lines and lines starting with `#` are skipped. Inputs are sent one at a time, in
file order (a room's events depend on their predecessors), each with a `Reply-Inbox`, and the
roomserver's reply is awaited before the next one goes. On a terminal a progress bar runs on
stderr. The end is a summary: counts per outcome and a table of every event that was not
accepted, with its reason (`--all`: every event). `--json` prints the replies as JSON lines.

The event ID (for `Nats-Msg-Id` and the table) is the PDU's own `event_id` or, in room versions
3+, derived from the PDU with the room version (from the input, `--room-version`, or the
room's create event earlier in the file). Exit status: 0 every input answered, 1 some line
could not be sent or got no reply, 3 NATS unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import msgspec

from worker.config import EXIT_CONFIG, Settings, load_or_report
from worker.core.hashes import compute_event_id
from worker.core.versions import rules_for
from worker.messages.input import INPUT_DECODER, InputRoomEvent

HELP = "publish input events from a JSON-lines file, wait for the replies, summarise outcomes"

EXIT_INCOMPLETE = 1
EXIT_UNREACHABLE = 3

_pdu_decoder = msgspec.json.Decoder(dict[str, Any])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="JSON lines of InputRoomEvents (or PDUs with "
                        "--room-version); - for stdin")
    parser.add_argument("--room-version", help="lines are plain PDUs of this room version")
    parser.add_argument("--kind", choices=("new", "outlier", "old"), default="new",
                        help="kind for plain PDUs (default new)")
    parser.add_argument("--url", help="NATS URL (default: NATS_URL, else the embedded server)")
    parser.add_argument("--prefix", help="subject prefix (default: ROOMSERVER_PREFIX setting)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for each reply")
    parser.add_argument("--all", action="store_true", help="list every event in the table")
    parser.add_argument("--json", action="store_true", help="print the replies as JSON lines")


@dataclass(frozen=True, slots=True)
class Item:
    """One line of the file, ready to send, or the reason it cannot be."""

    line: int
    message: InputRoomEvent | None
    room_id: str = ""
    event_id: str = ""
    event_type: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class Sent:
    """What happened to one line: the reply's fields, or a local failure."""

    line: int
    event_id: str
    event_type: str
    outcome: str
    reason_code: str = ""
    reason: str = ""
    duplicate: bool = False


def parse_lines(lines: Iterable[str], room_version: str | None, kind: str) -> list[Item]:
    """Every non-blank line as an `Item`; a line that is not an input is an error item."""
    versions: dict[str, str] = {}  # room ID -> version, learnt from inputs and create events
    items: list[Item] = []
    for n, text in enumerate(lines, start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            if room_version is not None:
                msg = InputRoomEvent(kind=kind,  # type: ignore[arg-type]
                                     event=msgspec.Raw(text.encode()), room_version=room_version)
                _pdu_decoder.decode(msg.event)
            else:
                msg = INPUT_DECODER.decode(text.encode())
            pdu = _pdu_decoder.decode(msg.event)
        except msgspec.DecodeError as exc:
            items.append(Item(n, None, error=f"not an input: {exc}"))
            continue
        items.append(_identify(n, msg, pdu, versions))
    return items


def _identify(n: int, msg: InputRoomEvent, pdu: dict[str, Any], versions: dict[str, str]) -> Item:
    etype = pdu.get("type") if isinstance(pdu.get("type"), str) else ""
    content = pdu.get("content") if isinstance(pdu.get("content"), dict) else {}
    version = msg.room_version
    if version is None and etype == "m.room.create" and isinstance(content, dict):
        found = content.get("room_version", "1")
        version = found if isinstance(found, str) else None
    room_id = pdu.get("room_id") if isinstance(pdu.get("room_id"), str) else ""
    version = version or versions.get(str(room_id))
    rules = rules_for(version) if version else None
    event_id = pdu.get("event_id") if isinstance(pdu.get("event_id"), str) else ""
    if not event_id and rules is not None:
        try:
            event_id = compute_event_id(pdu, rules)
        except (ValueError, TypeError):
            event_id = ""
    if not room_id and rules is not None and rules.room_id_from_create_event and event_id:
        # v12: the create event names no room; its room ID is made from its event ID.
        room_id = "!" + str(event_id)[1:]
    if not room_id:
        return Item(n, None, event_id=str(event_id), event_type=str(etype),
                    error="the event names no room_id")
    if version:
        versions[str(room_id)] = version
    return Item(n, msg, str(room_id), str(event_id), str(etype))


class _Progress:
    """A one-line bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.stream = total, stream
        self.on = stream.isatty() and total > 0

    def show(self, done: int, note: str) -> None:
        if not self.on:
            return
        width = 30
        filled = width * done // self.total
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                          f"{note[:30]:<30}")
        self.stream.flush()

    def close(self) -> None:
        if self.on:
            self.stream.write("\n")


async def send_all(nc: Any, prefix: str, items: list[Item], timeout: float,
                   progress: _Progress) -> list[Sent]:
    from worker.bus.subjects import Subjects

    subjects = Subjects(prefix)
    results: list[Sent] = []
    for done, item in enumerate(items, start=1):
        if item.message is None:
            results.append(Sent(item.line, item.event_id, item.event_type, "not_sent",
                                   "bad_line", item.error))
        else:
            results.append(await _send_one(nc, subjects, item, timeout))
        progress.show(done, results[-1].outcome)
    progress.close()
    return results


async def _send_one(nc: Any, subjects: Any, item: Item, timeout: float) -> Sent:
    """Publish with a `Reply-Inbox` and wait for the verdict. Unlike `producer.send_input`
    this looks at the PubAck: JetStream drops a message whose `Nats-Msg-Id` it saw within
    its duplicate window, and then no reply will ever come."""
    from nats.errors import Error as NatsError

    from worker.bus.producer import publish_input
    from worker.messages.reply import decode_reply

    assert item.message is not None
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        ack = await publish_input(nc, subjects, item.message, room_id=item.room_id,
                                  event_id=item.event_id or None, reply_inbox=inbox)
        if ack.duplicate:
            return Sent(item.line, item.event_id, item.event_type, "not_resent",
                        "duplicate_message", "JetStream dropped it: the same event was "
                        "published within the stream's duplicate window", duplicate=True)
        msg = await sub.next_msg(timeout=timeout)
        reply = decode_reply(msg.data)
        return Sent(item.line, reply.event_id or item.event_id, item.event_type,
                    reply.outcome, reply.reason_code, reply.reason, reply.duplicate)
    except TimeoutError:
        return Sent(item.line, item.event_id, item.event_type, "no_reply", "timeout",
                    f"no reply within {timeout:g}s")
    finally:
        with contextlib.suppress(NatsError):
            await sub.unsubscribe()


def summary(results: list[Sent], every: bool) -> str:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    dups = sum(r.duplicate for r in results)
    lines = [f"{len(results)} inputs: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
             + (f" ({dups} seen before)" if dups else "")]
    shown = [r for r in results if every or r.outcome not in ("accepted", "not_resent")]
    if shown:
        head = ("line", "event", "type", "outcome", "reason")
        rows = [(str(r.line), r.event_id or "-", r.event_type or "-",
                 r.outcome + (" (dup)" if r.duplicate else ""),
                 f"{r.reason_code}: {r.reason}" if r.reason_code else r.reason)
                for r in shown]
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(4)]
        for row in [head, *rows]:
            cells = [row[i].ljust(widths[i]) for i in range(4)]
            lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


def nats_url(args: argparse.Namespace, settings: Settings) -> str:
    """`--url`, else NATS_URL, else the embedded server that `roomserver run` starts."""
    url: str = args.url or settings.nats.url or f"nats://127.0.0.1:{settings.nats.embedded_port}"
    return url


async def connect_once(url: str, settings: Settings) -> Any:
    """Connect for a one-off command: fail within seconds when nothing answers (nats-py would
    otherwise retry its initial connect 60 times, two seconds apart, logging each one)."""
    import nats

    from worker.connections import nats_options

    async def quiet(exc: Exception) -> None:
        del exc  # the caller reports the final failure

    return await nats.connect(
        servers=[u.strip() for u in url.split(",")], connect_timeout=5, allow_reconnect=False,
        max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=quiet,
        **nats_options(settings),
    )


async def _main(args: argparse.Namespace, settings: Settings, items: list[Item]) -> int:
    url = nats_url(args, settings)
    try:
        nc = await connect_once(url, settings)
    except Exception as exc:  # nats raises several kinds when unreachable
        print(f"roomserver: cannot connect to NATS at {url}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        results = await send_all(nc, args.prefix or settings.bus.prefix, items, args.timeout,
                                 _Progress(len(items), sys.stderr))
    finally:
        await nc.close()
    if args.json:
        for r in results:
            print(msgspec.json.encode({
                "line": r.line, "event_id": r.event_id, "outcome": r.outcome,
                "reason_code": r.reason_code, "reason": r.reason, "duplicate": r.duplicate,
            }).decode())
    else:
        print(summary(results, args.all))
    failed = any(r.outcome in ("not_sent", "no_reply") for r in results)
    return EXIT_INCOMPLETE if failed else 0


def run(args: argparse.Namespace) -> int:
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    if args.room_version is not None and rules_for(args.room_version) is None:
        print(f"roomserver: unknown room version {args.room_version!r}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        source = sys.stdin if args.file == "-" else None
        text = source.read() if source else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"roomserver: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    items = parse_lines(text.splitlines(), args.room_version, args.kind)
    return asyncio.run(_main(args, settings, items))
