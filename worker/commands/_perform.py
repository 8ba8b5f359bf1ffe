"""What the perform commands (`create-room`, `say`, `join`, `invite`, `upgrade`) share: the
common options, and asking the running roomserver one perform over NATS.

Exit status: 0 done, 1 the roomserver refused (its code, reason code and message go to
stderr), 2 invalid settings or arguments, 3 NATS unreachable or no reply in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec

from worker.config import EXIT_CONFIG, Settings, load_or_report
from worker.messages.perform import PERFORM_QUERIES, PERFORMS

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3


class Refused(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def add_common(parser: argparse.ArgumentParser, *, who: str) -> None:
    parser.add_argument(
        f"--{who}", dest="user",
        help="the local user acting (default: @admin:SERVER_NAME)",
    )
    parser.add_argument("--url", help="NATS URL (default: NATS_URL, else the embedded server)")
    parser.add_argument("--prefix", help="subject prefix (default: ROOMSERVER_PREFIX setting)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")


def acting_user(args: argparse.Namespace, settings: Settings) -> str:
    user: str | None = args.user
    if user and not user.startswith("@"):
        user = f"@{user}:{settings.server_name}"
    return user or f"@admin:{settings.server_name}"


async def _ask(
    args: argparse.Namespace, settings: Settings, calls: list[tuple[str, str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Ask each (kind, name, body) in turn on one connection; raise `Refused` on an error."""
    import nats

    from worker.app import nats_options

    url = args.url or settings.nats.url or f"nats://127.0.0.1:{settings.nats.embedded_port}"
    prefix = args.prefix or settings.bus.prefix
    nc = await nats.connect(servers=[u.strip() for u in url.split(",")],
                            connect_timeout=args.timeout, allow_reconnect=False,
                            **nats_options(settings))
    answers = []
    try:
        for kind, name, body in calls:
            msg = await nc.request(f"{prefix}.{kind}.{name}", msgspec.json.encode(body),
                                   timeout=args.timeout)
            data = msgspec.json.decode(msg.data)
            headers = msg.headers or {}
            if "Nats-Service-Error-Code" in headers:
                code = headers.get("Roomserver-Error", headers["Nats-Service-Error-Code"])
                reason = f" ({data['reason_code']})" if data.get("reason_code") else ""
                raise Refused(f"{name}: {code}{reason}: {data.get('message', '')}")
            answers.append(data)
    finally:
        await nc.close()
    return answers


def perform(
    args: argparse.Namespace, name: str, build: Any, *, resolve_room: str | None = None
) -> int:
    """Load settings, build the request with `build(settings, room_id)`, ask, print the
    answer as JSON. `resolve_room`: a room ID or alias (an alias is resolved first)."""
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG

    async def go() -> dict[str, Any]:
        room_id = resolve_room or ""
        if room_id.startswith("#"):
            (found,) = await _ask(args, settings, [("query", "room_for_alias", {"alias": room_id})])
            room_id = found["room_id"]
        body = build(settings, room_id)
        request_type, _ = PERFORMS[name]
        msgspec.convert(body, request_type)  # a bad argument is reported here, not remotely
        (answer,) = await _ask(args, settings, [("perform", name, body)])
        return answer

    try:
        answer = asyncio.run(go())
    except Refused as exc:
        print(f"roomserver: {exc.text}", file=sys.stderr)
        return EXIT_REFUSED
    except msgspec.ValidationError as exc:
        print(f"roomserver: invalid {name} request: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        print(f"roomserver: no answer to {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(answer)) + b"\n")
    sys.stdout.flush()
    return 0


__all__ = ["PERFORM_QUERIES", "acting_user", "add_common", "perform"]
