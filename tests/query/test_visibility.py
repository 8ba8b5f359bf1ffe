"""History visibility for remote servers, the pure rules (worker.query.visibility)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.core.events import Event
from worker.core.versions import rules_for
from worker.query.visibility import (
    history_visibility,
    member_keys_of_server,
    server_may_see,
    server_of,
)

RULES = rules_for("10")
assert RULES is not None


def ev(type_: str, content: dict[str, Any], state_key: str = "") -> Event:
    pdu = {"type": type_, "content": content, "state_key": state_key, "sender": "@a:a.test"}
    return Event(pdu, f"${type_}{state_key}", RULES)


def member(user: str, membership: str) -> Event:
    return ev("m.room.member", {"membership": membership}, user)


@pytest.mark.parametrize(
    ("visibility", "memberships", "allowed"),
    [
        ("world_readable", [], True),
        ("shared", [], True),
        ("something_new", [], True),  # unknown values are treated as `shared`
        ("invited", [], False),
        ("invited", ["invite"], True),
        ("invited", ["leave", "join"], True),
        ("invited", ["leave", "ban"], False),
        ("joined", ["invite"], False),
        ("joined", ["leave", "join"], True),
        ("joined", ["knock"], False),
    ],
)
def test_server_may_see(visibility: str, memberships: list[str], allowed: bool) -> None:
    members = {
        ("m.room.member", f"@u{i}:b.test"): member(f"@u{i}:b.test", m)
        for i, m in enumerate(memberships)
    }
    assert server_may_see(visibility, members) is allowed


def test_history_visibility_defaults_to_shared() -> None:
    assert history_visibility(None) == "shared"
    assert history_visibility(ev("m.room.history_visibility", {})) == "shared"
    assert history_visibility(ev("m.room.history_visibility", {"history_visibility": 3})) == "shared"
    hv = ev("m.room.history_visibility", {"history_visibility": "joined"})
    assert history_visibility(hv) == "joined"


def test_servers_of_members() -> None:
    assert server_of("@a:b.test:8448") == "b.test:8448"
    assert server_of("nonsense") == ""
    keys = [
        ("m.room.member", "@a:b.test"),
        ("m.room.member", "@c:b.test:8448"),
        ("m.room.member", "@d:xb.test"),
        ("m.room.topic", ""),
        ("m.room.member", "@e:b.test"),
    ]
    assert member_keys_of_server(keys, "b.test") == [
        ("m.room.member", "@a:b.test"),
        ("m.room.member", "@e:b.test"),
    ]
