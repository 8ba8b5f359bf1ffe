"""One module per `python -m worker` subcommand.

Each module defines `HELP: str`, `add_arguments(parser)` and `run(args) -> int` (the exit
code). `worker.cli` imports a command's module only when that command is used, so a command
pays only for what it imports.
"""
