"""`roomserver invite ROOM USER`: invite a local user into a room."""

from __future__ import annotations

import argparse
from typing import Any

from worker.commands._perform import acting_user, add_common, perform
from worker.config import Settings

HELP = "invite a local user into a room (ID or alias) (Perform API invite)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="room ID or alias")
    parser.add_argument("invitee", help="user ID (or localpart) to invite")
    add_common(parser, who="sender")
    parser.add_argument("--reason", help="reason shown to the invitee")


def run(args: argparse.Namespace) -> int:
    def build(settings: Settings, room_id: str) -> dict[str, Any]:
        invitee = args.invitee
        if not invitee.startswith("@"):
            invitee = f"@{invitee}:{settings.server_name}"
        body: dict[str, Any] = {
            "room_id": room_id, "sender": acting_user(args, settings), "user_id": invitee,
        }
        if args.reason:
            body["reason"] = args.reason
        return body

    return perform(args, "invite", build, resolve_room=args.room)
