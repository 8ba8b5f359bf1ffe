"""`python -m worker config`: print the effective settings as JSON, secrets masked."""

from __future__ import annotations

import argparse
import sys

import msgspec

from worker.config import EXIT_CONFIG, VARIABLES, load_or_report, masked

HELP = "print the effective settings (environment + CONFIG_FILE) as JSON, secrets masked"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variables", action="store_true",
        help="list the environment variables with their defaults instead",
    )


def run(args: argparse.Namespace) -> int:
    if args.variables:
        for var in VARIABLES:
            default = var.default or "(unset)"
            print(f"{var.name:<22} {default:<20} {var.help}")
        return 0
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(masked(settings))) + b"\n")
    sys.stdout.flush()
    return 0
