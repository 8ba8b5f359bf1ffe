"""`python -m worker run`: the worker, until SIGTERM or SIGINT (see worker.app)."""

from __future__ import annotations

import argparse
import asyncio

from worker.config import EXIT_CONFIG, load_or_report
from worker.observability.logging import configure_logging

HELP = "run the worker: embedded servers if needed, migrate, provision streams, consume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=("auto", "json", "console"), default="auto",
        help="log rendering (auto: console on a terminal, JSON lines otherwise)",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    json = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(settings.log_level, json=json)
    # Imported after logging is configured so module-level loggers see the configuration.
    from worker.app import serve

    return asyncio.run(serve(settings))
