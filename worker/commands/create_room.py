"""`roomserver create-room`: create a room through the Perform API and print its ID."""

from __future__ import annotations

import argparse
from typing import Any

from worker.commands._perform import acting_user, add_common, perform
from worker.config import Settings

HELP = "create a room as a local user (Perform API create_room); prints its room ID"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, who="creator")
    parser.add_argument("--version", default="", help="room version (default: DEFAULT_ROOM_VERSION)")
    parser.add_argument("--preset", choices=["private_chat", "trusted_private_chat", "public_chat"])
    parser.add_argument("--name", help="the room's name")
    parser.add_argument("--topic", help="the room's topic")
    parser.add_argument("--alias", help="alias localpart: #ALIAS:SERVER_NAME")
    parser.add_argument("--invite", action="append", default=[], metavar="USER",
                        help="a local user to invite (repeatable)")
    parser.add_argument("--public", action="store_true",
                        help="publish the room in the directory (and default to public_chat)")


def run(args: argparse.Namespace) -> int:
    def build(settings: Settings, _: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "creator": acting_user(args, settings),
            "room_version": args.version,
            "invite": args.invite,
            "visibility": "public" if args.public else "private",
        }
        for key, value in (("preset", args.preset), ("name", args.name),
                           ("topic", args.topic), ("room_alias_name", args.alias)):
            if value is not None:
                body[key] = value
        return body

    return perform(args, "create_room", build)
