"""Shared by the auth rule tests: a small public room, and the code of a rule's refusal."""

from __future__ import annotations

from typing import Any

from tests.fixtures.builder import RoomBuilder


def room(version: str, **pl: Any) -> RoomBuilder:
    """alice (creator, 100 or v12 infinite), bob (50), carol (0) joined."""
    b = RoomBuilder(version)
    b.create("alice")
    b.join("alice")
    users = {"bob": 50} if version == "12" else {"alice": 100, "bob": 50}
    users.update(pl.pop("users", {}))
    b.power_levels("alice", users=users, **pl)
    b.join_rules("alice", "public")
    b.join("bob")
    b.join("carol")
    return b


def code(b: RoomBuilder, event_id: str) -> str | None:
    """The reason code the event is refused with, or None when it is allowed."""
    failure = b.check(event_id)
    return failure.code if failure else None
