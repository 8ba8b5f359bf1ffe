"""State resolution: v1 (room version 1), v2 (2-11) and v2.1 (12, MSC4297). Pure and synchronous.

When a room's DAG forks, this decides which state holds where the forks meet. `resolve` picks
the algorithm from the room's rule flags; lookups are passed in (STYLE R1) so the same code
runs over memory, a store's cache or test fixtures.

- `v1.py`, `v2.py` (v2 and v2.1): the algorithms;
- `split.py`: the unconflicted state map and the conflicted state set (v2 and v2.1);
- `iterative.py`: the iterative auth checks of v2 and v2.1;
- `ordering.py`: reverse topological power ordering and mainline ordering;
- `events.py`: event lookups and auth-chain walks, memoised per resolution;
- `model.py`: the `Authorizer` port and `ResolutionStats`.

The shell calls `resolve` from the pipeline's state step, the queries and the `resolve` command.

Spec: https://spec.matrix.org/latest/rooms/v1/#state-resolution,
https://spec.matrix.org/latest/rooms/v2/#state-resolution,
https://spec.matrix.org/latest/rooms/v12/#state-resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet

from worker.core.auth import auth_types_for_event, check_auth
from worker.core.events import Event, StateKey
from worker.core.stateres.events import Events, UnknownEvent
from worker.core.stateres.model import Authorizer, ResolutionStats
from worker.core.stateres.v1 import resolve_v1
from worker.core.stateres.v2 import V2Flags, resolve_v2
from worker.core.versions import RoomRules, StateResAlgorithm

__all__ = [
    "Authorizer",
    "ResolutionStats",
    "SpecAuthorizer",
    "UnknownEvent",
    "resolve",
]


class SpecAuthorizer:
    """The production `Authorizer`: the spec's auth rules from `worker.core.auth`.

    The methods are the rule functions themselves (static), so the iterative auth checks
    call them without a forwarding frame per event.
    """

    auth_types = staticmethod(auth_types_for_event)
    check = staticmethod(check_auth)


_SPEC = SpecAuthorizer()


def resolve(
    rules: RoomRules,
    state_sets: Sequence[Mapping[StateKey, str]],
    event: Callable[[str], Event | None],
    auth_chain: Callable[[str], AbstractSet[str]] | None = None,
    rejected: Collection[str] = frozenset(),
    *,
    authorizer: Authorizer | None = None,
) -> tuple[dict[StateKey, str], ResolutionStats]:
    """Resolve `state_sets` ((type, state_key) -> event ID maps) into one state map.

    `event` looks events up by ID; every event of the state sets must be known, and so
    should their auth chains (an unknown auth-chain event only ends a walk). `auth_chain`,
    when given, returns an event's full auth chain (excluding the event), e.g. from a
    store's index; otherwise chains are walked through `event` and memoised for this call.
    `rejected` holds IDs of events that were rejected (for any reason): v2 and v2.1 never
    apply them nor read them as auth events, as Synapse does (docs/interop.md); v1 ignores
    it, as Synapse's v1 does. `authorizer` replaces the auth rules, for tests.

    Raises `UnknownEvent` when a needed event cannot be looked up.
    """
    authz = authorizer if authorizer is not None else _SPEC
    events = Events(rules, event, auth_chain, rejected)
    if rules.state_res is StateResAlgorithm.V1:
        return resolve_v1(state_sets, events, authz)
    return resolve_v2(state_sets, events, authz, V2Flags.for_algorithm(rules.state_res))
