"""worker.commands: one module per `python -m worker` subcommand.

Each module defines `HELP: str`, `add_arguments(parser)` and `run(args) -> int` (the exit
code). `worker.cli` imports a command's module only when that command is used, so a command
pays only for what it imports. Commands sit above everything: they may import the app, the
connections, the bus, storage and the inspector; nothing of the worker imports them but
`worker.cli`.
"""
