"""`Event`, the read-only view of a PDU: the fields derived from others agree with them,
whatever the PDU holds (state resolution reads the derived ones instead)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.events import VIA, Event
from worker.core.versions import rules_for

USERS = st.sampled_from(["@a:x", "@b:x", "", None, 1])
VALUES = st.one_of(
    st.sampled_from(["join", "leave", "invite", "ban", "knock", ""]),
    st.none(),
    st.integers(),
    st.lists(st.text(max_size=2), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(
    etype=st.sampled_from(["m.room.member", "m.room.message", "m.room.power_levels", None]),
    sender=USERS,
    state_key=USERS,
    membership=VALUES,
    has_content=st.booleans(),
    via=st.sampled_from([None, "@b:x", ""]),
)
def test_plain_self_membership_is_the_membership_of_an_event_about_its_sender(
    etype: Any, sender: Any, state_key: Any, membership: Any, has_content: bool, via: Any
) -> None:
    pdu: dict[str, Any] = {"room_id": "!r:x", "type": etype, "sender": sender}
    if state_key is not None:
        pdu["state_key"] = state_key
    if has_content:
        pdu["content"] = {"membership": membership}
        if via is not None:
            pdu["content"][VIA] = via
    ev = Event(pdu, "$e", rules_for("10"))
    # (A missing or non-string sender reads as "", as the auth rules read it.)
    own = ev.type == "m.room.member" and ev.is_state and ev.state_key == ev.sender
    plain = VIA not in ev.content
    assert ev.plain_self_membership == (ev.membership if own and plain else None)


def test_a_self_join_and_a_kick() -> None:
    rules = rules_for("10")
    join = {"type": "m.room.member", "sender": "@a:x", "state_key": "@a:x"}
    kick = {**join, "sender": "@b:x"}
    assert (
        Event({**join, "content": {"membership": "join"}}, "$j", rules).plain_self_membership
        == "join"
    )
    assert (
        Event({**kick, "content": {"membership": "leave"}}, "$k", rules).plain_self_membership
        is None
    )
