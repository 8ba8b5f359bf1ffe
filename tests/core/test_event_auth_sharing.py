"""Events built one after the other share their auth event tuple when the lists are equal,
and every event still reads exactly its own auth events."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.events import Event
from worker.core.versions import V1, V10

IDS = st.sampled_from(["$a", "$b", "$c"])
AUTH_LISTS = st.lists(st.lists(IDS, max_size=3), min_size=1, max_size=12)


def _pdu(auth: list[str], pairs: bool) -> dict[str, Any]:
    listed: list[Any] = [[a, {"sha256": "x"}] for a in auth] if pairs else list(auth)
    return {"type": "m.room.member", "sender": "@a:x", "state_key": "@a:x", "auth_events": listed}


@settings(max_examples=300, deadline=None)
@given(lists=AUTH_LISTS, pairs=st.booleans())
def test_auth_event_ids_are_the_events_own_and_shared_in_runs(
    lists: list[list[str]], pairs: bool
) -> None:
    rules = V1 if pairs else V10
    built = [Event(_pdu(auth, pairs), f"$e{i}", rules) for i, auth in enumerate(lists)]
    for ev, auth in zip(built, lists, strict=True):
        assert ev.auth_event_ids == tuple(auth)
        assert type(ev.auth_event_ids) is tuple
    for before, after in pairwise(built):
        if before.auth_event_ids == after.auth_event_ids:
            assert after.auth_event_ids is before.auth_event_ids
