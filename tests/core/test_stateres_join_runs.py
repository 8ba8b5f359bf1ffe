"""`join_runs.self_join_runs` finds exactly the maximal runs of at least `BATCH` self-joins,
though it reads only every `BATCH`-th event first."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.stateres import join_runs

RULES = object()
TABLE: Any = SimpleNamespace(
    rules=RULES,
    restricted=False,
    room_id="!r:x",
    first_joiner="@creator:x",
    create_prev=("$create",),
    leave_allowed=frozenset(),
)


def _event(n: int, kind: str) -> Any:
    user = f"@u{n}:x"
    content = {"membership": "leave" if kind == "leave" else "join"}
    sender = "@other:x" if kind == "invite" else user
    etype = "m.room.message" if kind == "message" else "m.room.member"
    own = etype == "m.room.member" and sender == user
    return SimpleNamespace(
        state_key=user,
        sender=sender,
        type=etype,
        plain_self_membership=content["membership"] if own else None,
        rules=RULES,
        content=content,
        room_id="!r:x",
        prev_event_ids=("$prev",),
    )


def _expected(joins: list[bool], batch: int) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, joined in enumerate([*joins, False]):
        if joined and start is None:
            start = i
        elif not joined and start is not None:
            if i - start >= batch:
                runs.append((start, i))
            start = None
    return runs


@settings(max_examples=300, deadline=None)
@given(
    kinds=st.lists(
        st.sampled_from(["join", "join", "join", "leave", "message", "invite"]), max_size=300
    ),
    batch=st.sampled_from([1, 2, 3, 5, 64]),
)
def test_the_runs_are_the_maximal_stretches_of_self_joins(kinds: list[str], batch: int) -> None:
    evs = [_event(n, kind) for n, kind in enumerate(kinds)]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(join_runs, "BATCH", batch)
        got = join_runs.self_join_runs(TABLE, evs)
    assert got == _expected([k == "join" for k in kinds], batch)


def test_long_runs_with_short_ones_between() -> None:
    kinds = ["join"] * 200 + ["message"] + ["join"] * 63 + ["leave"] + ["join"] * 64
    evs = [_event(n, kind) for n, kind in enumerate(kinds)]
    assert join_runs.self_join_runs(TABLE, evs) == [(0, 200), (265, 329)]
