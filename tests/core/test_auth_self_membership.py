"""`SelfMembershipTable` agrees with `check_auth` wherever it answers.

Random membership (and other) events are judged against random auth states, built from the
handful of facts the table reads (create event, sender's membership, join rules) plus the
ones it must ignore or defer on (power levels, `m.federate`, restricted joins, the creator's
first join, v12 room IDs). Each example builds a fresh table, as state resolution does per
create event.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.auth import check_auth
from worker.core.auth.self_membership import SelfMembershipTable
from worker.core.events import Event, StateKey
from worker.core.versions import rules_for

USERS = ["@alice:a", "@bob:b", "@carol:a", ""]
MEMBERSHIPS = ["join", "leave", "invite", "ban", "knock", "other", None, 7]
JOIN_RULES = ["public", "invite", "knock", "restricted", "knock_restricted", "private", None, 3]

memberships = st.sampled_from(MEMBERSHIPS)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Event, dict[StateKey, Event], Event]:
    version = draw(st.sampled_from([str(v) for v in range(1, 13)]))
    rules = rules_for(version)
    assert rules is not None
    v12 = rules.room_id_from_create_event
    # The create event: sometimes with m.federate, sometimes (v12) with a malformed ID.
    create_content: dict[str, Any] = {"room_version": version}
    if not rules.implicit_room_creator:
        create_content["creator"] = draw(st.sampled_from(USERS))
    if draw(st.integers(0, 5)) == 0:
        create_content["m.federate"] = draw(st.booleans())
    create_id = draw(st.sampled_from(["$create", "create"])) if v12 else "$create:a"
    create_pdu: dict[str, Any] = {
        "type": "m.room.create",
        "state_key": "",
        "sender": "@alice:a",
        "content": create_content,
    }
    room_id = "!create" if v12 else "!room:a"
    if not v12:
        create_pdu["room_id"] = room_id
    create = Event(create_pdu, create_id, rules)

    def event(eid: str, etype: str, sender: str, skey: str | None, content: Any) -> Event:
        pdu: dict[str, Any] = {
            "type": etype,
            "sender": sender,
            "content": content,
            "room_id": draw(st.sampled_from([room_id] * 5 + ["!other:a"])),
            "prev_events": draw(st.sampled_from([[create_id], ["$prev"], ["$prev"], []])),
            "auth_events": [],
            "signatures": {draw(st.sampled_from(["a", "b"])): {"ed25519:k": "x"}},
        }
        if skey is not None:
            pdu["state_key"] = skey
        return Event(pdu, eid, rules)

    # The event under test: mostly membership events, mostly self-targeted.
    sender = draw(st.sampled_from(USERS))
    etype = draw(st.sampled_from(["m.room.member"] * 8 + ["m.room.topic", "m.room.create"]))
    skey = draw(st.sampled_from([sender] * 6 + [*USERS, None]))
    content: dict[str, Any] = {}
    membership = draw(st.sampled_from(["join"] * 4 + ["leave"] * 3 + MEMBERSHIPS))
    if membership is not None or draw(st.booleans()):
        content["membership"] = membership
    if draw(st.integers(0, 5)) == 0:
        content["join_authorised_via_users_server"] = draw(st.sampled_from([*USERS, 5]))
    ev = event("$ev", etype, sender, skey, content)

    auth: dict[StateKey, Event] = {("m.room.create", ""): create}
    # The sender's current membership (absent, a membership, or malformed content).
    if draw(st.integers(0, 4)) > 0:
        mine = draw(memberships)
        auth[("m.room.member", sender)] = event(
            "$mine", "m.room.member", sender, sender, {"membership": mine}
        )
    if draw(st.integers(0, 4)) > 0:
        auth[("m.room.join_rules", "")] = event(
            "$jr",
            "m.room.join_rules",
            "@alice:a",
            "",
            {"join_rule": draw(st.sampled_from(JOIN_RULES))},
        )
    if draw(st.booleans()):
        levels = {"users": {"@alice:a": 100}, "invite": draw(st.sampled_from([0, 50]))}
        auth[("m.room.power_levels", "")] = event(
            "$pl", "m.room.power_levels", "@alice:a", "", levels
        )
    # The authorising user of a restricted join, when named and joined.
    via = content.get("join_authorised_via_users_server")
    if isinstance(via, str) and via != sender and draw(st.booleans()):
        auth[("m.room.member", via)] = event(
            "$via", "m.room.member", via, via, {"membership": "join"}
        )
    return ev, auth, create


@settings(max_examples=3000, deadline=None)
@given(cases())
def test_shortcut_agrees_with_check_auth(case: tuple[Event, dict[StateKey, Event], Event]) -> None:
    ev, auth, create = case
    shortcut = SelfMembershipTable(ev.rules, create)
    verdict = shortcut.allows(
        ev, auth.get(("m.room.member", ev.sender)), auth.get(("m.room.join_rules", ""))
    )
    if verdict is not None:
        assert verdict == (check_auth(ev, auth) is None)


def test_shortcut_answers_the_common_cases() -> None:
    """The shortcut is not vacuous: plain joins and leaves get an answer, both ways."""
    rules = rules_for("10")
    assert rules is not None
    create = Event(
        {"type": "m.room.create", "state_key": "", "sender": "@a:x", "room_id": "!r:x",
         "content": {"creator": "@a:x", "room_version": "10"}},
        "$c", rules,
    )  # fmt: skip

    def member(eid: str, user: str, membership: str) -> Event:
        pdu = {"type": "m.room.member", "state_key": user, "sender": user, "room_id": "!r:x",
               "content": {"membership": membership}, "prev_events": ["$p"]}  # fmt: skip
        return Event(pdu, eid, rules)

    def join_rules(rule: str) -> Event:
        pdu = {"type": "m.room.join_rules", "state_key": "", "sender": "@a:x",
               "room_id": "!r:x", "content": {"join_rule": rule}}  # fmt: skip
        return Event(pdu, "$jr-" + rule, rules)

    s = SelfMembershipTable(rules, create)
    joined, banned = member("$j", "@u:x", "join"), member("$b", "@u:x", "ban")
    assert s.allows(member("$1", "@u:x", "join"), None, join_rules("public")) is True
    assert s.allows(member("$2", "@u:x", "join"), banned, join_rules("public")) is False
    assert s.allows(member("$3", "@u:x", "join"), None, join_rules("invite")) is False
    assert s.allows(member("$4", "@u:x", "join"), joined, None) is True
    assert s.allows(member("$5", "@u:x", "join"), None, join_rules("restricted")) is None
    assert s.allows(member("$6", "@u:x", "leave"), joined, None) is True
    assert s.allows(member("$7", "@u:x", "leave"), banned, None) is False
    assert s.allows(member("$8", "@u:x", "ban"), joined, None) is None
