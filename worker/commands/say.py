"""`roomserver say ROOM TEXT`: send a text message through the Perform API."""

from __future__ import annotations

import argparse
from typing import Any

from worker.commands._perform import acting_user, add_common, perform
from worker.config import Settings

HELP = "send a text message to a room (ID or alias) as a local user; prints its event ID"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("room", help="room ID or alias")
    parser.add_argument("text", help="the message")
    add_common(parser, who="sender")
    parser.add_argument("--txn-id", help="transaction ID: the same one again sends nothing new")


def run(args: argparse.Namespace) -> int:
    def build(settings: Settings, room_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "room_id": room_id,
            "sender": acting_user(args, settings),
            "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": args.text},
        }
        if args.txn_id:
            body["txn_id"] = args.txn_id
        return body

    return perform(args, "send_event", build, resolve_room=args.room)
