"""The soft-fail check: a `kind=new` event judged against the room's current state.

Spec: https://spec.matrix.org/latest/server-server-api/#soft-failure. An event that passes
auth against its auth events and the state before it, but fails against the current state,
is kept in the DAG but not shown to clients or used as a forward extremity.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from worker.core.auth.common import CREATE_KEY
from worker.core.auth.rules import check_auth
from worker.core.auth.selection import auth_types_for_event
from worker.core.events import Event, StateKey
from worker.core.outcomes import Rejection

# Prefix of every soft-fail rejection code, so the pipeline (and a reader of stored reasons)
# tells "soft_failed" from "rejected" without another field: e.g. "soft_failed_banned".
SOFT_FAIL_PREFIX = "soft_failed_"


class _Selected(Mapping[StateKey, Event]):
    """The current state seen through the auth events selection, by lookups only.

    Restricting the view makes the check exactly "check_auth with the selected auth events",
    whatever size the state has; `__iter__`/`__len__` walk the selection, never the state.
    """

    __slots__ = ("_keys", "_state")

    def __init__(self, state: Mapping[StateKey, Event], keys: list[StateKey]) -> None:
        self._state = state
        # The create event is always available, also in v12 where it is not selected.
        self._keys = frozenset((*keys, CREATE_KEY))

    def __getitem__(self, key: StateKey) -> Event:
        if key not in self._keys:
            raise KeyError(key)
        return self._state[key]

    def __iter__(self) -> Iterator[StateKey]:
        return (k for k in sorted(self._keys) if self._state.get(k) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def check_soft_fail(event: Event, current_state: Mapping[StateKey, Event]) -> Rejection | None:
    """`check_auth` against the selected auth events of the current state; None if it passes.

    A failure comes back with its code prefixed by `soft_failed_` and the reason marked, the
    rule unchanged.
    """
    selected = _Selected(current_state, auth_types_for_event(event))
    failure = check_auth(event, selected)
    if failure is None:
        return None
    return Rejection(
        code=SOFT_FAIL_PREFIX + failure.code,
        reason=f"Soft-failed against the current state: {failure.reason}",
        rule=failure.rule,
    )
