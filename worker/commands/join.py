"""`roomserver join ROOM`: join a room (ID or alias) as a local user."""

from __future__ import annotations

import argparse
from typing import Any

from worker.commands._perform import acting_user, add_common, perform
from worker.config import Settings

HELP = "join a room (ID or alias) as a local user (Perform API join)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="room ID or alias")
    add_common(parser, who="user")


def run(args: argparse.Namespace) -> int:
    def build(settings: Settings, _: str) -> dict[str, Any]:
        return {"user_id": acting_user(args, settings), "room_id_or_alias": args.room}

    return perform(args, "join", build)
