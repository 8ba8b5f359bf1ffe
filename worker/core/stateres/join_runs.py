"""Finding the long runs of self-joins in an order of events to check.

A big room's merge can hand the iterative auth checks thousands of self-joins in a row;
`_Checks` decides such a run at once when the self-membership table allows every join of
it. This module only finds the runs: maximal stretches of at least `BATCH` events that are
self-joins the table answers, as `_Checks._one_by_one` tells them apart (the same
conditions, in the same order of cost).

Most orders hold no such run (a merge whose conflicted events are mostly not joins, or
joins broken up by other events), and reading every event once more just to learn that
costs as much as a good part of the checks. A run of `BATCH` events covers one of every
`BATCH` consecutive positions, so only every `BATCH`-th event is read first, and a run is
looked for only around the ones that are self-joins.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

from worker.core.auth.self_membership import VIA, SelfMembershipTable
from worker.core.events import Event
from worker.core.stateres.events import MEMBER

# The shortest run decided at once: below it, the setting up costs more than it saves.
BATCH = 64


def table_fields(
    table: SelfMembershipTable | None,
) -> tuple[Any, bool, str | None, object, tuple[str, ...], frozenset[str]]:
    """What the inline table decision of `_Checks` reads of the table."""
    if table is None:
        return None, False, None, None, (), frozenset()
    return (
        table.rules,
        table.restricted,
        table.room_id,
        table.first_joiner,
        table.create_prev,
        table.leave_allowed,
    )


def self_join_runs(table: SelfMembershipTable, evs: Sequence[Event]) -> list[tuple[int, int]]:
    """The runs (start, end) of at least `BATCH` self-joins in a row that `table` answers,
    in order."""
    fields = table_fields(table)
    n = len(evs)
    runs: list[tuple[int, int]] = []
    # Events before `floor` are known not to start a run that reaches the probe.
    floor = 0
    probe = BATCH - 1
    while probe < n:
        if not _is_join(evs[probe], fields):
            floor = probe + 1
            probe += BATCH
            continue
        lo = probe
        while lo > floor and _is_join(evs[lo - 1], fields):
            lo -= 1
        hi = _joins_end(evs, probe + 1, fields)
        if hi - lo >= BATCH:
            runs.append((lo, hi))
        # `hi` is not a join (or the end): a later run starts after it, and covers the
        # position `BATCH` after it.
        floor = hi + 1
        probe = hi + BATCH
    return runs


def _is_join(ev: Event, fields: tuple[Any, ...]) -> bool:
    rules, restricted, room_id, first_joiner, create_prev, _ = fields
    state_key = ev.state_key
    return (
        state_key == ev.sender
        and ev.type == MEMBER
        and ev.rules is rules
        and (content := ev.content).get("membership") == "join"
        and (not restricted or VIA not in content)
        and (room_id is None or ev.room_id == room_id)
        and not (state_key == first_joiner and ev.prev_event_ids == create_prev)
    )


def _joins_end(evs: Sequence[Event], start: int, fields: tuple[Any, ...]) -> int:
    """The position of the first event from `start` on that is not such a self-join (or
    the end). `_is_join` written out: a run can be thousands of events long."""
    rules, restricted, room_id, first_joiner, create_prev, _ = fields
    for i, ev in enumerate(islice(evs, start, None), start):
        state_key = ev.state_key
        if not (
            state_key == ev.sender
            and ev.type == MEMBER
            and ev.rules is rules
            and (content := ev.content).get("membership") == "join"
            and (not restricted or VIA not in content)
            and (room_id is None or ev.room_id == room_id)
            and not (state_key == first_joiner and ev.prev_event_ids == create_prev)
        ):
            return i
    return len(evs)
