"""State resolution v1 (room version 1).

Spec: https://spec.matrix.org/latest/rooms/v1/#state-resolution

1. R starts as the union of the state sets without the conflicting entries. Unlike v2, a
   key missing from some state sets is *not* conflicted (the spec's "union").
2. Conflicting m.room.power_levels events: sort by ascending depth, then descending
   sha1(event_id); the first goes into R; each next one replaces it while the auth rules
   allow it against R; the first refusal stops the list.
3. The same for m.room.join_rules, then 4. for m.room.member, key by key.
5. Every other conflicted key takes the event with the highest depth and lowest
   sha1(event_id) that the auth rules allow against R.

Two points the spec leaves open are settled as Synapse (`synapse/state/v1.py`, the v1
reference) settles them, so that every server computes the same state:

- Within one stage (join rules, or memberships) each key is resolved against R as it was
  when the stage began; the stage's results are added to R together. This also makes the
  answer independent of the order of the keys.
- When no event of a step-5 conflict passes the auth rules, the one with the lowest depth
  (the last in the order above) is kept, so the key does not vanish from the state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from worker.core.events import Event, StateKey
from worker.core.stateres.events import CREATE, POWER_LEVELS, Events
from worker.core.stateres.model import Authorizer, ResolutionStats


def separate_v1(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], dict[StateKey, list[str]]]:
    """Split into (unconflicted, conflicted): a key is conflicted only when two state sets
    hold different events for it."""
    seen: dict[StateKey, set[str]] = {}
    for s in state_sets:
        for key, eid in s.items():
            seen.setdefault(key, set()).add(eid)
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, list[str]] = {}
    for key, ids in seen.items():
        if len(ids) == 1:
            unconflicted[key] = next(iter(ids))
        else:
            conflicted[key] = sorted(ids)
    return unconflicted, conflicted


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


def _newest_first(evs: list[Event]) -> list[Event]:
    """Highest depth first, then lowest sha1(event_id) (spec step 5's preference)."""
    return sorted(evs, key=lambda e: (-e.depth, _sha1(e.event_id)))


class _Checker:
    """Runs the auth rules with auth events drawn from a state map, counting the checks."""

    def __init__(self, authz: Authorizer) -> None:
        self.authz = authz
        self.checked = 0

    def allowed(self, event: Event, r: Mapping[StateKey, Event]) -> bool:
        auth: dict[StateKey, Event] = {}
        for k in self.authz.auth_types(event):
            got = r.get(k)
            if got is not None:
                auth[k] = got
        create = r.get(CREATE)
        if create is not None:
            auth[CREATE] = create
        self.checked += 1
        return self.authz.check(event, auth) is None


def _resolve_auth_list(checker: _Checker, evs: list[Event], r: Mapping[StateKey, Event]) -> Event:
    """Steps 2-4 for one key: ascending depth, descending sha1; keep replacing while allowed."""
    # a./b. Assemble the events and sort them by ascending depth, then descending sha1.
    order = list(reversed(_newest_first(evs)))
    local = dict(r)
    # c. The first one goes into R unchecked.
    current = order[0]
    # d. Each next one must be allowed by the auth rules in R (holding the previous one);
    #    the first that is not ends the list.
    for ev in order[1:]:
        key = current.state_tuple
        assert key is not None
        local[key] = current
        if not checker.allowed(ev, local):
            return current
        current = ev
    return current


def _resolve_normal(checker: _Checker, evs: list[Event], r: Mapping[StateKey, Event]) -> Event:
    """Step 5 for one key: the first allowed event by (depth desc, sha1 asc)."""
    order = _newest_first(evs)
    for ev in order:
        if checker.allowed(ev, r):
            return ev
    return order[-1]


def resolve_v1(
    state_sets: Sequence[Mapping[StateKey, str]], events: Events, authz: Authorizer
) -> tuple[dict[StateKey, str], ResolutionStats]:
    """Resolve `state_sets` with the room version 1 algorithm."""
    # Step 1: R = the union of the state sets without the conflicting entries.
    unconflicted, conflicted = separate_v1(state_sets)
    if not conflicted:
        return unconflicted, ResolutionStats()
    # Every conflicting event must be known: the caller vouched for the state sets.
    conflicted_events = {k: [events.must(eid) for eid in ids] for k, ids in conflicted.items()}

    # R only needs the keys the auth rules can read for the conflicted events.
    needed: set[StateKey] = {CREATE}
    for evs in conflicted_events.values():
        for ev in evs:
            needed.update(authz.auth_types(ev))
    r: dict[StateKey, Event] = {
        k: events.must(unconflicted[k]) for k in needed if k in unconflicted
    }
    checker = _Checker(authz)
    resolved: dict[StateKey, Event] = {}

    # Step 2: conflicting m.room.power_levels events; the winner joins R before step 3.
    if POWER_LEVELS in conflicted_events:
        resolved[POWER_LEVELS] = _resolve_auth_list(checker, conflicted_events[POWER_LEVELS], r)
    r.update(resolved)

    # Steps 3 and 4: m.room.join_rules, then m.room.member, "the above process" per key,
    # each key against R as the stage began (see the module docstring), sorted keys so the
    # order of work is fixed too.
    for etype in ("m.room.join_rules", "m.room.member"):
        stage: dict[StateKey, Event] = {}
        for key in sorted(k for k in conflicted_events if k[0] == etype):
            stage[key] = _resolve_auth_list(checker, conflicted_events[key], r)
        resolved.update(stage)
        r.update(stage)

    # Step 5: every other conflicted key, against R after steps 2-4.
    for key in sorted(k for k in conflicted_events if k not in resolved):
        resolved[key] = _resolve_normal(checker, conflicted_events[key], r)

    out = dict(unconflicted)
    for key, ev in resolved.items():
        out[key] = ev.event_id
    n_conflicted = sum(len(ids) for ids in conflicted.values())
    return out, ResolutionStats(conflicted=n_conflicted, auth_checked=checker.checked)
