"""The `backfill` perform: history before some events, from the store, else from the room's
other servers (DESIGN §4 Perform API).

The walk goes back from `event_ids` through prev_events, deepest first (as `missing_events`
walks), over the events we hold in the DAG. Where it reaches an event we do not hold (or
hold only as an outlier), the history continues on other servers: the `backfill` verb is
asked of the room's joined servers in turn for what is still wanted, every PDU of the answer
is checked (format, derived ID, room, content hash; more than asked for is garbage), and the
events are submitted as `old` inputs, oldest first, through the input stream. What the
pipeline accepts is returned with the stored events, newest first, at most `limit` in all.

A remote asker (`server_name`: the federation API answering another server's `/backfill`)
is answered from the store alone, leaving out the events it may not see under the room's
history visibility (`worker.query.visibility`). Asking other servers on its behalf would let
two servers that both lack some history ask each other for it, round after round, each
waiting on the other; and the asker can ask those servers itself.

A backfilled event whose prev events are neither stored here with a state nor earlier in
the same answer (the oldest of a page) gets the state before it from the server that
answered (`worker.perform.pulled_state`: `state_ids`, then `event`s or `state`, every event
checked as a join's state is); the events we lacked are stored as outliers in bulk
(`OutlierStore`), and the event is submitted with `state_event_ids`, so the pipeline stores
it with a snapshot (an `old` event still never touches the room's current state or
extremities), and the events built on it have one too. History visibility can then be
evaluated at them, and they are served to other servers as the room's visibility allows.
A state that cannot be had or does not check is refused (logged with its reason) and the
event is stored without a state, as before: the event itself passed its own checks and our
users may read it; only serving it to other servers waits, which is the safe side of
visibility. Refusing the whole page instead would lose history over one server's bad state
answer. An event stored without a state is not served to another server: the visibility at
it, and its members then, are not known here.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Sequence
from typing import Protocol

import msgspec
import structlog

from worker.core.events import MEMBER, Event
from worker.core.ids import domain_of
from worker.core.joins import check_event
from worker.core.outcomes import Rejection
from worker.core.versions import RoomRules, rules_for
from worker.messages.federation_perform import BackfillResponse as FederationBackfill
from worker.messages.input import InputRoomEvent
from worker.messages.perform_backfill import BackfillRequest, BackfillResponse
from worker.perform.ports import InputPort, PerformFailed, Unanswered
from worker.perform.pulled_state import PulledState, StateFederation, pull_state
from worker.pipeline.fetch_missing import GapSettings
from worker.query.handlers import _allowed
from worker.query.ports import WILDCARD, QueryEvent, QueryStore

log = structlog.get_logger(__name__)

MAX_LIMIT = 1000
# States asked for per answer at most: an honest page needs one (its oldest event), a few
# where history forks; a forged page of events citing unknown prevs must not cost more.
MAX_STATE_FETCHES = 8


class BackfillOutliers(Protocol):
    """Stores checked events as outliers in bulk (`worker.perform.remote.OutlierStore`)."""

    async def store_outliers(
        self, room_id: str, room_version: str, events: Sequence[Event]
    ) -> list[str]: ...


class BackfillFederation(Protocol):
    async def backfill(
        self, destination: str, room_id: str, event_ids: tuple[str, ...], limit: int
    ) -> FederationBackfill | Unanswered: ...


class Backfiller:
    def __init__(
        self,
        reads: QueryStore,
        federation: BackfillFederation,
        inputs: InputPort,
        server_name: str,
        *,
        states: StateFederation | None = None,
        outliers: BackfillOutliers | None = None,
        settings: GapSettings | None = None,
    ) -> None:
        """Without `states` (and `outliers`), backfilled events whose prev events we lack
        are stored without a state."""
        self.reads = reads
        self.federation = federation
        self.inputs = inputs
        self.server_name = server_name
        self.states = states
        self.outliers = outliers
        self.settings = settings or GapSettings()

    async def backfill(self, req: BackfillRequest) -> BackfillResponse:
        if not 1 <= req.limit <= MAX_LIMIT:
            raise PerformFailed("bad_request", f"limit must be within 1..{MAX_LIMIT}")
        if not req.event_ids:
            raise PerformFailed("bad_request", "event_ids must not be empty")
        version = await self.reads.room_version(req.room_id)
        rules = rules_for(version) if version is not None else None
        if rules is None:
            raise PerformFailed("not_found", f"unknown room {req.room_id!r}")
        remote = bool(req.server_name) and req.server_name != self.server_name
        stored, gaps = await self._walk(req.room_id, req.event_ids, req.limit)
        events = [(e.depth, e.event_id, msgspec.Raw(e.json)) for e in stored]
        if len(events) < req.limit and gaps and not remote:
            fetched = await self._fetch(req.room_id, rules, gaps, req.limit - len(events))
            events += fetched
        events.sort(key=lambda t: (-t[0], t[1]))
        events = events[: req.limit]
        if remote:
            allowed = await _allowed(self.reads, req.server_name, [e[1] for e in events])
            events = [e for e in events if allowed.get(e[1], False)]
        return BackfillResponse(events=[raw for _, _, raw in events])

    async def _walk(
        self, room_id: str, start: Sequence[str], limit: int
    ) -> tuple[list[QueryEvent], list[str]]:
        """(events held in the DAG, deepest first, at most `limit`; the IDs the walk reached
        and does not hold: where the history goes on elsewhere)."""
        seen: set[str] = set()
        heap: list[tuple[int, str]] = []
        loaded: dict[str, QueryEvent] = {}
        gaps: list[str] = []

        async def push(ids: Sequence[str]) -> None:
            fresh = sorted({i for i in ids if i not in seen})
            seen.update(fresh)
            found = await self.reads.events(fresh) if fresh else {}
            for i in fresh:
                ev = found.get(i)
                if ev is None or ev.room_id != room_id or ev.outcome == "outlier":
                    gaps.append(i)
                elif ev.outcome == "accepted":
                    loaded[i] = ev
                    heapq.heappush(heap, (-ev.depth, i))

        await push(start)
        out: list[QueryEvent] = []
        while heap and len(out) < limit:
            _, i = heapq.heappop(heap)
            ev = loaded[i]
            out.append(ev)
            await push(ev.event.prev_event_ids)
        return out, gaps

    async def _servers(self, room_id: str) -> list[str]:
        state = await self.reads.current_state(room_id, [(MEMBER, WILDCARD)])
        found = await self.reads.events(sorted(set(state.values())))
        servers = {
            domain_of(k[1]) or "" for k, i in state.items()
            if i in found and found[i].membership == "join"
        }
        return sorted(s for s in servers if s and s != self.server_name)

    async def _fetch(
        self, room_id: str, rules: RoomRules, gaps: list[str], want: int
    ) -> list[tuple[int, str, msgspec.Raw]]:
        reasons: list[str] = []
        for server in await self._servers(room_id):
            answer = await self.federation.backfill(server, room_id, tuple(gaps), want)
            if isinstance(answer, Unanswered):
                reasons.append(f"{server}: {answer.reason}")
                continue
            events = _checked(answer.pdus, rules, room_id, want)
            if isinstance(events, Rejection):
                reasons.append(f"{server}: {events.code}: {events.reason}")
                continue
            return await self._store(room_id, rules, server, events)
        if reasons:
            log.info("backfill_unanswered", room_id=room_id, reasons=reasons)
        return []

    async def _store(
        self, room_id: str, rules: RoomRules, server: str, events: list[Event]
    ) -> list[tuple[int, str, msgspec.Raw]]:
        attempt = "~" + secrets.token_hex(4)
        ordered = sorted(events, key=lambda e: (e.depth, e.event_id))
        states = await self._states(room_id, rules, server, ordered)
        inputs: list[tuple[InputRoomEvent, str]] = []
        # The backfilled event each input is, None for a state event put before one.
        owners: list[Event | None] = []
        sent: set[str] = set()
        for e in ordered:
            pulled = states.get(e.event_id)
            if pulled is not None:
                extra = await self._outlier_inputs(room_id, rules, server, pulled, attempt, sent)
                inputs += extra
                owners += [None] * len(extra)
            inputs.append((InputRoomEvent(
                kind="old", event=msgspec.Raw(msgspec.json.encode(e.pdu)),
                room_version=rules.version, origin=server,
                state_event_ids=pulled.state_ids if pulled is not None else None,
            ), e.event_id + attempt))
            owners.append(e)
        try:
            replies = await self.inputs.submit_inputs(room_id, inputs)
        except TimeoutError:
            raise PerformFailed("unavailable", "no verdict on the backfilled events in time") from None
        out: list[tuple[int, str, msgspec.Raw]] = []
        for event, reply in zip(owners, replies, strict=True):
            if event is None:
                continue
            if reply.outcome != "accepted":
                log.info("backfilled_event_refused", event_id=event.event_id,
                         code=reply.reason_code, reason=reply.reason)
                continue
            pdu = {**event.pdu, "event_id": event.event_id}
            out.append((event.depth, event.event_id, msgspec.Raw(msgspec.json.encode(pdu))))
        return out

    async def _states(
        self, room_id: str, rules: RoomRules, server: str, ordered: Sequence[Event]
    ) -> dict[str, PulledState]:
        """The state before each event (oldest first) whose prev events are neither stored
        with a state nor in the answer, from `server`; events whose state could not be had
        are absent (stored without a state)."""
        if self.states is None or self.outliers is None:
            return {}
        in_answer = {e.event_id for e in ordered}
        outside = {p for e in ordered for p in e.prev_event_ids if p not in in_answer}
        # The answer's own events too: one held here with a state already needs none.
        found = await self.reads.events(sorted(outside | in_answer))
        stated = {i for i, ev in found.items() if ev.has_state and ev.room_id == room_id}
        out: dict[str, PulledState] = {}
        asked = 0
        for e in ordered:
            if e.event_id in stated or all(
                p in in_answer or p in stated for p in e.prev_event_ids
            ):
                continue
            if asked == MAX_STATE_FETCHES:
                log.info("backfill_state_not_asked", event_id=e.event_id,
                         reason=f"{MAX_STATE_FETCHES} states asked for this answer already")
                continue
            asked += 1
            pulled = await pull_state(
                self.states, self.reads, rules, room_id, e.event_id, server, self.settings
            )
            if isinstance(pulled, Rejection):
                log.warning("backfill_state_refused", event_id=e.event_id, server=server,
                            code=pulled.code, reason=pulled.reason)
                continue
            out[e.event_id] = pulled
        return out

    async def _outlier_inputs(
        self, room_id: str, rules: RoomRules, server: str, pulled: PulledState, attempt: str,
        sent: set[str],
    ) -> list[tuple[InputRoomEvent, str]]:
        """Store the state's events we lacked, in bulk; those the pipeline must store
        itself (`worker.storage.outliers`) as `outlier` inputs, to go before the event
        (once: another state of the page may need them too)."""
        assert self.outliers is not None
        left = set(await self.outliers.store_outliers(room_id, rules.version, pulled.fetched))
        left -= sent
        sent |= left
        return [
            (InputRoomEvent(
                kind="outlier", event=msgspec.Raw(msgspec.json.encode(e.pdu)),
                room_version=rules.version, origin=server,
            ), e.event_id + attempt)
            for e in pulled.fetched if e.event_id in left
        ]


def _checked(
    pdus: Sequence[msgspec.Raw], rules: RoomRules, room_id: str, want: int
) -> list[Event] | Rejection:
    """Every PDU of a backfill answer checked; one bad PDU refuses the answer."""
    if len(pdus) > want:
        return Rejection("oversized", f"{len(pdus)} events, {want} asked for", "federation")
    out: list[Event] = []
    for raw in pdus:
        try:
            pdu = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            pdu = None
        event = check_event(pdu, rules, room_id)
        if isinstance(event, Rejection):
            return event
        out.append(event)
    return out


__all__ = ["MAX_LIMIT", "BackfillFederation", "Backfiller"]
