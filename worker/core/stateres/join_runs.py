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
from typing import Any

from worker.core.auth.self_membership import SelfMembershipTable
from worker.core.events import Event

# The shortest run decided at once: below it, the setting up costs more than it saves.
BATCH = 64


def table_fields(
    table: SelfMembershipTable | None,
) -> tuple[Any, str | None, object, tuple[str, ...], frozenset[str]]:
    """What the inline table decision of `_Checks` reads of the table.

    (Rule 5.2, a membership authorised by another server, needs no field here: such events
    have no `plain_self_membership`, so they never reach the table inline.)
    """
    if table is None:
        return None, None, None, (), frozenset()
    return (
        table.rules,
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
    # Probe k is the event at k * BATCH + BATCH - 1.
    probes = _self_joins(evs[BATCH - 1 :: BATCH], fields)
    runs: list[tuple[int, int]] = []
    k = probes.find(1)
    while k >= 0:
        last = probes.find(0, k)
        if last < 0:
            last = len(probes)
        # Probes k to last - 1 are self-joins; those before and after them are not (or are
        # past the ends), so every run through them lies between those two.
        lo, hi = k * BATCH, min(n, (last + 1) * BATCH - 1)
        runs += _stretches(_self_joins(evs[lo:hi], fields), lo)
        k = probes.find(1, last)
    return runs


def _stretches(mask: bytearray, offset: int) -> list[tuple[int, int]]:
    """The stretches of at least `BATCH` ones in `mask`, shifted by `offset`."""
    out: list[tuple[int, int]] = []
    many = b"\x01" * BATCH
    lo = mask.find(many)
    while lo >= 0:
        hi = mask.find(0, lo)
        if hi < 0:
            hi = len(mask)
        out.append((offset + lo, offset + hi))
        lo = mask.find(many, hi)
    return out


def _self_joins(evs: Sequence[Event], fields: tuple[Any, ...]) -> bytearray:
    """1 for each event that is a self-join the table answers, else 0."""
    rules, room_id, first_joiner, create_prev, _ = fields
    mask = bytearray(len(evs))
    for i, ev in enumerate(evs):
        if (
            ev.plain_self_membership == "join"
            and ev.rules is rules
            and (room_id is None or ev.room_id == room_id)
            and not (ev.state_key == first_joiner and ev.prev_event_ids == create_prev)
        ):
            mask[i] = 1
    return mask
