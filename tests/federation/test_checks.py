"""The gap filler's pure parts: the checks on fetched PDUs and the input order."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pipeline.conftest import started
from worker.core.events import Event
from worker.core.outcomes import Rejection
from worker.core.versions import rules_for
from worker.pipeline.fetch_missing import check_answer, check_fetched, oldest_first

V10 = rules_for("10")
assert V10 is not None


def test_check_fetched_holds_the_event_to_what_was_asked() -> None:
    b = started("10")
    join = b.join("carol")
    pdu = b.events[join]
    event = check_fetched(pdu, V10, b.room_id, join)
    assert not isinstance(event, Rejection) and event.event_id == join
    other = check_fetched(pdu, V10, b.room_id, "$someotherevent")
    assert isinstance(other, Rejection) and other.code == "not_asked"
    claimed = check_fetched({**pdu, "event_id": "$forged"}, V10, b.room_id, None)
    assert isinstance(claimed, Rejection) and claimed.code == "event_id_mismatch"
    assert isinstance(check_fetched([pdu], V10, b.room_id, None), Rejection)


def test_one_bad_pdu_spoils_the_answer() -> None:
    b = started("10")
    pdus = [b.events[e] for e in b.events]
    assert not isinstance(check_answer(pdus, V10, b.room_id), Rejection)
    bad = check_answer([*pdus, {"type": "m.room.message"}], V10, b.room_id)
    assert isinstance(bad, Rejection)
    not_asked = check_answer(pdus, V10, b.room_id, wanted=list(b.events)[:2])
    assert isinstance(not_asked, Rejection) and not_asked.code == "not_asked"


def _forked_room() -> dict[str, Event]:
    b = started("10")
    fork = b.fork()
    b.topic("alice", "a")
    fork.message("bob")
    b.message("alice", prev=[*b.latest, *fork.latest])
    return {eid: b.event(eid) for eid in b.events}


FORKED = _forked_room()


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_oldest_first_is_a_deterministic_topological_order(rnd: random.Random) -> None:
    events = FORKED
    order = oldest_first(events)
    shuffled = list(events.items())
    rnd.shuffle(shuffled)
    assert oldest_first(dict(shuffled)) == order
    position = {eid: i for i, eid in enumerate(order)}
    for eid, ev in events.items():
        for parent in (*ev.prev_event_ids, *ev.auth_event_ids):
            assert position[parent] < position[eid]
