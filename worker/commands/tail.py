"""`roomserver tail`: follow the output stream, one line per output.

Reads `<PREFIX>_OUTPUT` with an ephemeral ordered consumer (nothing durable is left behind,
nothing is acknowledged), from now on by default, `--all` from the start of the stream, or
`--last N` outputs back. `--room ROOM` follows one room (its subject). Pretty lines look like

    12:00:01  new_room_event       !r:example.org  $Abc…  m.room.member join @bob:ex  +1 -0 state

and `--json` prints each envelope as received. `--count N` stops after N outputs and
`--idle S` stops after S seconds without one (both for scripts and tests); otherwise it runs
until interrupted. Exit status: 0, or 3 when NATS or the stream cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from worker.commands.send import connect_once, nats_url
from worker.config import EXIT_CONFIG, Settings, load_or_report
from worker.messages.output import OutputEvent, decode_output

HELP = "follow the output stream (pretty, or --json), optionally for one room"

EXIT_UNREACHABLE = 3

_pdu = msgspec.json.Decoder(dict[str, Any])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--room", help="follow only this room")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--all", action="store_true", help="from the start of the stream")
    start.add_argument("--last", type=int, metavar="N", help="the last N outputs, then follow")
    parser.add_argument("--json", action="store_true", help="print envelopes as JSON lines")
    parser.add_argument("--count", type=int, help="stop after this many outputs")
    parser.add_argument("--idle", type=float, help="stop after this many quiet seconds")
    parser.add_argument("--url", help="NATS URL (default: NATS_URL, else the embedded server)")
    parser.add_argument("--prefix", help="subject prefix (default: ROOMSERVER_PREFIX setting)")


def _describe_event(raw: bytes) -> str:
    try:
        pdu = _pdu.decode(raw)
    except msgspec.DecodeError:
        return "?"
    etype = str(pdu.get("type", "?"))
    content = pdu.get("content") if isinstance(pdu.get("content"), dict) else {}
    bits = [str(pdu.get("event_id", "?")), etype]
    if etype == "m.room.member" and isinstance(content, dict):
        bits.append(f"{content.get('membership', '?')} {pdu.get('state_key', '')}")
    elif pdu.get("state_key"):
        bits.append(f"[{pdu['state_key']}]")
    bits.append(f"by {pdu.get('sender', '?')}")
    return "  ".join(bits)


def pretty(out: OutputEvent, room_id: str, when: datetime | None = None) -> str:
    """One readable line for an output."""
    stamp = (when or datetime.now(UTC)).strftime("%H:%M:%S")
    head = f"{stamp}  {out.type:<20} {room_id}  "
    if out.new_room_event is not None:
        p = out.new_room_event
        tail = (f"  +{len(p.adds_state_event_ids)} -{len(p.removes_state_event_ids)} state"
                f"  {len(p.latest_event_ids)} extremities")
        if p.rewrites_state:
            tail += "  (rewrites state)"
        return head + _describe_event(bytes(p.event)) + tail
    if out.old_room_event is not None:
        return head + _describe_event(bytes(out.old_room_event.event))
    if out.new_invite_event is not None:
        return head + _describe_event(bytes(out.new_invite_event.event))
    if out.retire_invite_event is not None:
        r = out.retire_invite_event
        return head + f"{r.event_id}  invite of {r.target_user_id} retired ({r.membership})"
    if out.redacted_event is not None:
        return head + f"{out.redacted_event.redacted_event_id} redacted"
    return head.rstrip()


def _stored_at(msg: Any) -> datetime | None:
    """When JetStream stored the output (its metadata), not when we print it."""
    try:
        stamp = msg.metadata.timestamp
    except Exception:  # not a JetStream message (no metadata): print the local time
        return None
    return stamp if isinstance(stamp, datetime) else None


async def follow(nc: Any, prefix: str, args: argparse.Namespace) -> int:
    """Print outputs until `--count` or `--idle` says stop; returns how many were printed."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from worker.bus.subjects import ROOM_ID_HEADER, Subjects

    subjects = Subjects(prefix)
    subject = subjects.output(args.room) if args.room else subjects.output_wildcard
    js = nc.jetstream()
    policy: dict[str, Any] = {"deliver_policy": DeliverPolicy.NEW}
    if args.all:
        policy = {"deliver_policy": DeliverPolicy.ALL}
    elif args.last:
        info = await js.stream_info(subjects.output_stream)
        first = max(info.state.first_seq, info.state.last_seq - args.last + 1)
        policy = {"config": ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                           opt_start_seq=first)}
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await queue.put(msg)

    sub = await js.subscribe(subject, stream=subjects.output_stream, ordered_consumer=True,
                             cb=on_msg, **policy)
    printed = 0
    try:
        while args.count is None or printed < args.count:
            try:
                msg = await asyncio.wait_for(queue.get(), timeout=args.idle)
            except TimeoutError:
                break
            room = (msg.headers or {}).get(ROOM_ID_HEADER, "?")
            if args.json:
                sys.stdout.write(bytes(msg.data).decode("utf-8", "replace") + "\n")
            else:
                try:
                    line = pretty(decode_output(msg.data), room, _stored_at(msg))
                except msgspec.DecodeError as exc:
                    line = f"(undecodable output: {exc})"
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            printed += 1
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return printed


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    url = nats_url(args, settings)
    try:
        nc = await connect_once(url, settings)
    except Exception as exc:  # nats raises several kinds when unreachable
        print(f"roomserver: cannot connect to NATS at {url}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        await follow(nc, args.prefix or settings.bus.prefix, args)
    except Exception as exc:  # e.g. the stream does not exist
        print(f"roomserver: cannot follow the output stream: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        await nc.close()
    return 0


def run(args: argparse.Namespace) -> int:
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_main(args, settings))
    return 0
