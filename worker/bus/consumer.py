"""The input consumer: shard pull consumers → per-room queues → the handler → settlement.

    JetStream shard k ──fetch(batch)──▶ intake (decode once, route by room)
                                         │
                                         ▼
                         RoomDispatcher: one queue and task per room
                                         │
                                         ▼
                 handler.handle(room_id, input, delivery=, in_progress=)
                                         │
                                         ▼
             settle.Fate ──▶ dead letter? ──▶ ack / nak(delay) / term ──▶ reply

Each shard has one durable pull consumer (explicit ack, `max_ack_pending` = what one worker
holds at most). A message is settled only after its room finished it (never acked early), and
every held message, queued or being handled, gets a periodic `in_progress` so a busy room's
backlog is not redelivered behind its back. Shards are started and stopped one by one, so a
lease manager can move them between workers; `drain()` stops everything gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from worker.bus import pull, settle
from worker.bus.consumer_settings import ConsumerSettings
from worker.bus.delivery import AckInfo, Delivery, ack_info
from worker.bus.dispatch import RoomDispatcher
from worker.bus.handler import BatchInputHandler, InputHandler, QueuedInput
from worker.bus.local_replies import LocalReplies
from worker.bus.settling import Settler
from worker.bus.subjects import (
    MSG_ID_HEADER,
    REPLY_INBOX_HEADER,
    ROOM_ID_HEADER,
    SubjectError,
    Subjects,
    room_id_from_token,
)
from worker.bus.trim import InputTrimmer
from worker.errors import RetryableError
from worker.messages.input import INPUT_DECODER
from worker.observability.logging import bind_event, get_logger
from worker.observability.metrics import CONSUMER_PENDING, REDELIVERIES, SHARDS_OWNED

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

_log = get_logger(__name__)
# The pseudo-room of messages whose room cannot be known: no real room token is empty.
_UNROUTABLE = ""


class InputConsumer:
    """Consumes the input shards this worker owns and settles every message it takes."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        handler: InputHandler,
        settings: ConsumerSettings | None = None,
        *,
        local_replies: LocalReplies | None = None,
    ) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._subjects = subjects
        self._handler = handler
        self.settings = settings or ConsumerSettings()
        self._settler = Settler(
            nc,
            subjects,
            self.settings.retry,
            leave_window=self._leave_window,
            release=self._release,
            local_replies=local_replies,
        )
        # Checked once: an isinstance against a runtime Protocol is slow.
        self._batch_handler: BatchInputHandler | None = (
            handler
            if isinstance(handler, BatchInputHandler) and self.settings.room_batch > 1
            else None
        )
        batching = self._batch_handler is not None
        self._dispatcher: RoomDispatcher[Delivery] = RoomDispatcher(
            self._process,
            self._process_batch if batching else None,
            max_batch=self.settings.room_batch,
        )
        self._held: set[Delivery] = set()
        # Acks of finished messages still waiting for JetStream's confirmation.
        self._settling: set[asyncio.Task[None]] = set()
        self._fetchers: dict[int, asyncio.Task[None]] = {}
        self._stopping: dict[int, asyncio.Event] = {}
        # Slots promised to fetches under way (see `_fetch_loop`), in all and per shard.
        self._reserved = 0
        self._reserved_by_shard: Counter[int] = Counter()
        # Messages held per shard: each shard gets its share of `max_in_flight`, so a room
        # with a backlog in one shard never starves the rooms of the others.
        self._held_by_shard: Counter[int] = Counter()
        self._held_bytes_by_shard: Counter[int] = Counter()
        self._heartbeat: asyncio.Task[None] | None = None
        self._trimmer = InputTrimmer(
            self._js, subjects, self.settings.trim_interval, lambda: self._fetchers.keys()
        )
        self._trimming: asyncio.Task[None] | None = None
        # Shards given up without waiting (a lost lease): their held messages still queued or
        # retrying are handed back instead of handled, since another worker now owns them.
        self._abandoned: set[int] = set()

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def shards(self) -> frozenset[int]:
        """The shards being consumed now."""
        return frozenset(self._fetchers)

    @property
    def in_flight(self) -> int:
        return self._dispatcher.in_flight

    async def start(self, shards: Iterable[int] | None = None) -> None:
        """Consume the given shards (all of them by default)."""
        for shard in range(self.settings.shards) if shards is None else shards:
            await self.start_shard(shard)

    async def ensure_consumer(self, shard: int) -> None:
        """Create the shard's durable consumer, or update it in place to our settings."""
        config = self.settings.consumer_config(self._subjects, shard)
        await self._js.add_consumer(self._subjects.input_stream, config)

    async def reset_consumer(self, shard: int) -> None:
        """Delete and recreate the shard's durable consumer.

        The old consumer's settled messages are trimmed first (`worker.bus.trim`), so the new
        consumer (deliver all) starts at the oldest message not yet settled, in stream order
        (messages settled out of order above it come again, and are answered as duplicates).
        Messages a dead owner held, or deliveries lost in transit, come back at once and
        before the room's later messages instead of after `ack_wait` behind them (where a
        later event would be refused for its missing prev event). Only the shard's lease
        holder may do this.
        """
        await self._trimmer.trim(shard)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(
                self._subjects.input_stream, self._subjects.input_consumer(shard)
            )
        await self.ensure_consumer(shard)

    async def start_shard(self, shard: int, *, fresh: bool = False) -> None:
        """Consume a shard; `fresh` first resets its consumer (see `reset_consumer`)."""
        if not 0 <= shard < self.settings.shards:
            raise ValueError(f"shard {shard} is outside 0..{self.settings.shards - 1}")
        if shard in self._fetchers:
            return
        self._abandoned.discard(shard)
        if fresh:
            await self.reset_consumer(shard)
        else:
            await self.ensure_consumer(shard)
        sub = await self._js.pull_subscribe_bind(
            self._subjects.input_consumer(shard), self._subjects.input_stream
        )
        stop = self._stopping[shard] = asyncio.Event()
        self._fetchers[shard] = asyncio.create_task(
            self._fetch_loop(shard, sub, stop), name=f"input-shard-{shard}"
        )
        SHARDS_OWNED.inc()
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="input-heartbeat")
        if self._trimming is None:
            self._trimming = asyncio.create_task(self._trimmer.run(), name="input-trim")
        _log.info("shard_started", shard=shard)

    async def stop_shard(self, shard: int, grace: float | None = None) -> bool:
        """Stop fetching a shard and wait for its held messages; False if some remain.

        Messages still held after `grace` keep running: their rooms' advisory locks fence
        the writes, and the new owner's delivery of them is answered as a duplicate.
        """
        task = self._fetchers.pop(shard, None)
        if task is None:
            return True
        self._stopping.pop(shard).set()
        await self._join_fetcher(task)
        SHARDS_OWNED.dec()
        CONSUMER_PENDING.remove(str(shard))
        grace = self.settings.drain_grace if grace is None else grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._dispatcher.wait_for(
                    lambda: not any(d.shard == shard for d in self._held)
                )
        done = not any(d.shard == shard for d in self._held)
        if not done:
            self._abandoned.add(shard)
        await self._final_trim([shard])
        _log.info("shard_stopped", shard=shard, finished=done)
        return done

    async def drain(self, grace: float | None = None) -> bool:
        """Stop fetching, finish in-flight work within `grace`; False if it had to give up.

        Work not finished in time is cancelled and handed back to JetStream unacked (a nak
        without delay), never acked: another worker, or this one after a restart, redoes it.
        """
        grace = self.settings.drain_grace if grace is None else grace
        for shard in list(self._fetchers):
            self._stopping.pop(shard).set()
        fetchers = list(self._fetchers.values())
        shards = list(self._fetchers)
        self._fetchers.clear()
        for task in fetchers:
            await self._join_fetcher(task)
        for shard in shards:
            SHARDS_OWNED.dec()
            CONSUMER_PENDING.remove(str(shard))
        finished = await self.wait_idle(grace)
        if not finished:
            left = await self._dispatcher.cancel()
            _log.warning("drain_grace_exceeded", unfinished=len(left), grace=grace)
            for d in left:
                await self._settler.carry_out(d, settle.of_shutdown())
        await asyncio.gather(*list(self._settling), return_exceptions=True)
        await self._final_trim(shards)
        background = (self._heartbeat, self._trimming)
        self._heartbeat = self._trimming = None
        for running in background:
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        return finished

    async def _final_trim(self, shards: Iterable[int]) -> None:
        """Trim stopped shards once more, so that the stream keeps only what is not settled
        (bounded: a stop must not wait long for a NATS that does not answer)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.fetch_timeout + 1):
                for shard in shards:
                    await self._trimmer.trim(shard)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is held, acks included (tests and burst mode); False on
        timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._dispatcher.wait_for(
                    lambda: self._dispatcher.in_flight == 0 and not self._settling
                )
        except TimeoutError:
            return False
        return True

    async def _join_fetcher(self, task: asyncio.Task[None]) -> None:
        # A fetch in progress returns within `fetch_timeout`; letting it finish (instead of
        # cancelling it) means the messages it brings are held and settled, not stranded
        # until their ack wait runs out.
        try:
            async with asyncio.timeout(self.settings.fetch_timeout + 5):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- fetching ----------------------------------------------------------------------

    async def _fetch_loop(
        self, shard: int, sub: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        limit = self.settings.max_in_flight
        # Consumer sequence of the last delivery taken: every delivery of a shard's consumer
        # comes to its one owner, so a jump means deliveries were lost in transit (a NATS
        # node went away with a pull request): see `_restart_after_gap`.
        last_seq: int | None = None
        try:
            while not stop.is_set():
                # Capacity is reserved before fetching: the shards' fetch loops run side by
                # side, and each must not count on room that another is about to fill.
                await self._dispatcher.wait_for(
                    lambda: stop.is_set() or self._room_to_fetch(shard, limit) > 0
                )
                if stop.is_set():
                    break
                want = min(self.settings.batch, self._room_to_fetch(shard, limit))
                self._reserved += want
                self._reserved_by_shard[shard] += want
                try:
                    msgs = await pull.fetch(sub, want, self.settings.fetch_timeout)
                except TimeoutError:  # nats' own TimeoutError included
                    CONSUMER_PENDING.labels(str(shard)).set(0)
                    continue
                except (NatsError, JetStreamError) as exc:
                    _log.warning("fetch_failed", shard=shard, error=repr(exc))
                    await asyncio.sleep(min(self.settings.fetch_timeout, 1.0))
                    continue
                finally:
                    self._reserved -= want
                    self._reserved_by_shard[shard] -= want
                    # Another shard may be waiting for the slots this fetch did not fill.
                    self._dispatcher.notify()
                gap = False
                info: AckInfo | None = None
                for msg in msgs:
                    info = ack_info(msg.reply)
                    seq = info.consumer_sequence if info is not None else None
                    if (
                        self.settings.reset_on_gap
                        and last_seq is not None
                        and seq is not None
                        and seq != last_seq + 1
                    ):
                        _log.warning("delivery_gap", shard=shard, expected=last_seq + 1, got=seq)
                        gap = True
                        break
                    last_seq = seq if seq is not None else last_seq
                    self._intake(shard, msg, info)
                if gap:
                    sub = await self._restart_after_gap(shard, sub, stop)
                    last_seq = None
                    continue
                if info is not None:
                    CONSUMER_PENDING.labels(str(shard)).set(info.pending)
        finally:
            with contextlib.suppress(NatsError, JetStreamError):
                await sub.unsubscribe()

    def _room_to_fetch(self, shard: int, limit: int) -> int:
        """How many more messages `shard` may take now.

        Each shard has its own share of `limit` (a K-th of it), not a claim on a common
        pool: a room with a backlog fills only its own shard's share, and the rooms of the
        other shards keep flowing. The shares add up to at most `limit`.
        """
        shards = self.settings.shards
        if self._held_bytes_by_shard[shard] >= max(1, self.settings.max_in_flight_bytes // shards):
            return 0
        share = max(1, limit // shards)
        own = self._held_by_shard[shard] + self._reserved_by_shard[shard]
        return share - own

    async def _restart_after_gap(
        self, shard: int, sub: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> JetStreamContext.PullSubscription:
        """Finish what came before the gap, then reset the consumer so the lost deliveries
        come back first; what came after the gap is dropped here and redelivered in order."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_grace):
                await self._dispatcher.wait_for(
                    lambda: stop.is_set() or not any(d.shard == shard for d in self._held)
                )
        with contextlib.suppress(NatsError, JetStreamError):
            await sub.unsubscribe()
        while True:
            try:
                await self.reset_consumer(shard)
                return await self._js.pull_subscribe_bind(
                    self._subjects.input_consumer(shard), self._subjects.input_stream
                )
            except (NatsError, JetStreamError) as exc:
                _log.warning("consumer_reset_failed", shard=shard, error=repr(exc))
                await asyncio.sleep(1.0)

    def _intake(self, shard: int, msg: Msg, info: AckInfo | None) -> None:
        """Decode once, work out the room, and queue the message on it."""
        headers = msg.headers or {}
        d = Delivery(
            msg=msg,
            shard=shard,
            delivery=info.delivered if info is not None else 1,
            stream_sequence=info.stream_sequence if info is not None else 0,
            event_id=headers.get(MSG_ID_HEADER, ""),
            reply_inbox=headers.get(REPLY_INBOX_HEADER) or None,
        )
        if d.delivery > 1:
            REDELIVERIES.inc()
        room_id = _UNROUTABLE
        try:
            _, token = self._subjects.parse_stored_input(msg.subject)
            room_id = room_id_from_token(token)
        except SubjectError as exc:
            d.problem = (exc.code, str(exc))
        header_room = headers.get(ROOM_ID_HEADER)
        if d.problem is None and header_room is not None and header_room != room_id:
            d.problem = (
                "room_mismatch",
                f"Room-ID header {header_room!r} does not match the subject's room {room_id!r}",
            )
            room_id = _UNROUTABLE
        if d.problem is None:
            try:
                d.input = INPUT_DECODER.decode(msg.data)
            except msgspec.DecodeError as exc:
                d.problem = ("undecodable", f"body is not an InputRoomEvent: {exc}")
            except RecursionError:
                # msgspec walks nested JSON recursively, even inside a Raw field.
                d.problem = ("undecodable", "body is nested too deeply to decode")
        self._held.add(d)
        self._held_by_shard[shard] += 1
        self._held_bytes_by_shard[shard] += len(msg.data)
        self._dispatcher.submit(room_id, d)

    # --- handling ----------------------------------------------------------------------

    async def _process(self, room_id: str, d: Delivery) -> None:
        with bind_event(room_id, d.event_id):
            if d.shard in self._abandoned:
                await self._settler.carry_out(d, settle.of_shutdown())
                return
            fate = await self._decide(room_id, d)
            # Retried here, with the room held (see `worker.bus.settle`); the heartbeat keeps
            # the message alive meanwhile.
            while fate.action is settle.AckAction.RETRY_HERE:
                await asyncio.sleep(fate.delay)
                if d.shard in self._abandoned:
                    fate = settle.of_shutdown()
                    break
                d.delivery += 1
                fate = await self._decide(room_id, d)
            if fate.action is settle.AckAction.ACK and not fate.dead_letter:
                # The outcome is committed: the room's next message need not wait for
                # JetStream to confirm this ack (a round trip). The ack, then the reply, then
                # forgetting the message (`_held`) follow in the background, in that order.
                task = asyncio.create_task(self._settler.carry_out(d, fate), name="settle")
                self._settling.add(task)
                task.add_done_callback(self._settled)
                return
            await self._settler.carry_out(d, fate)

    async def _process_batch(self, room_id: str, ds: list[Delivery]) -> None:
        """Several queued messages of a room: runs of plain inputs go to `handle_batch`
        together; anything else (undecodable, over its delivery limit, of an abandoned
        shard) is processed on its own, in its place."""
        run: list[Delivery] = []
        limit = self.settings.retry.max_deliveries
        for d in ds:
            plain = (
                d.input is not None
                and d.problem is None
                and d.delivery <= limit
                and d.shard not in self._abandoned
            )
            if plain:
                run.append(d)
                continue
            await self._process_run(room_id, run)
            run = []
            await self._process(room_id, d)
        await self._process_run(room_id, run)

    async def _process_run(self, room_id: str, run: list[Delivery]) -> None:
        if len(run) < 2:
            for d in run:
                await self._process(room_id, d)
            return
        handler = self._batch_handler
        assert handler is not None
        items: list[QueuedInput] = []
        for d in run:
            assert d.input is not None
            items.append((d.input, d.delivery, d.touch))
        try:
            results = await handler.handle_batch(room_id, items)
        except Exception as exc:
            # Nothing of the batch is answered yet: each input again on its own, where a
            # transient failure is retried in place and a bad one dead-lettered alone.
            _log.info("batch_replayed", room_id=room_id, size=len(run), error=repr(exc))
            for d in run:
                await self._process(room_id, d)
            return
        acked: list[tuple[Delivery, settle.Fate]] = []
        for d, result in zip(run, results, strict=True):
            if not d.event_id:
                d.event_id = result.event_id
            fate = settle.of_result(result)
            if fate.action is settle.AckAction.ACK and not fate.dead_letter:
                acked.append((d, fate))
            else:
                await self._settler.carry_out(d, fate)
        if acked:
            task = asyncio.create_task(self._settler.ack_all(acked), name="settle")
            self._settling.add(task)
            task.add_done_callback(self._settled)

    def _release(self, d: Delivery) -> None:
        """Forget a settled message."""
        d.settled = True
        self._leave_window(d)
        self._held.discard(d)
        self._trimmer.settled(d.shard)

    def _leave_window(self, d: Delivery) -> None:
        """Stop counting a message against its shard's fetch window: once its outcome is
        decided and its ack about to go, the shard may fetch the next one. The message is
        still held (`_held`: a shard being stopped waits for it) until the ack is confirmed,
        which under load takes far longer than sending it, and would otherwise stall the
        fetching of every room of the shard meanwhile."""
        if d.windowed:
            d.windowed = False
            self._held_by_shard[d.shard] -= 1
            self._held_bytes_by_shard[d.shard] -= len(d.msg.data)
            # A fetch loop may be waiting for its shard's share to free up.
            self._dispatcher.notify()

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("settle_crashed", error=repr(task.exception()))
        self._dispatcher.notify()

    async def _decide(self, room_id: str, d: Delivery) -> settle.Fate:
        policy = self.settings.retry
        if d.problem is not None:
            code, reason = d.problem
            return settle.of_undecodable(event_id=d.event_id, reason_code=code, reason=reason)
        if d.delivery > policy.max_deliveries:
            return settle.of_delivery_limit(
                event_id=d.event_id, delivery=d.delivery, policy=policy
            )
        assert d.input is not None
        try:
            result = await self._handler.handle(
                room_id, d.input, delivery=d.delivery, in_progress=d.touch
            )
        except Exception as exc:
            fate = settle.of_error(exc, event_id=d.event_id, delivery=d.delivery, policy=policy)
            log = _log.warning if fate.action is settle.AckAction.RETRY_HERE else _log.error
            log(
                "handler_failed",
                reason_code=fate.reason_code,
                reason=fate.reason,
                delivery=d.delivery,
                fate=fate.situation.value,
                exc_info=not isinstance(exc, RetryableError),
            )
            return fate
        if not d.event_id:
            d.event_id = result.event_id
        return settle.of_result(result)

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for d in list(self._held):
                # Only messages held long enough to matter: most are settled in milliseconds.
                if not d.settled and now - d.received >= interval:
                    await d.touch()


__all__ = [
    "AckInfo",
    "BatchInputHandler",
    "ConsumerSettings",
    "InputConsumer",
    "InputHandler",
    "QueuedInput",
    "ack_info",
]
