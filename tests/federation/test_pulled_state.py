"""The state before a backfilled event, as pulled from the answering server
(`worker.perform.pulled_state`): the pure check, and the verbs it asks, over fakes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest

from tests.fixtures.builder import RoomBuilder
from worker.core.events import Event
from worker.core.outcomes import Rejection
from worker.errors import RetryableError
from worker.perform.pulled_state import PulledState, check_pulled, pull_state
from worker.pipeline.fetch_missing import GapSettings
from worker.query.ports import QueryEvent

Pdu = Mapping[str, object]


def room() -> tuple[RoomBuilder, str, str]:
    """(room, the topic of the state before `msg`, `msg`)."""
    b = RoomBuilder("10", real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"@alice:test": 100})
    b.join_rules("alice", "public")
    b.join("bob")
    topic = b.topic("alice", "old")
    msg = b.message("bob", "history")
    return b, topic, msg


def chain_of(b: RoomBuilder, ids: Sequence[str]) -> list[str]:
    out: set[str] = set()
    todo = [a for i in ids for a in b.event(i).auth_event_ids]
    while todo:
        a = todo.pop()
        if a not in out:
            out.add(a)
            todo.extend(b.event(a).auth_event_ids)
    return sorted(out - set(ids))


def split(b: RoomBuilder, stored_ids: set[str]) -> tuple[list[str], list[str], dict[str, Event], dict[str, Event]]:
    state = sorted(b.state.values())
    # The state before the message: the builder's state was taken after it, and a message
    # changes no state.
    everything = sorted({*state, *chain_of(b, state)})
    stored = {i: b.event(i) for i in everything if i in stored_ids}
    got = {i: b.event(i) for i in everything if i not in stored_ids}
    return state, everything, stored, got


def test_the_events_we_lack_come_back_in_auth_order_with_the_state() -> None:
    b, _, _ = room()
    create = b.state[("m.room.create", "")]
    state, everything, stored, got = split(b, {create})
    pulled = check_pulled(state, everything, stored, set(), got)
    assert isinstance(pulled, PulledState)
    assert pulled.state_ids == tuple(state)
    order = [e.event_id for e in pulled.fetched]
    assert set(order) == set(everything) - {create}
    for i, e in enumerate(pulled.fetched):
        assert all(a in stored or a in order[:i] for a in e.auth_event_ids)


def test_a_state_event_stored_as_rejected_is_left_out() -> None:
    b, topic, _ = room()
    state, everything, stored, got = split(b, set(b.events))
    pulled = check_pulled(state, everything, stored, {topic}, got)
    assert isinstance(pulled, PulledState)
    assert pulled.fetched == ()
    assert topic not in pulled.state_ids and len(pulled.state_ids) == len(state) - 1


@pytest.mark.parametrize(("spoil", "code"), [
    ("not_asked", "not_asked"),
    ("lacking", "missing_events"),
    ("twice", "duplicate_state"),
    ("no_create", "no_create_event"),
    ("not_state", "not_state"),
    ("bad_auth", "not_in_room"),
    ("missing_auth", "missing_auth_events"),
])
def test_a_state_that_does_not_check_is_refused_with_its_reason(spoil: str, code: str) -> None:
    b, topic, msg = room()
    create = b.state[("m.room.create", "")]
    state, everything, stored, got = split(b, {create})
    if spoil == "not_asked":
        got[msg] = b.event(msg)
    elif spoil == "lacking":
        del got[topic]
    elif spoil == "twice":
        other = b.topic("alice", "another", apply=False)
        got[other] = b.event(other)
        state, everything = [*state, other], [*everything, other]
    elif spoil == "no_create":
        state = [i for i in state if i != create]
    elif spoil == "not_state":
        got[msg] = b.event(msg)
        state, everything = [*state, msg], [*everything, msg]
    elif spoil == "bad_auth":
        forged = b.topic("mallory", "not a member", apply=False)
        got[forged] = b.event(forged)
        state = [*[i for i in state if i != topic], forged]
        everything = [*everything, forged]
    elif spoil == "missing_auth":
        power = b.state[("m.room.power_levels", "")]
        del got[power]
        everything = [i for i in everything if i != power]
        state = [i for i in state if i != power]
    refused = check_pulled(state, everything, stored, set(), got)
    assert isinstance(refused, Rejection)
    assert refused.code == code, refused


class FakeStates:
    """The gap filler's verbs, answering about one built room."""

    def __init__(self, b: RoomBuilder, state: list[str], fail: bool = False) -> None:
        self.b, self.state_ids_, self.fail = b, state, fail
        self.asked: list[tuple[str, str]] = []

    async def state_ids(self, room_id: str, event_id: str, *, origin: str = "") -> tuple[list[str], list[str]]:
        self.asked.append(("state_ids", origin))
        if self.fail:
            raise RetryableError("nobody answers")
        return self.state_ids_, chain_of(self.b, self.state_ids_)

    async def state(self, room_id: str, event_id: str, *, origin: str = "") -> tuple[list[Pdu], list[Pdu]]:
        self.asked.append(("state", origin))
        return ([self.b.events[i] for i in self.state_ids_],
                [self.b.events[i] for i in chain_of(self.b, self.state_ids_)])

    async def event(self, room_id: str, event_id: str, *, origin: str = "") -> Pdu | None:
        self.asked.append(("event", origin))
        return self.b.events.get(event_id)


class FakeReads:
    def __init__(self, b: RoomBuilder, stored: set[str]) -> None:
        self.b, self.stored = b, stored

    async def events(self, event_ids: Sequence[str]) -> dict[str, QueryEvent]:
        return {
            i: QueryEvent(
                event_id=i, json=msgspec.json.encode(self.b.events[i]), rules=self.b.rules,
                room_id=self.b.room_id, depth=0, outcome="outlier", has_state=False,
                event=self.b.event(i),
            )
            for i in event_ids if i in self.stored
        }


@pytest.mark.parametrize(("stored_all_but", "verbs"), [
    (1, {"state_ids", "event"}),  # few missing: one `event` each
    (None, {"state_ids", "state"}),  # nearly all missing: one `state` call
])
async def test_pull_state_asks_the_answering_server(stored_all_but: int | None, verbs: set[str]) -> None:
    b, topic, msg = room()
    state = sorted(b.state.values())
    everything = sorted({*state, *chain_of(b, state)})
    stored = set(everything) - {topic} if stored_all_but else {b.state[("m.room.create", "")]}
    fed = FakeStates(b, state)
    pulled = pull_state(fed, FakeReads(b, stored), b.rules, b.room_id, msg, "test",  # type: ignore[arg-type]
                        GapSettings())
    got: Any = await pulled
    assert isinstance(got, PulledState), got
    assert {v for v, _ in fed.asked} == verbs
    assert {o for _, o in fed.asked} == {"test"}
    assert {e.event_id for e in got.fetched} == set(everything) - stored


async def test_pull_state_when_nobody_answers_is_a_refusal() -> None:
    b, _, msg = room()
    fed = FakeStates(b, sorted(b.state.values()), fail=True)
    got = await pull_state(fed, FakeReads(b, set()), b.rules, b.room_id, msg, "test",  # type: ignore[arg-type]
                           GapSettings())
    assert isinstance(got, Rejection) and got.code == "unavailable"
