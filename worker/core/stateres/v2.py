"""State resolution v2 (room versions 2-11) and v2.1 (room version 12, MSC4297).

v2.1 is v2 with two flags:

- the *conflicted state subgraph* (every event on an auth path from one conflicted state event
  to another, both ends included) joins the full conflicted set, and
- the first iterative auth checks start from an empty state map instead of the unconflicted
  state map (which is still applied over the result at the end).

Both flags come from `RoomRules.state_res` (STYLE R2), never from a version string.

Spec: https://spec.matrix.org/latest/rooms/v2/#state-resolution (v2),
https://spec.matrix.org/latest/rooms/v12/#state-resolution (v2.1). Synapse's
`synapse/state/v2.py` and ruma's `state_res.rs` were read for comparison.

Where the work goes: splitting the state sets (`split.py`) reads every entry once, mostly
in C; everything after that is proportional to the conflicted events, the auth difference
and the auth-chain walks that find it. The unconflicted state is walked once (only when
some candidate of the auth difference is left to decide), and that walk stops as soon as
it reaches events that every state set's auth chain contains.

In a big room nearly all of that is thousands of membership events, so the per-event
costs are kept to a few dict and attribute reads (`python -m bench stateres` measures them):

- the conflicted events are looked up once and travel as parallel (IDs, events) lists;
- auth chains are walked a generation at a time with set algebra (`Events.walk`), and a
  stale fork's newer chains are not merged where the older set's closure holds them
  (`_union_and_intersection`);
- the mainline ordering sorts by one key at a time, and not at all for events that come in
  timestamp order (`Mainline.order_events`);
- the iterative auth checks decide self-joins and self-leaves through a table derived from
  the membership rule (`worker.core.auth.self_membership`), long runs of self-joins at once,
  running the full auth rules for everything else (`iterative.py`); in v2 they run over U
  itself, and step 5 puts back only what they overwrote of it.

Every shortcut gives the same answers as the plain algorithm: the tests in
`tests/core/test_stateres_shortcut.py` and `test_stateres_wide.py` compare them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import attrgetter, is_, not_
from typing import cast

from worker.core.events import Event, StateKey
from worker.core.stateres.events import POWER_LEVELS, Events, UnknownEvent
from worker.core.stateres.iterative import StartState, iterative_auth_checks
from worker.core.stateres.model import Authorizer, ResolutionStats
from worker.core.stateres.ordering import (
    Mainline,
    is_power_event,
    lexicographic_topo_sort,
    sender_power,
)
from worker.core.stateres.split import split_ordered
from worker.core.versions import StateResAlgorithm


@dataclass(frozen=True, slots=True)
class V2Flags:
    """The v2.1 tweaks (ruma calls them `StateResolutionV2Rules`)."""

    # MSC4297: include the conflicted state subgraph in the full conflicted set.
    conflicted_subgraph: bool
    # MSC4297: begin the first iterative auth checks from an empty state map.
    start_from_empty_state: bool

    @staticmethod
    def for_algorithm(alg: StateResAlgorithm) -> V2Flags:
        on = alg is StateResAlgorithm.V2_1
        return V2Flags(conflicted_subgraph=on, start_from_empty_state=on)


_PLAIN_SELF_MEMBERSHIP = attrgetter("plain_self_membership")

# From how many events the mainline ordering reuses what the auth-chain walks saw.
_MANY = 64


def resolve_v2(
    state_sets: Sequence[Mapping[StateKey, str]],
    events: Events,
    authz: Authorizer,
    flags: V2Flags,
) -> tuple[dict[StateKey, str], ResolutionStats]:
    """Resolve `state_sets` with state resolution v2 (or v2.1, per `flags`).

    Spec: https://spec.matrix.org/latest/rooms/v2/#algorithm (steps 1-5), with the v12
    changes of https://spec.matrix.org/latest/rooms/v12/#state-resolution.
    """
    # Definitions (v2+): the unconflicted state map U and the conflicted state set; a key
    # missing from some state set is conflicted.
    # `ordered` (lists) and `per_set` (sets) hold each state set's conflicted events: only
    # those are needed to find the auth difference below.
    unconflicted, ordered, conflicted_keys = split_ordered(state_sets)
    # Nothing conflicted: U is the answer (also the case for a single state set).
    if not ordered:
        return unconflicted, ResolutionStats()
    per_set = [set(x) for x in ordered]
    conflicted_ids: set[str] = per_set[0].union(*per_set[1:])

    # The conflicted events, in the state sets' order: that order never reaches the result
    # (everything below sorts by the spec's keys), but state sets usually list events
    # roughly chronologically, and the mainline sort is fastest on nearly sorted input.
    full_list = list(chain.from_iterable(ordered))
    if len(full_list) != len(conflicted_ids):
        full_list = list(dict.fromkeys(full_list))
    # Every value of a state map must be known: the caller vouched for these events. The
    # smallest unknown ID is reported, so the error does not depend on set order.
    events.load(full_list)
    cache = events.cache
    found = list(map(cache.get, full_list))
    if not all(found):
        raise UnknownEvent(min(e for e, ev in zip(full_list, found, strict=True) if not ev))
    full_evs = cast("list[Event]", found)
    if len(full_list) >= _MANY and len(full_list) == sum(map(len, ordered)):
        # No event in two sets: `full_evs` is the sets' events one after the other.
        start = 0
        for roots, listed in zip(per_set, ordered, strict=True):
            events.prime(roots, full_evs[start : start + len(listed)])
            start += len(listed)

    # Definitions (v2+): the full conflicted set is the conflicted state set plus the auth
    # difference.
    chains_union, difference = _auth_difference(
        events, unconflicted, per_set, flags.conflicted_subgraph
    )
    # Auth-chain events we could not look up cannot be checked or applied; they only
    # matter through the events citing them, whose checks then fail or fall back.
    added = difference - conflicted_ids
    # v12+ (MSC4297): ... plus the conflicted state subgraph (conflicted events and the
    # known events citing them).
    if flags.conflicted_subgraph:
        added |= _conflicted_subgraph(events, conflicted_ids, chains_union) - conflicted_ids
    full = conflicted_ids
    more_evs: list[Event | None] = []
    if added:
        events.load(added)
        # In set order: no order of these lists reaches the result, as both orderings
        # below sort by the spec's keys, which end in the event ID (the power events are
        # also sorted by ID before the graph is built).
        more = list(added)
        more_evs = list(map(cache.get, more))
        if not all(more_evs):
            more = [eid for eid, ev in zip(more, more_evs, strict=True) if ev is not None]
            more_evs = list(filter(None, more_evs))
        full_list += more
        full_evs += cast("list[Event]", more_evs)
        full = conflicted_ids.union(more)

    checked = 0
    # Step 1: power events of the full conflicted set and their auth ancestors within it,
    # in reverse topological power ordering.
    # Membership changes of one's own are never power events: they are left out first, in
    # C, as they are nearly all the conflicted events of a big room.
    others = list(map(is_, map(_PLAIN_SELF_MEMBERSHIP, full_evs), repeat(None)))
    power = [
        eid
        for eid, ev in zip(compress(full_list, others), compress(full_evs, others), strict=True)
        if is_power_event(ev)
    ]
    power.sort()
    graph = _power_graph(events, power, full)

    # The comparison of the "reverse topological power ordering": greater sender power
    # first (v12+: creators above all), then earlier origin_server_ts, then event ID.
    def power_key(eid: str) -> tuple[float, int, str]:
        ev = events.must(eid)
        return (-sender_power(events, ev), ev.origin_server_ts, eid)

    power_order = lexicographic_topo_sort(graph, power_key)

    # Step 2: iterative auth checks from the unconflicted state map (v2) or from nothing
    # (v2.1, MSC4297: so that unconflicted state cannot vouch for conflicted events).
    # (v2 runs the checks over U itself, and step 5 puts back what they overwrote of it.)
    kept = None if flags.start_from_empty_state else StartState()
    state: dict[StateKey, str] = {} if kept is None else unconflicted
    checked += iterative_auth_checks(
        events, authz, power_order, state, keys=conflicted_keys, start=kept
    )

    # Step 3: everything else, in mainline order of the partially resolved power levels.
    rest, rest_evs = full_list, full_evs
    if graph:
        # The graph is usually the power events alone, and those are all the events that
        # are not self-memberships: then the rest is known without a lookup per event.
        if len(graph) == len(power) == sum(others):
            keep = list(map(not_, others))
        else:
            keep = [eid not in graph for eid in full_list]
        rest = list(compress(full_list, keep))
        rest_evs = list(compress(full_evs, keep))
    mainline = Mainline(events, state.get(POWER_LEVELS))

    # The comparison of the "mainline ordering": greater mainline position first (an event
    # based on older power levels, or on none, comes earlier), then origin_server_ts, then
    # event ID. Power levels events are all power events, so none is left to sort here.
    # (What the events cite was mostly seen by the walks of the auth difference. Only its
    # power levels events matter there, and those of the full conflicted set are power
    # events: so the cited events outside it are looked at, and the cited power events.)
    # When power events were taken out and no walk is there to reuse, the ordering reads
    # what each event cites itself, once (nothing is gathered here).
    cited: set[str] | None = None
    if len(full) >= _MANY and (not graph or all(map(events.walked, per_set))):
        seen = events.cited_by(per_set)
        if more_evs:
            # (The events of the auth difference are at hand: no lookups.)
            seen |= events.refs_of_events(cast("list[Event]", more_evs))
        cited = (seen - full) | seen.intersection(power)
    rest, rest_evs = mainline.order_events(rest, rest_evs, cited)

    # Step 4: iterative auth checks over them, continuing from the partial state.
    checked += iterative_auth_checks(
        events, authz, rest, state, rest_evs, keys=conflicted_keys, start=kept
    )

    # Step 5 (all versions): the unconflicted state map wins wherever it has an entry. In
    # v2.1 this is where U first enters the result; in v2 the state is U already, but for
    # the entries the checks overwrote.
    if kept is None:
        state.update(unconflicted)
    else:
        state.update(kept.saved)
    stats = ResolutionStats(
        conflicted=len(conflicted_ids),
        auth_difference=len(full) - len(conflicted_ids),
        auth_checked=checked,
    )
    return state, stats


def _auth_difference(
    events: Events,
    unconflicted: Mapping[StateKey, str],
    per_set: list[set[str]],
    want_union: bool,
) -> tuple[set[str], set[str]]:
    """The union of the conflicted events' chains (when `want_union`, else possibly empty),
    and the auth difference ∪Cᵢ − ∩Cᵢ less the conflicted events (which join the full
    conflicted set anyway).

    Cᵢ, the auth chain of state set Sᵢ, counts Sᵢ's own events in, as Synapse computes it
    (the spec's text, read literally, leaves them out, and the two readings split rooms;
    docs/interop.md). So Cᵢ = U ∪ C(U) ∪ Xᵢ ∪ C(Xᵢ), where U is the unconflicted state, Xᵢ
    the conflicted events of Sᵢ and C(·) the chains of the events (excluding themselves).
    Whatever is in U or C(U) is in every Cᵢ, so the difference is
    (∪C(Xᵢ) − ∩C(Xᵢ)) − U − C(U), up to conflicted events. C(U) is never built: a walk from U only has to find which of those
    candidates it reaches, and it may stop at any event in ∩C(Xᵢ), because everything
    behind such an event is in ∩C(Xᵢ) as well (chains are closed under "auth event of").
    """
    # Each closure is a set, whatever order its walk takes.
    union, inter, candidates = _union_and_intersection(events, per_set, want_union)
    # Only the events that are not conflicted need deciding (and the walk from U is
    # usually skipped, e.g. when a stale fork's old events are all it finds).
    undecided = candidates.difference(*per_set)
    if not undecided:
        return union, undecided
    # (The events of U are in every Cᵢ, under whichever key a state set holds them.)
    values = unconflicted.values()
    undecided.difference_update(values)
    if not undecided:
        return union, undecided
    return union, undecided - _reached(events, values, inter, undecided)


def _union_and_intersection(
    events: Events, per_set: list[set[str]], want_union: bool
) -> tuple[set[str], set[str], set[str]]:
    """∪C(Xᵢ), ∩C(Xᵢ) and their difference, which may leave out conflicted events (see
    `_auth_difference`); the union may be left empty unless `want_union`.

    A stale fork (two state sets, where the newer one's conflicted events cite every
    conflicted event of the older one, as a member's new event cites their old one) is
    taken apart: then C(X₀) ⊆ C(X₁), because chains are closed, so the intersection is
    C(X₀) and the union is C(X₀) together with what X₁ cites and the chains of those of
    them that are not in X₀ (the chains of X₀'s events are in C(X₀)). The roles of the two
    sets are tried both ways. The difference is then what the newer part adds: what X₁
    cites outside X₀ (which is conflicted) and their chains, less C(X₀). The union is only
    built when asked for.
    """
    if len(per_set) == 2:
        for older, newer in (per_set, per_set[::-1]):
            newer_part = events.closure_citing(newer, older)
            if newer_part is not None:
                cited, beyond = newer_part
                older_chains = events.closure(older)
                union = older_chains.union(cited, beyond) if want_union else set()
                return union, older_chains, beyond - older_chains
    chains = [events.closure(x) for x in per_set]
    union = set().union(*chains)
    inter: set[str] = chains[0].intersection(*chains[1:]) if chains else set()
    return union, inter, union - inter


def _reached(events: Events, roots: Collection[str], stop: set[str], wanted: set[str]) -> set[str]:
    """Which of `wanted` are reachable through auth references from `roots`.

    The walk does not expand past `stop`, and ends as soon as every wanted event is found.
    The roots are a room's whole unconflicted state, nearly all of it citing events in
    `stop`, so what they cite is gathered at once, in C; only what is left of that first
    generation is walked event by event.
    """
    events.load(roots)
    seen = events.refs_of(roots) - stop
    if not seen:
        return seen
    left = wanted - seen
    stack = list(seen)
    while stack and left:
        ev = events.get(stack.pop())
        if ev is None:
            continue
        for eid in events.auth_refs(ev):
            if eid not in seen and eid not in stop:
                seen.add(eid)
                left.discard(eid)
                stack.append(eid)
    return wanted - left


def _conflicted_subgraph(
    events: Events, conflicted_ids: set[str], chains_union: set[str]
) -> set[str]:
    """MSC4297's conflicted state subgraph: events x such that some conflicted event reaches
    x through auth references and x reaches some conflicted event (ends included).

    Everything reachable from a conflicted event is in `chains_union` (or conflicted), so
    the search inverts the auth edges inside that set and floods forwards from the
    conflicted events.
    """
    backwards = chains_union | conflicted_ids
    cited_by: dict[str, list[str]] = {}
    for x in backwards:
        ev = events.get(x)
        if ev is None:
            continue
        for a in events.auth_refs(ev):
            if a in backwards:
                cited_by.setdefault(a, []).append(x)
    out: set[str] = set()
    stack = list(conflicted_ids)
    while stack:
        x = stack.pop()
        if x in out:
            continue
        out.add(x)
        stack.extend(p for p in cited_by.get(x, ()) if p not in out)
    return out


def _power_graph(events: Events, power: list[str], full: set[str]) -> dict[str, set[str]]:
    """The auth DAG over the power events and their auth ancestors inside `full`.

    Spec step 1 takes "the union of their auth chains"; as in the algorithm's original
    description (MSC1442) and every implementation, only ancestors that are themselves in
    the full conflicted set count: the rest is common to every state set.
    """
    graph: dict[str, set[str]] = {}
    stack = list(power)
    must = events.must
    refs = events.auth_refs
    while stack:
        eid = stack.pop()
        if eid in graph:
            continue
        edges = full.intersection(refs(must(eid)))
        graph[eid] = edges
        # (An event already in the graph is skipped when popped.)
        stack += edges
    return graph
