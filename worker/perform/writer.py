"""`RoomWriter`: reads a room's head, builds an event on it, submits it, reads the verdict.

Every perform that writes goes through `write` (one event) or `write_chain` (several, each on
the one before, built before any is submitted: room creation and upgrades). Performs of one
room take the room's lock first, so two of them never read the same extremities and fork the
room needlessly; performs of different rooms run at once. (Across worker processes nothing is
shared: two workers may build on the same extremities, which makes a fork the next event
merges, exactly as two servers writing at once do.)

Errors are `PerformFailed` with a stable code (worker.messages.perform.PERFORM_ERROR_CODES).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import string
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from worker.core.builder import Built, Draft, Refused, RoomHead, build, needed_state
from worker.core.events import Event, StateKey
from worker.core.ids import domain_of, is_valid_user_id
from worker.core.signing import ServerKey
from worker.core.versions import RoomRules, rules_for
from worker.messages.perform import PerformErrorCode
from worker.messages.reply import InputReply
from worker.perform.ports import PerformStore, RoomReads, Submitter, TxnRecord

if TYPE_CHECKING:
    from worker.perform.remote import RemotePerformer

_OPAQUE = string.ascii_letters


class PerformFailed(Exception):
    """A perform that cannot be done; `code` is a `PerformErrorCode`. For `forbidden`,
    `reason_code` and `reason` are the auth rule's."""

    def __init__(
        self, code: PerformErrorCode, message: str, *, reason_code: str = "", reason: str = ""
    ) -> None:
        super().__init__(message)
        self.code: PerformErrorCode = code
        self.message = message
        self.reason_code = reason_code
        self.reason = reason


class RoomLocks:
    """One asyncio lock per room, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, room_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(room_id, (asyncio.Lock(), 0))
        self._locks[room_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[room_id]
            if users == 1:
                del self._locks[room_id]
            else:
                self._locks[room_id] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


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
    ) -> None:
        self.reads = reads
        self.store = store
        self.submitter = submitter
        self.key = key
        self.default_room_version = default_room_version
        self._clock = clock
        self.locks = RoomLocks()
        # The remote paths of join, leave and invite (`worker.perform.remote`); None: local only.
        self.remote: RemotePerformer | None = None

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
        version = await self.reads.room_version(room_id)
        if version is None:
            raise PerformFailed("not_found", f"unknown room {room_id!r}")
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

    async def submit(self, built: Built, version: str, *, msg_id: str = "") -> None:
        try:
            reply = await self.submitter.submit(
                built.room_id, version, built.pdu, msg_id or built.event_id
            )
        except TimeoutError:
            raise PerformFailed(
                "unavailable",
                f"no verdict on {built.event_id} in time; it may still be stored",
            ) from None
        verdict(reply)

    async def write(self, room_id: str, draft: Draft) -> Built:
        """Build `draft` on the room's head and submit it; hold the room's lock."""
        async with self.locks.hold(room_id):
            head = await self.head(room_id, [draft])
            built = self.build(draft, head)
            await self.submit(built, head.rules.version)
            return built

    async def write_chain(self, head: RoomHead, drafts: Sequence[Draft]) -> list[Built]:
        """Build every draft on the one before (all checked before any is submitted), then
        submit them in order. The caller holds the room's lock, if the room exists yet."""
        chain: list[Built] = []
        for draft in drafts:
            built = self.build(draft, head)
            chain.append(built)
            head = head.advance(built)
        for built in chain:
            await self.submit(built, head.rules.version)
        return chain

    # -- send_event with a transaction ID --

    async def write_once(self, room_id: str, draft: Draft, txn_id: str) -> str:
        """`write`, at most once per (sender, txn_id), across restarts.

        The signed event is recorded before it is submitted. A repeat finds the record and
        answers its event ID; if that event is not stored (a crash came between the record and
        the pipeline), the very same event is submitted again.
        """
        async with self.locks.hold(room_id):
            record = await self.store.txn(draft.sender, txn_id)
            if record is None:
                head = await self.head(room_id, [draft])
                built = self.build(draft, head)
                record = TxnRecord(
                    room_id=room_id,
                    room_version=head.rules.version,
                    event_id=built.event_id,
                    pdu=msgspec.json.encode(built.pdu),
                )
                if await self.store.add_txn(draft.sender, txn_id, record):
                    await self._submit_recorded(draft.sender, txn_id, record, retry=False)
                    return record.event_id
                record = await self.store.txn(draft.sender, txn_id)
                if record is None:
                    raise PerformFailed("conflict", f"transaction {txn_id!r} changed under us")
            if (await self.reads.events([record.event_id])).get(record.event_id) is None:
                await self._submit_recorded(draft.sender, txn_id, record, retry=True)
            return record.event_id

    async def _submit_recorded(
        self, sender: str, txn_id: str, record: TxnRecord, *, retry: bool
    ) -> None:
        # A retry must not reuse the event ID as Nats-Msg-Id: if the first submission is
        # still in the stream, JetStream would drop this one as a duplicate and its reply
        # would never come. The pipeline recognises the event and answers `duplicate`.
        msg_id = f"{record.event_id}~{secrets.token_hex(4)}" if retry else record.event_id
        try:
            reply = await self.submitter.submit(
                record.room_id, record.room_version, record.pdu, msg_id
            )
        except TimeoutError:
            raise PerformFailed(
                "unavailable", f"no verdict on {record.event_id} in time; it may still be stored"
            ) from None
        try:
            verdict(reply)
        except PerformFailed as exc:
            if exc.code in ("forbidden", "bad_request"):
                # Refused for good: the transaction may build a new event next time.
                await self.store.drop_txn(sender, txn_id, record.event_id)
            raise


__all__ = ["PerformFailed", "RoomLocks", "RoomWriter", "verdict"]
