"""`RoomWriter`: reads a room's head, builds an event on it, submits it, reads the verdict.

Every perform that writes goes through `write` (one event) or `write_chain` (several, each on
the one before, built before any is submitted: room creation and upgrades). Performs of one
room take the room's lock first, so two of them never read the same extremities and fork the
room needlessly; performs of different rooms run at once. (Across worker processes nothing is
shared: two workers may build on the same extremities, which makes a fork the next event
merges, exactly as two servers writing at once do.)

Errors are `PerformFailed` with a stable code (worker.messages.errors.ERROR_CODES).
"""

from __future__ import annotations

import asyncio
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from worker.core.builder import Built, Draft, Refused, RoomHead, build, needed_state
from worker.core.events import Event, StateKey
from worker.core.ids import domain_of, is_valid_user_id
from worker.core.signing import ServerKey
from worker.core.versions import RoomRules, rules_for
from worker.keyed_locks import KeyedLocks
from worker.messages.reply import InputReply
from worker.perform.ports import (
    HeldExtremities,
    PerformFailed,
    PerformStore,
    RoomReads,
    Submitter,
    TxnRecord,
)

if TYPE_CHECKING:
    from worker.perform.remote import RemotePerformer

_OPAQUE = string.ascii_letters
MAX_CACHED_VERSIONS = 100_000
MAX_CACHED_HEADS = 10_000


class _Pending:
    """Events of one room submitted without a verdict yet, and the head after the last."""

    __slots__ = ("head", "in_flight")

    def __init__(self, head: RoomHead) -> None:
        self.head = head
        self.in_flight = 0


# Refusals of a recorded event that say an event it was built on is not stored.
_LOST_DEPENDENCIES = frozenset({"missing_prev_events", "missing_auth_events"})


def _refused(rejection_code: str, reason: str) -> PerformFailed:
    return PerformFailed(
        "forbidden", f"the event is not allowed: {reason}", reason_code=rejection_code,
        reason=reason,
    )


def verdict(reply: InputReply) -> None:
    """Raise unless the pipeline accepted the event (a duplicate of an accepted one counts)."""
    if reply.outcome == "accepted":
        return
    if reply.outcome in ("rejected", "soft_failed"):
        raise _refused(reply.reason_code or reply.outcome, reply.reason or reply.outcome)
    if reply.outcome == "invalid":
        raise PerformFailed("bad_request", f"the event is invalid: {reply.reason}")
    raise PerformFailed("unavailable", f"the roomserver could not store the event: {reply.reason}")


class RoomWriter:
    """Builds, signs and submits events as this server."""

    def __init__(
        self,
        reads: RoomReads,
        store: PerformStore,
        submitter: Submitter,
        key: ServerKey,
        *,
        default_room_version: str = "12",
        clock: Callable[[], float] = time.time,
        held_extremities: HeldExtremities | None = None,
    ) -> None:
        self.reads = reads
        self.store = store
        self.submitter = submitter
        self.key = key
        self.default_room_version = default_room_version
        self._clock = clock
        self._held_extremities = held_extremities
        self.locks = KeyedLocks()
        # The remote paths of join, leave and invite (`worker.perform.remote`); None: local only.
        self.remote: RemotePerformer | None = None
        # A room's version never changes: asked once per room (bounded, cleared when full).
        self._versions: dict[str, str] = {}
        # Rooms with events submitted and no verdict yet: the head after the last of them.
        self._pending: dict[str, _Pending] = {}
        # The head after this writer's last accepted event of a room: reused while the
        # room's extremities are still exactly its latest events (nothing else happened).
        self._known: dict[str, RoomHead] = {}
        # Verdicts awaited on events in flight: the room and its pending head, until recorded.
        self._flights: dict[asyncio.Future[InputReply], tuple[str, _Pending]] = {}

    @property
    def server_name(self) -> str:
        return self.key.server_name

    # -- identifiers --

    def local_user(self, user_id: str, field: str) -> None:
        """`bad_request` unless `user_id` is a valid user of this server."""
        if not is_valid_user_id(user_id):
            raise PerformFailed("bad_request", f"{field} {user_id!r} is not a user ID")
        if domain_of(user_id) != self.server_name:
            raise PerformFailed(
                "bad_request", f"{field} {user_id!r} is not a user of {self.server_name}"
            )

    def opaque_id(self, sigil: str) -> str:
        """A fresh `<sigil><random>:<server>`: v1-v11 room IDs, v1/v2 event IDs."""
        return sigil + "".join(secrets.choice(_OPAQUE) for _ in range(18)) + ":" + self.server_name

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- reading a room --

    async def rules_of(self, room_id: str) -> tuple[str, RoomRules]:
        if not room_id:
            raise PerformFailed("bad_request", "room_id is required")
        version = self._versions.get(room_id)
        if version is None:
            version = await self.reads.room_version(room_id)
            if version is None:
                raise PerformFailed("not_found", f"unknown room {room_id!r}")
            if len(self._versions) >= MAX_CACHED_VERSIONS:
                self._versions.clear()
            self._versions[room_id] = version
        rules = rules_for(version)
        if rules is None:
            raise PerformFailed("internal", f"room {room_id!r} has unknown version {version!r}")
        return version, rules

    async def state_events(
        self, room_id: str, keys: Sequence[StateKey] | None
    ) -> dict[StateKey, Event]:
        """Current state events of the room (`keys` None: all of it; `*` state keys allowed)."""
        ids = await self.reads.current_state(room_id, keys)
        found = await self.reads.events(sorted(set(ids.values())))
        return {k: found[i].event for k, i in ids.items() if i in found}

    async def head(self, room_id: str, drafts: Iterable[Draft]) -> RoomHead:
        """The room's extremities and the current state the drafts' auth needs."""
        _, rules = await self.rules_of(room_id)
        keys: list[StateKey] = []
        for draft in drafts:
            keys += [k for k in needed_state(draft, rules) if k not in keys]
        latest_ids = await self.reads.extremities(room_id)
        state_ids = await self.reads.current_state(room_id, keys)
        found = await self.reads.events(sorted(set(latest_ids) | set(state_ids.values())))
        latest = tuple(found[i].event for i in latest_ids if i in found)
        if not latest:
            raise PerformFailed("unavailable", f"room {room_id!r} has no events to build on")
        state = {k: found[i].event for k, i in state_ids.items() if i in found}
        return RoomHead(rules, room_id, latest, state)

    # -- building and submitting --

    def build(self, draft: Draft, head: RoomHead) -> Built:
        hint = self.opaque_id("$") if head.rules.reference_pairs else ""
        built = build(
            draft, head, key=self.key, origin_server_ts=self.now_ms(), event_id_hint=hint
        )
        if isinstance(built, Refused):
            r = built.rejection
            if built.invalid:
                raise PerformFailed("bad_request", f"the event is invalid: {r.reason}")
            raise _refused(r.code, r.reason)
        return built

    async def write(self, room_id: str, draft: Draft) -> Built:
        """Build `draft` on the room's head, submit it, and answer once it is accepted.

        The room's lock is held only until the input stream holds the event: the next perform
        of the room builds on it straight away (its head is kept in memory until the verdicts
        are in), so a busy room's performs are pipelined instead of waiting a round trip
        through the pipeline each.
        """
        async with self.locks.hold(room_id):
            head = await self.pending_head(room_id, draft)
            built = self.build(draft, head)
            reply = await self._publish(room_id, head, built, built.event_id)
        await self._settle(room_id, reply)
        return built

    async def pending_head(self, room_id: str, draft: Draft) -> RoomHead:
        """The head to build `draft` on: after the room's events in flight, if any (with the
        state keys they do not cover read from current state), else the stored head."""
        pending = self._pending.get(room_id)
        if pending is not None:
            head = pending.head
        else:
            known = self._known.get(room_id)
            if known is None or set(await self._extremities(room_id)) != {
                e.event_id for e in known.latest
            }:
                return await self.head(room_id, [draft])
            head = known
        missing = [k for k in needed_state(draft, head.rules) if k not in head.state]
        if not missing:
            return head
        read = await self.state_events(room_id, missing)
        # What the events in flight set wins over the (older) stored current state.
        return RoomHead(head.rules, room_id, head.latest, {**read, **head.state})

    async def _extremities(self, room_id: str) -> Sequence[str]:
        """The room's extremities, to check a head this writer knows: as the pipeline of this
        process holds them when it writes the room (its cached row is what its last commit
        wrote), else from the database."""
        if self._held_extremities is not None:
            held = self._held_extremities(room_id)
            if held is not None:
                return held
        return await self.reads.extremities(room_id)

    async def _publish(
        self, room_id: str, head: RoomHead, built: Built, msg_id: str
    ) -> Awaitable[InputReply]:
        """Publish under the room's lock and record the event as in flight."""
        try:
            reply = await self.submitter.publish(
                built.room_id, head.rules.version, built.pdu, msg_id, event=built.event
            )
        except TimeoutError:
            raise PerformFailed("unavailable", "the input stream did not take the event") from None
        pending = self._pending.get(room_id)
        if pending is None:
            pending = self._pending[room_id] = _Pending(head)
        pending.head = head.advance(built)
        pending.in_flight += 1
        # The bookkeeping runs once the verdict is in: as its done callback, whether or not
        # anyone waits for it (a chain whose later event could not be published), or, when
        # the perform waits, before `_settle` returns. A submitter that answers some other
        # awaitable than a future gets a task to wait for it.
        waiting = reply if asyncio.isfuture(reply) else asyncio.ensure_future(reply)
        self._flights[waiting] = (room_id, pending)
        waiting.add_done_callback(self._tracked)
        return waiting

    def _tracked(self, reply: asyncio.Future[InputReply]) -> None:
        """Record the verdict on an event in flight (once: the first call does it)."""
        flight = self._flights.pop(reply, None)
        if flight is None:
            return
        room_id, pending = flight
        # Reading the exception also marks it seen: whoever waits for the verdict gets it; if
        # nobody does, the perform that published it has already failed for another reason.
        ok = (
            not reply.cancelled()
            and reply.exception() is None
            and reply.result().outcome == "accepted"
        )
        pending.in_flight -= 1
        # Done, or an event was refused (the head in memory went where the room did not):
        # the next perform reads the stored head again, or checks the one it knows.
        if (pending.in_flight == 0 or not ok) and self._pending.get(room_id) is pending:
            del self._pending[room_id]
            if ok:
                if len(self._known) >= MAX_CACHED_HEADS:
                    self._known.clear()
                self._known[room_id] = pending.head
            else:
                self._known.pop(room_id, None)

    async def _settle(self, room_id: str, reply: Awaitable[InputReply]) -> None:
        try:
            answer = await reply
        except TimeoutError:
            raise PerformFailed(
                "unavailable", f"no verdict in time on an event of {room_id}; it may still be "
                "stored",
            ) from None
        finally:
            if asyncio.isfuture(reply) and reply.done():
                self._tracked(reply)
        verdict(answer)

    async def write_chain(self, head: RoomHead, drafts: Sequence[Draft]) -> list[Built]:
        """Build every draft on the one before (all checked before any is submitted), submit
        them in order, then wait for every verdict. The caller holds the room's lock, if the
        room exists yet."""
        chain: list[tuple[RoomHead, Built]] = []
        for draft in drafts:
            built = self.build(draft, head)
            chain.append((head, built))
            head = head.advance(built)
        replies = []
        for before, built in chain:
            replies.append(await self._publish(built.room_id, before, built, built.event_id))
        outcomes = await asyncio.gather(
            *(self._settle(b.room_id, r) for (_, b), r in zip(chain, replies, strict=True)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [built for _, built in chain]

    # -- send_event with a transaction ID --

    async def write_once(self, room_id: str, draft: Draft, txn_id: str) -> str:
        """`write`, at most once per (sender, txn_id), across restarts.

        The signed event is recorded before it is submitted. A repeat finds the record and
        answers its event ID; if that event is not stored (a crash came between the record and
        the pipeline), the very same event is submitted again. If that event is then refused
        because an event it was built on never reached the stream (a pipelined send lost with
        a worker that went away), the record is dropped and the event built anew, once.
        """
        try:
            return await self._write_once(room_id, draft, txn_id)
        except PerformFailed as exc:
            if exc.reason_code not in _LOST_DEPENDENCIES:
                raise
        return await self._write_once(room_id, draft, txn_id)

    async def _write_once(self, room_id: str, draft: Draft, txn_id: str) -> str:
        async with self.locks.hold(room_id):
            record = await self.store.txn(draft.sender, txn_id)
            if record is None:
                head = await self.pending_head(room_id, draft)
                built = self.build(draft, head)
                record = TxnRecord(
                    room_id=room_id,
                    room_version=head.rules.version,
                    event_id=built.event_id,
                    pdu=msgspec.json.encode(built.pdu),
                )
                if await self.store.add_txn(draft.sender, txn_id, record):
                    reply = await self._publish(room_id, head, built, built.event_id)
                else:
                    reply = None
                    record = await self.store.txn(draft.sender, txn_id)
                    if record is None:
                        raise PerformFailed("conflict", f"transaction {txn_id!r} changed under us")
            else:
                reply = None
        if reply is not None:
            await self._settle_recorded(draft.sender, txn_id, record, reply)
        elif (await self.reads.events([record.event_id])).get(record.event_id) is None:
            # A retry must not reuse the event ID as Nats-Msg-Id: if the first submission is
            # still in the stream, JetStream would drop this one as a duplicate and its reply
            # would never come. The pipeline recognises the event and answers `duplicate`.
            msg_id = f"{record.event_id}~{secrets.token_hex(4)}"
            retry = self.submitter.submit(record.room_id, record.room_version, record.pdu, msg_id)
            await self._settle_recorded(draft.sender, txn_id, record, retry)
        return record.event_id

    async def _settle_recorded(
        self, sender: str, txn_id: str, record: TxnRecord, reply: Awaitable[InputReply]
    ) -> None:
        try:
            await self._settle(record.room_id, reply)
        except PerformFailed as exc:
            if exc.code in ("forbidden", "bad_request"):
                # Refused for good: the transaction may build a new event next time.
                await self.store.drop_txn(sender, txn_id, record.event_id)
            raise


__all__ = ["PerformFailed", "RoomWriter", "verdict"]
