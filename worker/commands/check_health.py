"""`python -m worker check-health`: probe a running worker's `/readyz` (exit 0 when ready).

Meant for container health checks: it needs no NATS or database access of its own, only the
worker's HTTP endpoint (METRICS_ADDR, or `--url`).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from worker.config import EXIT_CONFIG, load_or_report

HELP = "probe the running worker's /readyz; exit 0 when ready, 1 when not or unreachable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="base URL of the worker's HTTP endpoint "
                        "(default: from METRICS_ADDR)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    parser.add_argument("--live", action="store_true", help="probe /healthz (alive) instead")


def _base_url(args: argparse.Namespace) -> str | None:
    if args.url:
        return str(args.url).rstrip("/")
    settings = load_or_report()
    if settings is None:
        return None
    host = settings.http.host
    # A wildcard listen address is reachable on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.http.port}"


def run(args: argparse.Namespace) -> int:
    base = _base_url(args)
    if base is None:
        return EXIT_CONFIG
    url = base + ("/healthz" if args.live else "/readyz")
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            body = resp.read().decode("utf-8", "replace")
            status = resp.status
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"roomserver: {url} unreachable: {reason}", file=sys.stderr)
        return 1
    print(body.rstrip())
    return 0 if status == 200 else 1
