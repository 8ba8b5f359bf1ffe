"""The input pipeline: DESIGN §2, one small function per step, in order.

`Pipeline.handle` is the handler the bus's consumer calls for each decoded `InputRoomEvent`
(step 1, decoding, is the bus's). It returns a `HandleResult` that the bus settles and
replies with (step 10); infrastructure failures propagate as `worker.errors` exceptions.
The bus guarantees one event at a time per room, so the steps read and then write a room's
state without racing themselves; the store's per-room advisory lock fences stale owners.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import msgspec
import structlog

from worker.core.events import Event, StateKey
from worker.core.outcomes import Outcome, Rejection
from worker.core.redaction import redact
from worker.messages import HandleResult, InputRoomEvent, NewInviteEvent, RetireInviteEvent
from worker.observability.metrics import DUPLICATES, STATE_RESETS, count_event, measure
from worker.pipeline import redactions
from worker.pipeline.aclstep import check_origin_acl
from worker.pipeline.authstep import (
    auth_keys,
    check_current_state,
    check_own_auth_events,
    check_state_before,
    is_create,
)
from worker.pipeline.dependencies import (
    dependency_ids,
    duplicate_of,
    find_missing,
    load_dependencies,
)
from worker.pipeline.events import stored_json
from worker.pipeline.fetch_missing import Attempt, GapFiller, GapSettings, soft_fail_after_fetch
from worker.pipeline.flusher import BackgroundFlusher
from worker.pipeline.handoff import BuiltEvents
from worker.pipeline.invites import invite_write, retired_by_rewrite
from worker.pipeline.latest import Advance, advance
from worker.pipeline.memberships import detect_resets, invite_outputs
from worker.pipeline.model import Result, Work, refused
from worker.pipeline.outputs import new_room_event, old_room_event, records
from worker.pipeline.ports import (
    BatchingStore,
    EventWrite,
    FederationClient,
    OutboxRelay,
    ReadAheadStore,
    RoomInfo,
    RoomStore,
    StateHandle,
    StoreBatch,
    StoredEvent,
)
from worker.pipeline.state import state_before, state_entry
from worker.pipeline.validate import validate

log = structlog.get_logger(__name__)

OutcomeLabel = Literal["accepted", "soft_failed", "rejected", "outlier", "invalid"]
_LABEL: dict[Outcome, OutcomeLabel] = {
    Outcome.ACCEPTED: "accepted",
    Outcome.SOFT_FAILED: "soft_failed",
    Outcome.REJECTED: "rejected",
    Outcome.OUTLIER: "outlier",
    Outcome.INVALID: "invalid",
}
# Refusals after which nothing is stored, so that a later delivery can still succeed.
_NOT_STORED = frozenset({"missing_state_events"})

# One queued input of a room: (input, JetStream delivery count, `in_progress` callable).
Queued = tuple[InputRoomEvent, int, Callable[[], Awaitable[None]] | None]


class Pipeline:
    """The roomserver's input handler (implements the bus's handler Protocol)."""

    def __init__(
        self,
        store: RoomStore,
        relay: OutboxRelay,
        federation: FederationClient | None = None,
        *,
        await_outputs: bool = False,
        gap_settings: GapSettings | None = None,
        server_name: str = "",
        built: BuiltEvents | None = None,
    ) -> None:
        """`await_outputs=True` publishes each event's outputs before answering (one event
        at a time per room, slower); by default they are published in the background
        (`worker.pipeline.flusher`), and `drain()` waits for them. `built`: the events this
        process's Perform API built, which validation takes as they are
        (`worker.pipeline.handoff`)."""
        self.store = store
        self.relay = relay
        self.federation = federation
        # Missing events are fetched only with a federation client; without one, inputs with
        # missing prev or auth events are refused.
        self.gaps = GapFiller(store, federation, gap_settings) if federation is not None else None
        self.await_outputs = await_outputs
        # This server's name: its own inputs are never checked against a server ACL.
        self.server_name = server_name
        self.built = built
        self.flusher = BackgroundFlusher(relay)
        # A store that reads events and waiting redactions in one round trip (checked once:
        # a Protocol isinstance check is not free).
        self._read_ahead_store = store if isinstance(store, ReadAheadStore) else None
        self._batching = store if isinstance(store, BatchingStore) else None
        # Set on the view `handle_batch` works through: the batch its writes are held in.
        self._batch: StoreBatch | None = None

    async def drain(self) -> None:
        """Wait until the outputs of every event handled so far are published."""
        await self.flusher.wait()

    async def handle(
        self,
        room_id: str,
        input: InputRoomEvent,
        *,
        delivery: int = 1,
        in_progress: Callable[[], Awaitable[None]] | None = None,
    ) -> HandleResult:
        with measure("total"):
            result = await self.process(room_id, input, attempt=Attempt(delivery, in_progress))
        count_event(input.kind, _LABEL[result.outcome])
        if result.duplicate:
            DUPLICATES.inc()
        return result

    async def handle_batch(self, room_id: str, items: Sequence[Queued]) -> list[HandleResult]:
        """`handle` of several queued inputs of one room, in order, with their writes
        committed in one transaction (when the store can hold them: `BatchingStore`).

        Each input is decided exactly as `handle` would, after the ones before it; nothing
        is answered before the commit. If this raises, no write held for the batch is
        stored (some may have been committed early, see `StoreBatch`; handling those again
        finds them as duplicates): the caller handles the inputs again one by one.
        """
        if self._batching is None or len(items) < 2:
            return [
                await self.handle(room_id, inp, delivery=delivery, in_progress=progress)
                for inp, delivery, progress in items
            ]
        batch = self._batching.batch(room_id)
        view = copy.copy(self)
        view.store = view._read_ahead_store = view._batch = batch
        results: list[Result] = []
        try:
            validated, assumed = await view._validate_all(room_id, [inp for inp, _, _ in items])
            for i, ((inp, delivery, progress), work) in enumerate(zip(items, validated, strict=True)):
                if assumed and i > 0 and await batch.room(room_id) is None:
                    # Validated as if the room's create event had been taken, and it was
                    # not: validated again, now, against the room as it is.
                    work = None
                with measure("total"):
                    results.append(
                        await view.process(
                            room_id, inp, attempt=Attempt(delivery, progress), validated=work
                        )
                    )
            with measure("persist"):
                await batch.commit()
        finally:
            if batch.committed:
                self.flusher.kick(room_id)
        if self.await_outputs or any(r.duplicate for r in results):
            # As in `process`: a duplicate's outputs are out before it is answered.
            with measure("publish"):
                await self.relay.flush(room_id)
        for (inp, _, _), result in zip(items, results, strict=True):
            count_event(inp.kind, _LABEL[result.outcome])
            if result.duplicate:
                DUPLICATES.inc()
        return results

    async def _validate_all(
        self, room_id: str, inputs: Sequence[InputRoomEvent]
    ) -> tuple[list[Work | Result | None], bool]:
        """Validate a batch's inputs up front and read what they will ask for in one round
        trip. Validation depends on the room only through its version, which cannot change
        once the room exists. For a new room, the batch must start with its create event,
        and the inputs after it are validated as the room it makes (True: assumed; the
        caller validates them again if the create event is not taken); otherwise each input
        is validated in turn (None)."""
        assert self._batch is not None
        room = await self.store.room(room_id)
        first: Work | Result | None = None
        if room is None:
            with measure("validate"):
                first = await validate(self.store, room_id, inputs[0], built=self.built)
            if not (isinstance(first, Work) and is_create(first.event)):
                return [None] * len(inputs), False
            room = RoomInfo(room_id, first.rules.version)
        assumed = first is not None
        out: list[Work | Result | None] = []
        ids: list[str] = []
        targets: list[str] = []
        keys: set[StateKey] = set()
        with measure("validate"):
            for i, inp in enumerate(inputs):
                if i == 0 and first is not None:
                    work = first
                else:
                    work = await validate(
                        self.store, room_id, inp, room=room if assumed else None,
                        built=self.built,
                    )
                out.append(work)
                if isinstance(work, Work):
                    ids.append(work.event_id)
                    ids.extend(dependency_ids(work))
                    targets.append(work.event_id)
                    keys.update(auth_keys(work.event))
        with measure("dedupe"):
            await self._batch.prefetch(ids, targets, sorted(keys))
        return out, assumed

    async def process(
        self,
        room_id: str,
        inp: InputRoomEvent,
        *,
        fill: bool = True,
        attempt: Attempt | None = None,
        validated: Work | Result | None = None,
    ) -> Result:
        """Steps 2 to 9 for one input (`validated`: step 2 already done)."""
        if validated is None:
            with measure("validate"):
                work = await validate(self.store, room_id, inp, built=self.built)
        else:
            work = validated
        if isinstance(work, HandleResult):
            return work
        structlog.contextvars.bind_contextvars(event_id=work.event_id)
        with measure("dedupe"):
            known = await self._read_ahead(work)
            itself = known.get(work.event_id)
            duplicate = duplicate_of(work, itself)
        if duplicate is None and itself is not None and itself.redacted:
            # An outlier redacted while it waited, now joining the DAG: it stays redacted in
            # every output too (the stored JSON already is, for good).
            work.event = Event(redact(work.event.pdu, work.rules), work.event_id, work.rules)
            work.pdu = work.event.pdu
        if work.kind == "invite":
            return await self._invite(work, itself)
        if duplicate is not None:
            # The original may have crashed between commit and publish: make sure its
            # outputs are out before the producer hears "done" again.
            await self.relay.flush(room_id)
            return duplicate
        denied = await check_origin_acl(self.store, work, self.server_name)
        if denied is not None:
            return refused(work.event_id, Outcome.REJECTED, denied)
        with measure("fill_gaps"):
            if self._batch is not None and fill and self.gaps is not None and any(
                find_missing(work, known)
            ):
                # The gap filler reads and writes the store itself: from here on, this
                # batch writes through.
                await self._batch.write_through()
            if fill and self.gaps is not None:
                reinput = self._reinput(room_id)
                filled = await self.gaps.fill(work, known, reinput, attempt or Attempt())
            else:
                filled = await load_dependencies(self.store, work, prefetched=known)
        if isinstance(filled, HandleResult):
            return filled
        # A state fetched for the event is the state before it.
        return await self._decide(work, fetched_state=filled)

    async def _read_ahead(self, work: Work) -> dict[str, StoredEvent]:
        """The event itself and its dependencies, in one round trip; for events that will
        need them, the state after the prev events and the redactions waiting for the event
        are read at the same time (the redactions in the events' round trip when the store
        can, else on other connections), so that three reads cost one round trip of latency.
        Unused when the event turns out to be a duplicate."""
        ids = [work.event_id, *dependency_ids(work)]
        ev = work.event
        if work.kind in ("outlier", "invite") or work.inp.state_event_ids is not None or is_create(ev):
            return await self.store.events(ids)
        both = self._read_ahead_store
        if self._batch is not None:
            # Read ahead for the whole batch: both answers are in memory, and tasks for
            # them would cost more than the answers.
            known, pending = await self._batch.events_and_redactions(ids, [work.event_id])
            work.after_prevs = await self._batch.state_after(ev.prev_event_ids)
            work.pending_redactions = pending
            return known
        if both is not None:
            # The read runs as a task while the state after the prevs is looked up here:
            # that is nearly always in memory, and a gather would cost a task for it too.
            read = asyncio.ensure_future(both.events_and_redactions(ids, [work.event_id]))
            try:
                after = await self.store.state_after(ev.prev_event_ids)
            except BaseException:
                read.cancel()
                raise
            known, pending = await read
            work.after_prevs, work.pending_redactions = after, pending
            return known
        known, after, pending = await asyncio.gather(
            self.store.events(ids),
            self.store.state_after(ev.prev_event_ids),
            self.store.pending_redactions([work.event_id]),
        )
        work.after_prevs, work.pending_redactions = after, pending
        return known

    def _reinput(self, room_id: str) -> Callable[[str, Mapping[str, object]], Awaitable[Result]]:
        async def reinput(kind: str, pdu: Mapping[str, object]) -> Result:
            # Events fetched to fill a gap never fill gaps themselves: no unbounded recursion.
            raw = msgspec.Raw(msgspec.json.encode(pdu))
            inp = InputRoomEvent(kind=kind, event=raw)  # type: ignore[arg-type]
            return await self.process(room_id, inp, fill=False)

        return reinput

    async def _decide(self, work: Work, fetched_state: StateHandle | None = None) -> Result:
        """Steps 5 to 7: auth, state before, auth against it, soft-fail."""
        if work.room_known and is_create(work.event) and not await self._invite_only(work):
            # Another create event for an existing room (v1-v11, where the room ID does not
            # derive from it) would start a second DAG: refused, and not stored.
            exists = Rejection("room_exists", "the room already has its m.room.create event")
            return refused(work.event_id, Outcome.REJECTED, exists)
        with measure("auth_own"):
            problem = check_own_auth_events(work)
        if work.kind == "outlier":
            outcome = Outcome.OUTLIER if problem is None else Outcome.REJECTED
            return await self._finish(work, outcome, problem)
        with measure("state_before"):
            if fetched_state is not None:
                before: StateHandle | Rejection | None = fetched_state
            else:
                before = await state_before(self.store, work)
        if problem is not None:
            # Rejected on its own auth events, it still keeps the state before it when that
            # can be known (as Synapse does): an event built on it is then processed like
            # any other, instead of finding its prev without a state (a gap).
            if not isinstance(before, Rejection):
                work.state_before = before
            return await self._finish(work, Outcome.REJECTED, problem)
        if isinstance(before, Rejection):
            if before.code in _NOT_STORED:
                return refused(work.event_id, Outcome.REJECTED, before)
            return await self._finish(work, Outcome.REJECTED, before)
        work.state_before = before
        if before is not None:
            with measure("auth_state"):
                problem = await check_state_before(self.store, work, before)
            if problem is not None:
                return await self._finish(work, Outcome.REJECTED, problem)
        if work.kind == "new":
            work.extremities = await self.store.extremities(work.room_id)
            problem = await self._soft_fail(work, fetched_state)
            if problem is not None:
                return await self._finish(work, Outcome.SOFT_FAILED, problem)
        return await self._finish(work, Outcome.ACCEPTED, None)

    async def _invite_only(self, work: Work) -> bool:
        """True when all the room has is an invite (input kind `invite`): its create event
        arrives with the room's state, when the invitee joins."""
        return not await self.store.extremities(work.room_id) and (
            await self.store.current_state(work.room_id) is None
        )

    async def _invite(self, work: Work, itself: StoredEvent | None) -> Result:
        """Input kind `invite` (`worker.pipeline.invites`): stored as an outlier, announced."""
        if itself is not None:
            return Result(work.event_id, itself.outcome, duplicate=True)
        write = await invite_write(self.store, work)
        if isinstance(write, HandleResult):
            return write
        with measure("persist"):
            await self.store.persist(write)
        if write.outputs and self._batch is None:
            if self.await_outputs:
                await self.relay.flush(work.room_id)
            else:
                self.flusher.kick(work.room_id)
        return Result(work.event_id, Outcome.OUTLIER)

    async def _soft_fail(
        self, work: Work, fetched_state: StateHandle | None = None
    ) -> Rejection | None:
        """Soft-fail check (`kind=new`), skipped where it cannot differ from the state check:
        a state rewrite, or prev events that are exactly the current extremities (then the
        state before the event *is* the current state)."""
        if work.inp.state_event_ids is not None:
            return None
        if fetched_state is not None:
            with measure("soft_fail"):
                return await soft_fail_after_fetch(self.store, work, fetched_state)
        if sorted(work.event.prev_event_ids) == sorted(work.extremities or []):
            return None
        with measure("soft_fail"):
            return await check_current_state(self.store, work)

    async def _finish(self, work: Work, outcome: Outcome, problem: Rejection | None) -> Result:
        """Steps 8 and 9: one transaction with everything the event changes, then publish."""
        write = await self._write(work, outcome, problem)
        with measure("persist"):
            await self.store.persist(write)
        if write.outputs and self._batch is None:
            # Nothing new to publish otherwise (outliers, refusals, soft-failures); rows a
            # crash left unsent are the relay's sweep's to publish. A batch's outputs are
            # published once it commits (`handle_batch`).
            if self.await_outputs:
                with measure("publish"):
                    await self.relay.flush(work.room_id)
            else:
                self.flusher.kick(work.room_id)
        if problem is not None:
            log.info("event_refused", outcome=outcome.value, code=problem.code, reason=problem.reason)
            return refused(work.event_id, outcome, problem)
        if work.note is not None:
            return refused(work.event_id, outcome, work.note)
        return Result(work.event_id, outcome)

    async def _write(self, work: Work, outcome: Outcome, problem: Rejection | None) -> EventWrite:
        # Stored with the event, so that a duplicate's reply repeats it.
        problem = problem if problem is not None else work.note
        # One EventWrite built from the fields each outcome needs (`dataclasses.replace` of
        # a base one would walk every field per event).
        def write(**extra: Any) -> EventWrite:
            return EventWrite(
                room_id=work.room_id,
                room_version=work.rules.version,
                event=work.event,
                event_json=stored_json(work.event),
                kind=work.kind,
                outcome=outcome,
                reason_code=problem.code if problem is not None else "",
                reason=problem.reason if problem is not None else "",
                state_before=work.state_before,
                **extra,
            )

        if outcome is Outcome.OUTLIER:
            # A redaction that arrived first applies to the outlier at once: it is stored
            # redacted (outliers publish nothing; if it joins the DAG later, it does so
            # redacted).
            waiting = await redactions.pair_waiting(self.store, work)
            return write(redactions=[(red.event_id, target.event_id) for red, target in waiting])
        if outcome is Outcome.SOFT_FAILED:
            # Decided against the room's current state as read: a fenced store refuses the
            # write if the room moved on since (another worker wrote it meanwhile).
            return write(extremities_seen=work.extremities)
        if outcome is not Outcome.ACCEPTED:
            return write()
        pairs = await redactions.pair(self.store, work)
        redacted = redactions.redacted_outputs(pairs)
        applied = [(red.event_id, target.event_id) for red, target in pairs]
        if work.kind == "old":
            main = old_room_event(work)
            return write(redactions=applied, outputs=records(work.event, [], main, redacted))
        assert work.state_before is not None
        after = self.store.apply(work.state_before, state_entry(work))
        adv = await advance(self.store, work, after)
        invites = await self._invites(work, adv)
        return write(
            redactions=applied,
            extremities=adv.extremities,
            current_state=adv.current,
            extremities_seen=work.extremities,
            outputs=records(work.event, invites, new_room_event(work, adv), redacted),
            notes=await self._check_reset(work, adv),
        )

    async def _events(
        self, work: Work, ids: list[str], adv_events: Mapping[str, StoredEvent] | None = None
    ) -> dict[str, Event]:
        """Events by ID, from what this input already loaded, else from the store."""
        have: dict[str, Event] = {}
        merged = adv_events if adv_events is not None else {}
        for cache in (work.given_state or {}, work.known, merged):
            for eid in ids:
                if eid in cache:
                    have[eid] = cache[eid].event
        have[work.event_id] = work.event
        rest = [i for i in ids if i not in have]
        if rest:
            have.update({eid: se.event for eid, se in (await self.store.events(rest)).items()})
        return have

    async def _invites(
        self, work: Work, adv: Advance
    ) -> list[NewInviteEvent | RetireInviteEvent]:
        added, removed = adv.added_events, adv.removed_events
        if added is None or removed is None:
            merged = adv.merge.events if adv.merge is not None else None
            have = await self._events(work, [*adv.adds, *adv.removes], merged)
            added = [have[i] for i in adv.adds if i in have]
            removed = [have[i] for i in adv.removes if i in have]
        out = invite_outputs(work.room_id, work.rules.version, added, removed, work.event_id)
        return [*out, *retired_by_rewrite(work, out)]

    async def _check_reset(self, work: Work, adv: Advance) -> dict[str, str]:
        """The state-reset detector, on merges only (a linear step cannot reset state)."""
        if adv.merge is None or not adv.removes:
            return {}
        ids = [*adv.removes, *adv.merge.resolved.values()]
        have = await self._events(work, ids, adv.merge.events)
        removed = [have[i] for i in adv.removes if i in have]
        findings = detect_resets(removed, adv.merge.resolved, have)
        for finding in findings:
            STATE_RESETS.labels(finding["kind"]).inc()
            log.warning("state_reset_detected", **finding)
        return {"state_resets": str(len(findings))} if findings else {}
