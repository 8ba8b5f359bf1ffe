"""Step 4 of DESIGN §2 in full: missing prev and auth events through the federation port.

The algorithm (Synapse's `_process_pulled_event`/`_get_missing_events_for_pdu` and Dendrite's
`missingStateReq` do the same in outline):

1. Missing **auth events**: `event_auth` of the input event (and `event` for any it left
   out), checked, input as outliers in auth order.
2. Missing **prev events**, small gap: `get_missing_events` between the room's forward
   extremities and the event (limit 20). If the answer connects to events whose state we
   know, its events are input as `old`, oldest first; the prev events then have state and
   the event goes on as usual.
3. Otherwise (a `new` event only), the **state before the event**: `state_ids`, then the
   events we lack with bounded-concurrency `event` fetches, or one `state` call when most
   are missing. They are input as outliers, and the state they make is the event's state
   before. The pipeline then merges it with the room's other forward extremities by normal
   state resolution (`latest.advance`): this is not a state rewrite.

Everything fetched is checked before anything of it is used (`check_fetched`): format for
the room version, room ID, event ID (the reference hash from v3), content hash, and for
answers to a request by ID, that it is the event asked for. One bad PDU spoils its whole
answer: nothing of it is stored. Auth against each event's own auth events is the
pipeline's usual outlier step: an event that fails it is stored as a rejected outlier (the
spec's rule, so that it is not fetched again) and is never used as state.

Failures: the federation service not answering raises `RetryableError` (the bus naks with
back-off) until `GapSettings.max_attempts` deliveries; then, and whenever the service
answered but could not close the gap, the input is refused with `missing_prev_events` /
`missing_auth_events` and a reason, and nothing else in the room changes. While fetching,
the input message is kept alive with `in_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from worker.core.auth import check_soft_fail
from worker.core.events import Event
from worker.core.format import parse_pdu
from worker.core.hashes import content_hash, room_id_for_create, unpadded_b64
from worker.core.outcomes import Outcome, Rejection
from worker.core.redaction import redact
from worker.core.versions import EventIdFormat, RoomRules
from worker.errors import RetryableError
from worker.observability.metrics import GAPS, GapPath
from worker.pipeline.authstep import AuthStateReads, auth_keys, is_create
from worker.pipeline.dependencies import Reinput, dependency_ids, find_missing
from worker.pipeline.model import Result, StateHandle, StoredEvent, Work, refused
from worker.pipeline.state import ResolveStore, resolve_handles

log = structlog.get_logger(__name__)

Pdu = Mapping[str, object]


@dataclass(frozen=True, slots=True)
class GapSettings:
    # How many events one /get_missing_events may bring (Synapse and Dendrite ask for 20).
    missing_events_limit: int = 20
    # Parallel `event` fetches while completing a state.
    fetch_concurrency: int = 8
    # Above this fraction of a state's events missing, one `state` call beats many `event`s.
    state_fallback_fraction: float = 0.5
    # Deliveries after which an unanswered gap is refused instead of retried; keep it at or
    # below the bus's `max_deliveries`, or the bus dead-letters the input first.
    max_attempts: int = 6
    # Seconds between `in_progress` signals while fetching.
    keepalive_interval: float = 5.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """Which delivery of the input this is, and how to keep its message alive."""

    delivery: int = 1
    in_progress: Callable[[], Awaitable[None]] | None = None


# What `GapFiller.fill` hands back: a refusal, the fetched state before the event, or None
# (every dependency is stored now: go on as usual).
Filled = Result | StateHandle | None


# --- checks on fetched events (pure) -----------------------------------------------------------


def check_fetched(pdu: object, rules: RoomRules, room_id: str, wanted: str | None) -> Event | Rejection:
    """A fetched PDU as an `Event`, or why it cannot be used (spec "Checks performed on
    receipt of a PDU", steps 1-3: format, hashes; plus that it is of this room and, for an
    answer by ID, the event asked for)."""
    if not isinstance(pdu, Mapping):
        return Rejection("not_object", "a fetched PDU is not a JSON object")
    body: dict[str, Any] = dict(pdu)
    carried = body.get("event_id")
    if rules.event_id_format is not EventIdFormat.CARRIED:
        # v3+: the ID is the reference hash; a carried one may only agree with it.
        body.pop("event_id", None)
    event = parse_pdu(body, rules)
    if isinstance(event, Rejection):
        return event
    if _room_of(event) != room_id:
        return Rejection("wrong_room", f"fetched event {event.event_id} is of another room")
    if isinstance(carried, str) and carried != event.event_id:
        return Rejection(
            "event_id_mismatch", f"fetched event claims {carried}, its hash gives {event.event_id}"
        )
    if wanted is not None and event.event_id != wanted:
        return Rejection("not_asked", f"asked for {wanted}, got {event.event_id}")
    hashes = body.get("hashes")
    claimed = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    if claimed != unpadded_b64(content_hash(body)) and not _is_redacted(body, rules):
        # From v3 the ID covers only the redacted event: the content hash is what binds the
        # content to it (and the only hash there is in v1/v2). An event whose hash failed
        # is passed on redacted (spec, "Checks performed on receipt of a PDU", step 3; the
        # federation service does that, DESIGN §1), and is usable as such; one that still
        # carries the content its hash does not cover is a forgery.
        return Rejection("bad_content_hash", f"fetched event {event.event_id}: content hash mismatch")
    return event


def _is_redacted(body: Mapping[str, Any], rules: RoomRules) -> bool:
    return body.get("content") == redact(body, rules).get("content")


def _room_of(event: Event) -> str:
    if is_create(event) and event.rules.room_id_from_create_event:
        return room_id_for_create(event.pdu, event.rules)
    return event.room_id


def check_answer(
    pdus: Iterable[object], rules: RoomRules, room_id: str, wanted: Iterable[str] | None = None
) -> dict[str, Event] | Rejection:
    """Every PDU of one answer checked; the first problem spoils the whole answer. With
    `wanted`, every event must be one of those IDs."""
    allowed = set(wanted) if wanted is not None else None
    out: dict[str, Event] = {}
    for pdu in pdus:
        event = check_fetched(pdu, rules, room_id, None)
        if isinstance(event, Rejection):
            return event
        if allowed is not None and event.event_id not in allowed:
            return Rejection("not_asked", f"the answer holds {event.event_id}, not asked for")
        out[event.event_id] = event
    return out


def oldest_first(events: Mapping[str, Event]) -> list[str]:
    """The events ordered so that each comes after its prev and auth events among them
    (Kahn's algorithm; ties by depth, then ID, so the order is deterministic)."""
    parents = {
        eid: {p for p in (*e.prev_event_ids, *e.auth_event_ids) if p in events and p != eid}
        for eid, e in events.items()
    }
    children: dict[str, list[str]] = {eid: [] for eid in events}
    for eid, ps in parents.items():
        for p in ps:
            children[p].append(eid)
    waiting = {eid: len(ps) for eid, ps in parents.items()}
    heap = [(events[eid].depth, eid) for eid, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, eid = heapq.heappop(heap)
        order.append(eid)
        for child in children[eid]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(heap, (events[child].depth, child))
    # A cycle (only a forged answer has one) leaves events behind: they go last, and the
    # pipeline refuses them for their missing dependencies.
    placed = set(order)
    rest = sorted((e for e in events if e not in placed), key=lambda e: (events[e].depth, e))
    return order + rest


# --- the shell -------------------------------------------------------------------------------


class GapFillStore(Protocol):
    """What the gap filler reads: stored events, the room's extremities (where a backward
    fetch may stop) and a fetched state made of stored events."""

    async def events(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The known events among `event_ids` (unknown ones are absent)."""
        ...

    async def extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities."""
        ...

    async def state_from_ids(self, room_id: str, event_ids: Sequence[str]) -> StateHandle:
        """A state made of exactly these (stored) state events."""
        ...


class SoftFailReads(ResolveStore, AuthStateReads, Protocol):
    """What the soft-fail check after a fetch reads: the current state, resolved with the
    fetched state before the event."""


class FederationClient(Protocol):
    """Gap filling (DESIGN §2 step 4): asks the federation service for events we lack.

    Implemented over NATS request/reply (`worker.federation`); the pipeline calls it only when
    one is configured, and otherwise refuses inputs with missing prev or auth events. Each
    method returns PDUs as JSON objects (as received, not yet checked); an empty list means
    "could not be had". Transient trouble is raised as `worker.errors.RetryableError`.
    """

    async def event_auth(self, room_id: str, event_id: str) -> list[Mapping[str, object]]:
        """The auth chain of `event_id` (federation `/event_auth`), in any order."""
        ...

    async def missing_events(
        self, room_id: str, earliest: Sequence[str], latest: Sequence[str], limit: int
    ) -> list[Mapping[str, object]]:
        """Events between `earliest` and `latest` (federation `/get_missing_events`)."""
        ...

    # The state before an event, and single events.

    async def state_ids(self, room_id: str, event_id: str) -> tuple[list[str], list[str]]:
        """(state event IDs, auth chain IDs) before `event_id` (federation `/state_ids`);
        both empty when it could not be had."""
        ...

    async def state(
        self, room_id: str, event_id: str
    ) -> tuple[list[Mapping[str, object]], list[Mapping[str, object]]]:
        """(state PDUs, auth chain PDUs) before `event_id` (federation `/state`)."""
        ...

    async def event(self, room_id: str, event_id: str) -> Mapping[str, object] | None:
        """One event by ID (federation `/event`); None when it could not be had."""
        ...


class GapFiller:
    """Fills an input's gaps through the `FederationClient` port (see the module docstring)."""

    def __init__(
        self, store: GapFillStore, fed: FederationClient, settings: GapSettings | None = None
    ) -> None:
        self.store = store
        self.fed = fed
        self.settings = settings or GapSettings()

    async def fill(
        self,
        work: Work,
        prefetched: Mapping[str, StoredEvent],
        reinput: Reinput,
        attempt: Attempt,
    ) -> Filled:
        """Load the event's dependencies into `work.known`, fetching what is missing."""
        wanted = dependency_ids(work)
        work.known = {e: prefetched[e] for e in wanted if e in prefetched}
        missing_auth, missing_prev = find_missing(work, work.known)
        if not (missing_auth or missing_prev):
            return None
        log.info("gap_found", missing_auth=len(missing_auth), missing_prev=len(missing_prev))
        try:
            async with _keepalive(attempt, self.settings.keepalive_interval):
                state, path = await self._fill(work, missing_auth, missing_prev, reinput)
        except RetryableError as exc:
            if attempt.delivery < self.settings.max_attempts:
                raise
            # Usually the federation service not answering; a store failure while inputting
            # what was fetched is retried the same way and ends the same way.
            reason = f"not filled after {attempt.delivery} tries ({exc.code}: {exc})"
            return self._refuse(work, missing_auth, missing_prev, reason)
        work.known = await self.store.events(wanted)
        missing_auth, missing_prev = find_missing(work, work.known)
        if missing_auth or (missing_prev and state is None):
            why = "the federation service could not provide them"
            return self._refuse(work, missing_auth, missing_prev, why)
        GAPS.labels(path).inc()
        return state

    def _refuse(
        self, work: Work, missing_auth: Sequence[str], missing_prev: Sequence[str], why: str
    ) -> Result:
        GAPS.labels("failed").inc()
        if missing_auth:
            code, ids = "missing_auth_events", missing_auth
        else:
            code, ids = "missing_prev_events", missing_prev
        shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
        log.info("gap_unfilled", code=code, reason=why)
        return refused(work.event_id, Outcome.REJECTED, Rejection(code, f"{why}: {shown}"))

    async def _fill(
        self, work: Work, missing_auth: Sequence[str], missing_prev: Sequence[str], reinput: Reinput
    ) -> tuple[StateHandle | None, GapPath]:
        path: GapPath = "auth"
        if missing_auth:
            await self._fill_auth(work, work.event_id, missing_auth, reinput)
        if not missing_prev:
            return None, path
        if await self._close_small_gap(work, reinput):
            return None, "closed"
        if work.kind != "new":
            # History (`old`) is not worth a state fetch: it waits for backfill instead.
            return None, "failed"
        return await self._fetch_state(work, reinput)

    async def _fill_auth(
        self, work: Work, event_id: str, missing: Sequence[str], reinput: Reinput
    ) -> None:
        """The auth chain of `event_id`, then single fetches for what it left out."""
        chain = await self.fed.event_auth(work.room_id, event_id)
        checked = check_answer(chain, work.rules, work.room_id)
        if isinstance(checked, Rejection):
            log.warning("federation_answer_refused", verb="event_auth", reason=checked.reason)
            return
        left = [m for m in missing if m not in checked]
        if left:
            single = await self._fetch_each(work, left)
            if single is not None:
                checked.update(single)
        await self._input(work, checked, "outlier", reinput)

    async def _close_small_gap(self, work: Work, reinput: Reinput) -> bool:
        """`get_missing_events`; True when its events were input and connect to state."""
        earliest = await self.store.extremities(work.room_id)
        found = await self.fed.missing_events(
            work.room_id, earliest, [work.event_id], self.settings.missing_events_limit
        )
        checked = check_answer(found, work.rules, work.room_id)
        if isinstance(checked, Rejection):
            log.warning("federation_answer_refused", verb="get_missing_events", reason=checked.reason)
            return False
        checked.pop(work.event_id, None)
        if not checked:
            return False
        # The answer closes the gap only if each of its events' prev events is in it, or
        # stored with state (then the `old` events get state, and so do our prev events).
        outside = {p for e in checked.values() for p in e.prev_event_ids if p not in checked}
        outside.update(p for p in work.event.prev_event_ids if p not in checked)
        stored = await self.store.events(sorted(outside))
        if any(p not in stored or not stored[p].has_state for p in outside):
            log.info("gap_too_big", fetched=len(checked))
            return False
        await self._missing_auth_of(work, checked, reinput)
        await self._input(work, checked, "old", reinput)
        return True

    async def _missing_auth_of(
        self, work: Work, events: Mapping[str, Event], reinput: Reinput
    ) -> None:
        """Auth events of fetched events that are neither stored nor among them."""
        ids = {a for e in events.values() for a in e.auth_event_ids if a not in events}
        stored = await self.store.events(sorted(ids))
        for eid in oldest_first(events):
            lacking = [a for a in events[eid].auth_event_ids if a in ids and a not in stored]
            if lacking:
                await self._fill_auth(work, eid, lacking, reinput)
                stored.update(await self.store.events(lacking))

    async def _fetch_state(
        self, work: Work, reinput: Reinput
    ) -> tuple[StateHandle | None, GapPath]:
        """The state before the event from `state_ids` (+ `event`s, or `state`)."""
        pdu_ids, chain_ids = await self.fed.state_ids(work.room_id, work.event_id)
        if not pdu_ids:
            return None, "failed"
        everything = sorted({*pdu_ids, *chain_ids})
        have = await self.store.events(everything)
        missing = [i for i in everything if i not in have]
        path: GapPath = "state_ids"
        fetched: dict[str, Event] | None
        if len(missing) > self.settings.state_fallback_fraction * len(everything):
            path = "state"
            pdus, chain = await self.fed.state(work.room_id, work.event_id)
            answer = check_answer([*pdus, *chain], work.rules, work.room_id, everything)
            if isinstance(answer, Rejection):
                log.warning("federation_answer_refused", verb="state", reason=answer.reason)
                return None, "failed"
            fetched = {i: answer[i] for i in missing if i in answer}
            left = [i for i in missing if i not in answer]
            more = await self._fetch_each(work, left) if left else {}
            if more is None:
                return None, "failed"
            fetched.update(more)
        else:
            fetched = await self._fetch_each(work, missing)
            if fetched is None:
                return None, "failed"
        await self._input(work, fetched, "outlier", reinput)
        state = await self._usable_state(work, pdu_ids)
        return state, (path if state is not None else "failed")

    async def _usable_state(self, work: Work, pdu_ids: Sequence[str]) -> StateHandle | None:
        """A handle for the fetched state, if every one of its events is stored, a state
        event, allowed by its own auth events, and the state has a create event and no key
        twice. Events that failed auth are left out, as Synapse does."""
        stored = await self.store.events(pdu_ids)
        keys: dict[tuple[str, str], str] = {}
        for eid in pdu_ids:
            se = stored.get(eid)
            key = se.event.state_tuple if se is not None else None
            if se is None or key is None or key in keys:
                log.warning("fetched_state_unusable", event_id=eid)
                return None
            if se.outcome is Outcome.REJECTED:
                log.warning("fetched_state_event_rejected", event_id=eid, reason=se.reason)
                continue
            keys[key] = eid
        if ("m.room.create", "") not in keys:
            log.warning("fetched_state_unusable", reason="no create event")
            return None
        ids = sorted(keys.values())
        work.given_state = {eid: stored[eid] for eid in ids}
        return await self.store.state_from_ids(work.room_id, ids)

    async def _fetch_each(self, work: Work, ids: Sequence[str]) -> dict[str, Event] | None:
        """`event` for each ID, `fetch_concurrency` at a time; None if any answer is bad
        (then nothing of it is used); IDs nobody had are simply absent."""
        gate = asyncio.Semaphore(self.settings.fetch_concurrency)

        async def one(eid: str) -> Event | Rejection | None:
            async with gate:
                pdu = await self.fed.event(work.room_id, eid)
            return None if pdu is None else check_fetched(pdu, work.rules, work.room_id, eid)

        results = await asyncio.gather(*(one(i) for i in ids))
        out: dict[str, Event] = {}
        for result in results:
            if isinstance(result, Rejection):
                log.warning("federation_answer_refused", verb="event", reason=result.reason)
                return None
            if result is not None:
                out[result.event_id] = result
        return out

    async def _input(
        self, work: Work, events: Mapping[str, Event], kind: str, reinput: Reinput
    ) -> None:
        """Input the events not stored yet, each after its dependencies."""
        stored = await self.store.events(sorted(events))
        for eid in oldest_first(events):
            if eid == work.event_id or (eid in stored and stored[eid].kind != "outlier"):
                continue
            if eid in stored and kind == "outlier":
                continue
            result = await reinput(kind, events[eid].pdu)
            if result.outcome is not Outcome.ACCEPTED and result.outcome is not Outcome.OUTLIER:
                log.info("fetched_event_refused", fetched=eid, outcome=result.outcome.value,
                         code=result.reason_code)


async def soft_fail_after_fetch(
    store: SoftFailReads, work: Work, fetched: StateHandle
) -> Rejection | None:
    """The soft-fail check of an event whose state before was fetched (spec step 6 of PDU
    receipt). Its state before knows what happened in the gap and the room's current state
    does not, so, as Synapse's `_check_for_soft_fail` does when the prev events are not the
    extremities, "current" is the resolution of the current state and the event's state
    before: a member who joined in the gap is not soft-failed for it."""
    current = await store.current_state(work.room_id)
    if current is None:
        return None
    merged, _ = await resolve_handles(store, work, [current, fetched])
    entries = await store.lookup(merged, auth_keys(work.event))
    return check_soft_fail(work.event, entries)


@contextlib.asynccontextmanager
async def _keepalive(attempt: Attempt, interval: float) -> AsyncIterator[None]:
    """Signal `in_progress` every `interval` seconds while the body runs."""
    if attempt.in_progress is None:
        yield
        return
    beat = attempt.in_progress

    async def beating() -> None:
        while True:
            await asyncio.sleep(interval)
            await beat()

    task = asyncio.create_task(beating())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
