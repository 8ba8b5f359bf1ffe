"""`python -m worker …` and the `roomserver` script: a thin dispatcher over worker.commands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

# Subcommand name -> module under worker.commands. Order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "run": "run",
    "config": "config",
    "migrate": "migrate",
    "check-health": "check_health",
    "auth": "auth",
    "resolve": "resolve",
    "query": "query",
    "send": "send",
    "tail": "tail",
    "inspect": "inspect",
    "graph": "graph",
    "create-room": "create_room",
    "say": "say",
    "join": "join",
    "invite": "invite",
    "upgrade": "upgrade",
}


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"worker.commands.{COMMANDS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name == f"worker.commands.{COMMANDS[name]}":
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="roomserver", description="Matrix roomserver worker")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Build only the chosen command's parser in full; list the others by name.
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    modules: dict[str, ModuleType] = {}
    for name in COMMANDS:
        if chosen is not None and name != chosen:
            continue
        module = _load(name)
        if module is None:
            continue
        modules[name] = module
        p = sub.add_parser(name, help=getattr(module, "HELP", None))
        module.add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = modules[args.command].run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
