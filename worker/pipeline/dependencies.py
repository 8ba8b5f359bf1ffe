"""Steps 3 and 4 of DESIGN §2 as far as the store answers them: is the input a duplicate,
which prev and auth events does it need, and which of them are missing.

Missing ones are fetched through the federation port by `worker.pipeline.fetch_missing`;
without a federation client, `load_dependencies` refuses the input with
`missing_prev_events` / `missing_auth_events`. A refused input is *not* stored: a later
delivery, once the gap can be filled, must still succeed, and nothing else in the room
changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from worker.core.outcomes import Outcome, Rejection
from worker.pipeline.authstep import create_event_id, is_create
from worker.pipeline.model import Result, StoredEvent, Work, refused

# Inputs the fetcher of missing events feeds back into the pipeline: (kind, PDU) -> result.
Reinput = Callable[[str, Mapping[str, object]], Awaitable[Result]]


def duplicate_of(work: Work, stored: StoredEvent | None) -> Result | None:
    """The original result when the event was already fully processed, else None.

    An event stored as an outlier is processed again when it arrives as `new` or `old`: that
    is how an outlier joins the DAG (it then gets a state snapshot and outputs).
    """
    if stored is None:
        return None
    if stored.kind == "outlier" and work.kind != "outlier":
        return None
    return Result(
        work.event_id, stored.outcome, stored.reason_code, stored.reason, duplicate=True
    )


def find_missing(work: Work, known: Mapping[str, StoredEvent]) -> tuple[list[str], list[str]]:
    """(missing auth event IDs, prev event IDs whose state is unknown), each in PDU order.

    Outliers need only their auth events. A `new` event needs the state after each prev
    event; an `old` one needs its prev events stored (without state it is stored without a
    snapshot). `state_event_ids` replaces the need for prev state altogether.
    """
    missing_auth = [a for a in work.event.auth_event_ids if a not in known]
    if work.kind == "outlier" or work.inp.state_event_ids is not None:
        return missing_auth, []
    if work.kind == "new":
        missing_prev = [
            p for p in work.event.prev_event_ids if p not in known or not known[p].has_state
        ]
    else:
        # `old`: history; an event whose prev events we do not hold (the oldest of a
        # backfilled page) is stored without a snapshot, checked as outliers are.
        missing_prev = []
    return missing_auth, missing_prev


def dependency_ids(work: Work) -> list[str]:
    """The events the steps need to find stored: prev and auth events (and the create
    event in v12+, where it is not listed but the auth rules read it)."""
    wanted = {*work.event.prev_event_ids, *work.event.auth_event_ids}
    create_id = create_event_id(work)
    if create_id is not None and not is_create(work.event):
        wanted.add(create_id)
    return sorted(wanted)


class DependencyReads(Protocol):
    """What loading an event's prev and auth events reads."""

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The known events among `event_ids` (unknown ones are absent)."""
        ...


async def load_dependencies(
    store: DependencyReads, work: Work, prefetched: Mapping[str, StoredEvent] | None = None
) -> Result | None:
    """Load the prev and auth events into `work.known`; a refusal when some are missing.

    `prefetched` holds them when the caller already read them (with the duplicate check,
    in one round trip)."""
    wanted = dependency_ids(work)
    if prefetched is not None:
        work.known = {e: prefetched[e] for e in wanted if e in prefetched}
    else:
        work.known = await store.events(wanted) if wanted else {}
    missing_auth, missing_prev = find_missing(work, work.known)
    if missing_auth:
        why = Rejection(
            "missing_auth_events",
            f"auth events not known here: {', '.join(missing_auth)}",
        )
        return refused(work.event_id, Outcome.REJECTED, why)
    if missing_prev:
        why = Rejection(
            "missing_prev_events",
            f"prev events (or the state after them) not known here: {', '.join(missing_prev)}",
        )
        return refused(work.event_id, Outcome.REJECTED, why)
    return None
