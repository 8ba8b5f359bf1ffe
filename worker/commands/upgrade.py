"""`roomserver upgrade ROOM`: replace a room by a new one of another room version."""

from __future__ import annotations

import argparse
from typing import Any

from worker.commands._perform import acting_user, add_common, perform
from worker.config import Settings

HELP = "upgrade a room (ID or alias) to another room version; prints the new room's ID"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="room ID or alias")
    add_common(parser, who="user")
    parser.add_argument("--version", default="", help="new room version (default: "
                        "DEFAULT_ROOM_VERSION)")


def run(args: argparse.Namespace) -> int:
    def build(settings: Settings, room_id: str) -> dict[str, Any]:
        return {
            "room_id": room_id, "user_id": acting_user(args, settings),
            "new_version": args.version or settings.default_room_version,
        }

    return perform(args, "upgrade", build, resolve_room=args.room)
