"""The fast paths of state resolution agree with their plain definitions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.builder import RoomBuilder
from worker.core.events import MEMBER, Event, StateKey
from worker.core.stateres import SpecAuthorizer
from worker.core.stateres.events import Events
from worker.core.stateres.iterative import StartState, _Checks
from worker.core.stateres.ordering import Mainline
from worker.core.stateres.split import separate_v2, split_ordered
from worker.core.stateres.split import split_sets as _split
from worker.core.versions import V10

KEYS = [("m.room.member", f"@u{i}:test") for i in range(6)] + [("m.room.topic", "")]
state_sets = st.lists(
    st.dictionaries(st.sampled_from(KEYS), st.sampled_from([f"$e{i}" for i in range(5)])),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(state_sets)
def test_split_is_separate_v2(sets: list[dict[StateKey, str]]) -> None:
    unconflicted, per_set = _split(sets)
    expected_unconflicted, conflicted = separate_v2(sets)
    assert unconflicted == expected_unconflicted
    if not conflicted:
        assert per_set == []
        return
    assert per_set == [{s[k] for k in conflicted if k in s} for s in sets]


def _plain_separate(
    sets: list[dict[StateKey, str]],
) -> tuple[dict[StateKey, str], dict[StateKey, list[str]]]:
    """The split by its definition, key by key, in the order separate_v2 promises: the first
    set's keys, then the keys the others add, in the order met."""
    keys = list(dict.fromkeys(k for s in sets for k in s))
    unconflicted = {k: sets[0][k] for k in keys if all(k in s and s[k] == sets[0][k] for s in sets)}
    conflicted = {k: sorted({s[k] for s in sets if k in s}) for k in keys if k not in unconflicted}
    return unconflicted, conflicted


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_separate_v2_on_many_copies_of_a_big_state(data: st.DataObject) -> None:
    """Many state sets that copy one state with a few keys changed, removed or added (as
    forward extremities merging do), long enough for the chunk-wise comparison (more than
    one chunk of `split._CHUNK`)."""
    size = data.draw(st.one_of(st.integers(0, 40), st.integers(250, 600)))
    base = {("m.room.member", f"@u{i}:test"): f"$base{i}" for i in range(size)}
    sets = []
    for _ in range(data.draw(st.integers(3, 8))):
        s = dict(base)
        for i in data.draw(st.lists(st.integers(0, max(size - 1, 0)), max_size=4)):
            key = ("m.room.member", f"@u{i}:test")
            if data.draw(st.booleans()):
                s[key] = f"$new{data.draw(st.integers(0, 3))}"
            else:
                s.pop(key, None)
        for j in data.draw(st.lists(st.integers(0, 5), max_size=3)):
            s[("m.room.topic", str(j))] = f"$t{data.draw(st.integers(0, 2))}"
        if data.draw(st.booleans()):
            s = dict(data.draw(st.permutations(list(s.items()))))
        sets.append(s)
    got = separate_v2(sets)
    want = _plain_separate(sets)
    assert got == want
    assert [list(d) for d in got] == [list(d) for d in want]
    # `split_ordered` (what resolution calls): the same split, the conflicted keys in the
    # same order, and each set's values of those keys in that order.
    unconflicted, ordered, keys = split_ordered(sets)
    conflicted = want[1]
    assert unconflicted == want[0]
    assert keys == list(conflicted)
    if conflicted:
        assert ordered == [[s[k] for k in conflicted if k in s] for s in sets]
    else:
        assert ordered == []


def _room() -> tuple[RoomBuilder, list[str]]:
    """A room whose power levels change a few times, with messages under each."""
    b = RoomBuilder("10")
    b.create("alice")
    b.join("alice")
    ids: list[str] = []
    for level in (50, 60, 70):
        b.power_levels("alice", users={"alice": 100}, state_default=level)
        ids += [b.message("alice", f"under {level}") for _ in range(3)]
        ids.append(b.topic("alice", f"topic {level}"))
    return b, ids


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_mainline_order_is_the_spec_sort(data: st.DataObject) -> None:
    b, ids = _room()
    events = {eid: Event(pdu, eid, V10) for eid, pdu in b.events.items()}
    pls = [e for e, ev in events.items() if ev.type == "m.room.power_levels"]
    base = data.draw(st.sampled_from([*pls, None]))
    chosen = data.draw(st.lists(st.sampled_from(ids), unique=True, min_size=1))
    lookup = Events(V10, events.get, None, frozenset())
    ordered = Mainline(lookup, base).order(chosen)
    reference = Mainline(Events(V10, events.get, None, frozenset()), base)
    assert ordered == sorted(
        chosen,
        key=lambda e: (-reference.position(events[e]), events[e].origin_server_ts, e),
    )


def _big_room() -> tuple[RoomBuilder, list[str]]:
    """`_room` with enough events for the single-key sorts of `Mainline.order_events`:
    messages citing no power levels, then a run under each of three power levels events,
    where timestamps repeat (so event IDs decide between them)."""
    b = RoomBuilder("10")
    b.create("alice")
    b.join("alice")
    ids = [b.message("alice", f"before {i}") for i in range(6)]
    for level in (50, 60, 70):
        b.power_levels("alice", users={"alice": 100}, state_default=level)
        ids += [
            b.message("alice", f"under {level} {i}", extra={"origin_server_ts": 5 + i % 4})
            for i in range(18)
        ]
    return b, ids


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mainline_order_of_many_is_the_spec_sort(data: st.DataObject) -> None:
    """Whether the caller hands over what the events cite or not (then each event's auth
    events are read by the ordering itself), the order is the spec's sort."""
    b, ids = _big_room()
    events = {eid: Event(pdu, eid, V10) for eid, pdu in b.events.items()}
    pls = [e for e, ev in events.items() if ev.type == "m.room.power_levels"]
    base = data.draw(st.sampled_from([*pls, None]))
    chosen = data.draw(st.lists(st.sampled_from(ids), unique=True, min_size=48))
    cited: set[str] | None = None
    if data.draw(st.booleans()):
        cited = {a for e in chosen for a in events[e].auth_event_ids}
    lookup = Events(V10, events.get, None, frozenset())
    ordered = Mainline(lookup, base).order(chosen, cited)
    reference = Mainline(Events(V10, events.get, None, frozenset()), base)
    assert ordered == sorted(
        chosen,
        key=lambda e: (-reference.position(events[e]), events[e].origin_server_ts, e),
    )


_NAMES = [f"@u{i}:x" for i in range(6)]


@settings(max_examples=400, deadline=None)
@given(
    given_users=st.lists(st.sampled_from(_NAMES), unique=True, max_size=6),
    other_types=st.lists(st.booleans(), min_size=6, max_size=6),
    users=st.one_of(st.none(), st.lists(st.sampled_from(_NAMES), unique=True, max_size=6)),
)
def test_member_keys_are_the_given_keys_where_given(
    given_users: list[str], other_types: list[bool], users: list[str] | None
) -> None:
    """`_Checks._member_keys` hands out the given key objects for the users they name (the
    users of the given keys in their order among them), new keys for the others, and notes
    only those new ones."""
    # Some given keys are of another type with a user's name as state key.
    source: list[StateKey] = [
        ("m.room.topic" if other else MEMBER, u)
        for u, other in zip(given_users, other_types, strict=False)
    ]
    if users is None:
        users = list(given_users)
    checks = _Checks(Events(V10, {}.get, None, frozenset()), SpecAuthorizer(), {}, source)
    start = StartState()
    checks.start = start
    got = checks._member_keys(users)
    assert got == [(MEMBER, u) for u in users]
    known = {k[1]: k for k in source if k[0] == MEMBER}
    for user, key in zip(users, got, strict=True):
        if user in known:
            assert key is known[user]
    assert start.added == {(MEMBER, u) for u in users if u not in known}
