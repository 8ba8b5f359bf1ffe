"""`Event`, the read-only view of a PDU: the fields derived from others agree with them,
whatever the PDU holds (state resolution reads the derived ones instead)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.events import Event
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
)
def test_self_membership_is_the_membership_of_an_event_about_its_sender(
    etype: Any, sender: Any, state_key: Any, membership: Any, has_content: bool
) -> None:
    pdu: dict[str, Any] = {"room_id": "!r:x", "type": etype, "sender": sender}
    if state_key is not None:
        pdu["state_key"] = state_key
    if has_content:
        pdu["content"] = {"membership": membership}
    ev = Event(pdu, "$e", rules_for("10"))
    own = ev.type == "m.room.member" and ev.is_state and ev.state_key == ev.sender
    assert ev.self_membership == (ev.membership if own else None)
    if ev.self_membership is not None:
        assert pdu["content"]["membership"] == ev.self_membership
        assert pdu["state_key"] == pdu["sender"]


def test_a_self_join_and_a_kick() -> None:
    rules = rules_for("10")
    join = {"type": "m.room.member", "sender": "@a:x", "state_key": "@a:x"}
    kick = {**join, "sender": "@b:x"}
    assert Event({**join, "content": {"membership": "join"}}, "$j", rules).self_membership == "join"
    assert Event({**kick, "content": {"membership": "leave"}}, "$k", rules).self_membership is None
