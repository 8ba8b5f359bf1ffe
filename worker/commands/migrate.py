"""`python -m worker migrate`: apply the pending SQL migrations of schemas/sql and exit."""

from __future__ import annotations

import argparse
import asyncio

from worker.config import EXIT_CONFIG, load_or_report
from worker.observability.logging import configure_logging

HELP = "apply pending database migrations and exit (the worker also does this at start)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: everything comes from the settings


def run(args: argparse.Namespace) -> int:
    del args
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    from worker.app import migrate

    return asyncio.run(migrate(settings))
