"""`python -m worker query NAME '{...}'`: ask a running roomserver one query and print the answer.

The request JSON is checked against the query's request Struct before anything is sent, so a
typo is reported locally. Exit status: 0 answered, 1 the service replied with an error (its
stable code and message go to stderr), 3 NATS unreachable or no reply in time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from worker.config import EXIT_CONFIG, load_or_report
from worker.messages.perform import PERFORM_QUERIES
from worker.messages.query import QUERIES as _QUERIES

HELP = "ask the running roomserver a query over NATS, e.g. query room_version '{\"room_id\": \"!r:hs\"}'"

# The query API's and those answered beside the performs (aliases, directory, server keys).
QUERIES = {**_QUERIES, **PERFORM_QUERIES}

EXIT_ERROR_REPLY = 1
EXIT_UNREACHABLE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(QUERIES), metavar="NAME",
                        help="one of: " + ", ".join(sorted(QUERIES)))
    parser.add_argument("request", nargs="?", default="{}", help="the request as JSON")
    parser.add_argument("--url", help="NATS URL (default: NATS_URL, else the embedded server)")
    parser.add_argument("--prefix", help="subject prefix (default: ROOMSERVER_PREFIX setting)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")


async def request(
    url: str, subject: str, body: bytes, timeout: float, connect: dict[str, object]
) -> tuple[bytes, dict[str, str]]:
    import nats

    nc = await nats.connect(servers=[u.strip() for u in url.split(",")], connect_timeout=timeout,
                            allow_reconnect=False, **connect)
    try:
        msg = await nc.request(subject, body, timeout=timeout)
        return msg.data, dict(msg.headers or {})
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> int:
    request_type, _ = QUERIES[args.name]
    try:
        decoded = msgspec.json.decode(args.request.encode(), type=request_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        print(f"roomserver: invalid {args.name} request: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    from worker.app import nats_options

    url = args.url or settings.nats.url or f"nats://127.0.0.1:{settings.nats.embedded_port}"
    prefix = args.prefix or settings.bus.prefix
    subject = f"{prefix}.query.{args.name}"
    try:
        data, headers = asyncio.run(
            request(url, subject, msgspec.json.encode(decoded), args.timeout, nats_options(settings))
        )
    except Exception as exc:
        print(f"roomserver: no answer on {subject}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if "Nats-Service-Error-Code" in headers:
        code = headers.get("Roomserver-Error", headers["Nats-Service-Error-Code"])
        print(f"roomserver: {code}: {headers.get('Nats-Service-Error', '')}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    sys.stdout.buffer.write(msgspec.json.format(data) + b"\n")
    sys.stdout.flush()
    return 0
