"""The outbox relay: publishes committed outbox rows to the output stream (DESIGN §2 step 9).

The pipeline writes one outbox row per output in the event's own transaction, then calls
`flush(room_id)`; the relay publishes that room's unsent rows in outbox order to
`<prefix>.output.<room token>` with `Nats-Msg-Id` = `msg_id(row)`, waits for
JetStream's `PubAck`, and marks the rows sent. After a crash between commit and publish, `sweep()` (run at
start and then periodically by `run()`) publishes whatever is still unsent, and updates the
outbox gauges when given a `stats` callable (the store's `stats`). Publishing a row
twice is harmless within the stream's duplicate window: JetStream drops the repeat.

Batches: a room's rows of one pass go out as JetStream *atomic batches* (ADR-50, nats-server
2.12+, a stream with `allow_atomic`): every row but the last is a plain publish carrying
`Nats-Batch-Id` and `Nats-Batch-Sequence`, the last also carries `Nats-Batch-Commit: 1` and is
the only request, so a room's pass costs one round trip instead of one per row. The server
stores the whole batch or nothing, and rejects the whole batch if any of its `Nats-Msg-Id`s is
already stored (error 10201), which is what a crash between publish and mark-sent leaves
behind. A batch is at most `max_batch_messages` rows (the server's default limit is 1,000) and
`max_batch_bytes`; a bigger pass is cut into consecutive batches, each committed before the
next is sent. On any batch error the rows go out the serial way below; after a duplicate
rejection only until the first row that JetStream stores afresh, then batches resume.

The pump (`kick`) reads the kicked rooms together, and rows that add up to a run worth a
batch go out as batches spanning the rooms (`_publish_rooms`), each room's rows in order. On
a node that syncs every write a publish costs a disk sync and a batch a few whatever its
length: across many rooms with a few new events each, outputs then cost far less than a sync.

A batch is not free: for a file-backed stream the server stages it in a store of its own
(directories, files and syncs), which on a disk with slow syncs costs as much as a dozen or
more single publishes. So unless `min_batch_rows` fixes the threshold, the
relay keeps moving averages of what a batch and a single publish cost and batches only runs of
rows that the serial path would take longer to publish (`worth_batching`). Under load, rows
pile up between passes until batching pays; when the relay keeps up, each output goes out as
soon as it is committed, in one publish. Time is not the whole price: the server's CPU for a
batch is a fixed cost plus a little per row, far more than a short run published row by row
costs it, so a run shorter than `MIN_AUTO_BATCH` rows goes out serially whatever the clock
says. Under load the loop is busy and single publishes look slow, so short batches would
look worth it by time alone while costing the server more CPU per output.

Order: a row, alone or as part of a batch, is only attempted once every earlier row of its
room was stored by JetStream (by this relay or, as a duplicate, by another), and a batch is
stored whole, in its own order, or not at all; so the output stream keeps each room's order
even when a flush and a sweep, or two workers, race on the same rows, and even when a batch
fails half-way. Rows are marked sent only once JetStream acknowledged them (a batch's rows once
its commit was acknowledged). Within one process a per-room lock keeps them from doing the
work twice.

`OUTPUTS_PUBLISHED` counts rows newly stored: every row of a committed batch (a committed batch
holds no duplicate, by the rule above) and every serially published row whose `PubAck` is not
a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import APIError
from nats.js.errors import Error as JetStreamError

from worker.bus.outbox_batching import (
    ATOMIC_DISABLED,
    ATOMIC_RETRY_AFTER,
    BATCH_COMMIT_HEADER,
    BATCH_DUPLICATE,
    BATCH_ID_HEADER,
    BATCH_SEQUENCE_HEADER,
    BATCH_TOO_LARGE,
    EXPECTED_STREAM_HEADER,
    MIN_AUTO_BATCH,
    SMALL_BATCH,
    average,
    worth_batching,
)
from worker.bus.outbox_store import OutboxRow, OutboxStore, RoomsOutboxStore
from worker.bus.requests import Requester
from worker.bus.subjects import MSG_ID_HEADER, OUTPUT_TYPE_HEADER, ROOM_ID_HEADER, Subjects
from worker.errors import RetryableError
from worker.keyed_locks import KeyedLocks
from worker.observability.logging import get_logger
from worker.observability.metrics import OUTBOX_LAG, OUTBOX_UNSENT, count_outputs, measure

_log = get_logger(__name__)

MiB = 1024 * 1024


class NatsOutboxRelay:
    """Implements `worker.pipeline.ports.OutboxRelay` over JetStream."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        store: OutboxStore,
        *,
        batch: int = 256,
        sweep_interval: float = 5.0,
        publish_timeout: float = 5.0,
        stats: Callable[[], Awaitable[tuple[int, float]]] | None = None,
        max_batch_messages: int = 1000,
        max_batch_bytes: int = 8 * MiB,
        batch_slots: int = 16,
        min_batch_rows: int | None = None,
        read_rows: int = 2048,
    ) -> None:
        """`max_batch_messages` must not exceed the server's `max_batch_size` (default 1,000);
        `max_batch_bytes` bounds the payloads of one batch (the server stages a batch whole
        before committing it); `batch_slots` bounds this relay's batches in flight (the server
        allows 50 per stream, shared by every worker; beyond that it refuses new batches);
        `min_batch_rows` fixes the smallest run of rows sent as a batch (None: decided by the
        measured costs, see the module docstring); `batch` bounds the rows of one room read
        at a time and `read_rows` those of one read of kicked rooms."""
        if min(max_batch_messages, max_batch_bytes, batch_slots, batch, read_rows) < 1:
            raise ValueError(
                "batch, read_rows, max_batch_messages, max_batch_bytes and batch_slots must be >= 1"
            )
        if min_batch_rows is not None and min_batch_rows < 2:
            raise ValueError("min_batch_rows must be >= 2 (or None)")
        self._nc = nc
        self._requests = Requester(nc)
        self._subjects = subjects
        self._store = store
        # Checked once (an isinstance against a runtime Protocol is slow): a store that
        # reads many rooms' rows at once.
        self._rooms_store = store if isinstance(store, RoomsOutboxStore) else None
        self._batch = batch
        self._sweep_interval = sweep_interval
        self._publish_timeout = publish_timeout
        self._stats = stats
        self._locks = KeyedLocks()
        self._max_batch_messages = max_batch_messages
        self._max_batch_bytes = max_batch_bytes
        self._batch_slots = asyncio.Semaphore(batch_slots)
        self._min_batch_rows = min_batch_rows
        # Moving averages, in seconds, of a committed batch and of one acknowledged publish.
        self._batch_cost: float | None = None
        self._publish_cost: float | None = None
        # Loop time before which batches are not tried (set when the stream refused them).
        self._atomic_off_until = 0.0
        # The background pump (`kick`): rooms to read, rooms held (read, and not yet marked),
        # held rooms kicked again, published rows waiting for the update (room, seqs, whether
        # to read the room again), and the pump's tasks.
        self._read_rows = read_rows
        self._ready: set[str] = set()
        self._held: set[str] = set()
        self._again: set[str] = set()
        self._published: list[tuple[str, list[int], bool]] = []
        self._reading = False
        self._marking = False
        self._pump_tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    async def flush(self, room_id: str) -> None:
        """Return once every outbox row of the room committed so far is published.

        Raises `RetryableError` if NATS or the store failed; rows published before the
        failure are marked sent, the rest stay for the next flush or sweep.
        """
        async with self._locks.hold(room_id):
            while True:
                rows = await self._store.fetch_unsent(self._batch, room_id=room_id)
                if rows:
                    await self._publish_in_order(rows)
                if len(rows) < self._batch:
                    return

    def kick(self, room_id: str) -> None:
        """Publish the room's rows committed so far, soon, in the background."""
        if self._stopped:
            return
        if room_id in self._held:
            self._again.add(room_id)
        else:
            self._ready.add(room_id)
        self._pump()

    @property
    def pending(self) -> int:
        """Rooms kicked and not yet published."""
        return len(self._ready) + len(self._held)

    async def settle(self) -> None:
        """Until every room kicked so far is published, or failed (logged; its rows are left
        to the next kick or the sweep)."""
        while self._pump_tasks:
            await asyncio.gather(*self._pump_tasks, return_exceptions=True)

    def _pump(self) -> None:
        # A finishing step starts the next from its `finally`, so while there is work a
        # task is running, which is what `settle` waits on.
        if self._ready and not self._reading:
            self._reading = True
            self._spawn(self._read_ready())
        if self._published and not self._marking:
            self._marking = True
            self._spawn(self._mark_published())

    async def stop(self) -> None:
        """Stop the pump: its work in flight is cancelled and its rooms forgotten, so that
        a last `sweep` takes them (or the next start's). Kicks are ignored from now on."""
        self._stopped = True
        tasks = list(self._pump_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ready.clear()
        self._held.clear()
        self._again.clear()
        self._published.clear()

    def _spawn(self, step: Coroutine[None, None, None]) -> None:
        if self._stopped:
            step.close()
            return
        task = asyncio.ensure_future(step)
        self._pump_tasks.add(task)
        task.add_done_callback(self._pump_tasks.discard)

    async def _read_ready(self) -> None:
        rooms, self._ready = sorted(self._ready), set()
        self._held.update(rooms)
        by_room: dict[str, list[OutboxRow]] = {}
        full = False
        try:
            by_room, full = await self._read_rooms(rooms)
        except Exception as exc:  # RetryableError, or a bug: either way the rooms go free
            _log.warning("outbox_flush_failed", rooms=len(rooms), error=repr(exc))
        finally:
            self._reading = False
            # Rooms of a full read, and rooms with a full share, may have more.
            again = {room: full or len(rows) >= self._batch for room, rows in by_room.items()}
            # Many rooms with a few rows each: their rows together, as batches spanning the
            # rooms (`_publish_rooms`), where each room alone would go out row by row.
            together = len(by_room) > 1 and self._batching(sum(map(len, by_room.values())))
            if together:
                self._spawn(self._publish_rooms(by_room, again))
            for room in rooms:
                rows = by_room.get(room)
                if not rows:
                    # Without a row in a full read, its rows come after the cut.
                    self._release(room, again=full)
                elif not together:
                    self._spawn(self._publish_held(room, rows, again[room]))
            self._pump()

    async def _read_rooms(self, rooms: Sequence[str]) -> tuple[dict[str, list[OutboxRow]], bool]:
        """The rooms' first unsent rows (at most `batch` each), and whether the read was cut
        short by `read_rows`."""
        by_room: dict[str, list[OutboxRow]] = {}
        if self._rooms_store is None:
            for room, rows in zip(
                rooms,
                await asyncio.gather(*(self._store.fetch_unsent(self._batch, room) for room in rooms)),
                strict=True,
            ):
                by_room[room] = list(rows)
            return by_room, False
        found = await self._rooms_store.fetch_unsent_rooms(
            rooms, self._read_rows, per_room=self._batch
        )
        for row in found:
            by_room.setdefault(row.room_id, []).append(row)
        return by_room, len(found) >= self._read_rows

    async def _publish_held(self, room_id: str, rows: Sequence[OutboxRow], again: bool) -> None:
        sent: list[int] = []
        try:
            with measure("publish"):
                await self._publish_room(room_id, rows, sent)
        except Exception as exc:  # RetryableError, or a bug: the rest stays unsent
            _log.warning("outbox_flush_failed", room_id=room_id, error=repr(exc))
            again = False
        finally:
            self._published.append((room_id, sent, again))
            self._pump()

    async def _publish_rooms(
        self, by_room: dict[str, list[OutboxRow]], again: dict[str, bool]
    ) -> None:
        """Held rooms' rows as atomic batches spanning the rooms: each room's rows in order,
        the rooms one after another, cut at the batch limits and each batch committed before
        the next is sent. A batch is stored whole or not at all, so when one fails, what is
        left of each room (its rows in that batch and after) goes out the way one room's
        pass does (`_publish_rows`), rooms side by side; every room keeps its order."""
        rooms = sorted(by_room)
        sent: dict[str, list[int]] = {room: [] for room in rooms}
        try:
            async with contextlib.AsyncExitStack() as held:
                # In one order, so that no two holders of several locks wait on each other.
                for room in rooms:
                    await held.enter_async_context(self._locks.hold(room))
                with measure("publish"):
                    await self._publish_across(by_room, rooms, sent, again)
        except Exception as exc:  # RetryableError, or a bug: the rest stays unsent
            _log.warning("outbox_flush_failed", rooms=len(rooms), error=repr(exc))
            again = dict.fromkeys(rooms, False)
        finally:
            for room in rooms:
                self._published.append((room, sent[room], again[room]))
            self._pump()

    async def _publish_across(
        self,
        by_room: dict[str, list[OutboxRow]],
        rooms: Sequence[str],
        sent: dict[str, list[int]],
        again: dict[str, bool],
    ) -> None:
        flat = [row for room in rooms for row in by_room[room]]
        i = 0
        while i < len(flat):
            chunk = self._next_batch(flat, i)
            if len(chunk) < 2 or await self._publish_batch(chunk) is not None:
                break
            for row in chunk:
                sent[row.room_id].append(row.seq)
            i += len(chunk)
        rest: dict[str, list[OutboxRow]] = {}
        for row in flat[i:]:
            rest.setdefault(row.room_id, []).append(row)
        if not rest:
            return
        done = await asyncio.gather(
            *(self._publish_rows(rows, sent[room]) for room, rows in rest.items()),
            return_exceptions=True,
        )
        for room, failure in zip(rest, done, strict=True):
            if isinstance(failure, BaseException):
                _log.warning("outbox_flush_failed", room_id=room, error=repr(failure))
                again[room] = False

    async def _mark_published(self) -> None:
        done, self._published = self._published, []
        try:
            seqs = [seq for _, sent, _ in done for seq in sent]
            if seqs:
                await self._store.mark_sent(seqs)
        except Exception as exc:  # published, not marked: republished later, and dropped
            _log.warning("outbox_mark_failed", rooms=len(done), error=repr(exc))
        finally:
            self._marking = False
            for room_id, _, again in done:
                self._release(room_id, again)
            self._pump()

    def _release(self, room_id: str, again: bool) -> None:
        self._held.discard(room_id)
        if room_id in self._again:
            self._again.discard(room_id)
            again = True
        if again:
            self._ready.add(room_id)

    async def sweep(self, min_age: float = 0.0) -> int:
        """Publish the unsent rows of every room with one committed at least `min_age`
        seconds ago and not about to be published by the pump; returns how many rows were
        handled."""
        total = 0
        while True:
            rows = await self._store.fetch_unsent(self._batch, min_age=min_age)
            by_room: dict[str, list[OutboxRow]] = {}
            for row in rows:
                if row.room_id not in self._held and row.room_id not in self._ready:
                    by_room.setdefault(row.room_id, []).append(row)
            if not by_room:
                return total
            # The rooms side by side (each in order), one update for all: after a crash the
            # start's sweep may find many rooms, each a PubAck round trip a row.
            sent: list[int] = []
            done = await asyncio.gather(
                *(self._publish_room(r, room_rows, sent) for r, room_rows in by_room.items()),
                return_exceptions=True,
            )
            if sent:
                await self._store.mark_sent(sent)
            total += len(sent)
            for failure in done:
                if isinstance(failure, BaseException):
                    raise failure
            if len(rows) < self._batch:
                return total

    async def _publish_room(self, room_id: str, rows: Sequence[OutboxRow], sent: list[int]) -> None:
        """`_publish_rows` under the room's lock (one publisher per room in this process)."""
        async with self._locks.hold(room_id):
            await self._publish_rows(rows, sent)

    async def run(self) -> None:
        """Sweep now and then every `sweep_interval` until cancelled; failures are logged.

        Later sweeps take only rooms with a row at least `sweep_interval` old: younger rows
        are being published by whichever process committed them (this one's pump, or
        another worker's), and a sweep that took them too published them a second time.
        """
        min_age = 0.0
        while True:
            try:
                swept = await self.sweep(min_age)
                min_age = self._sweep_interval
                if swept:
                    _log.info("outbox_swept", rows=swept)
                if self._stats is not None:
                    unsent, lag = await self._stats()
                    OUTBOX_UNSENT.set(unsent)
                    OUTBOX_LAG.set(lag)
            except RetryableError as exc:
                _log.warning("outbox_sweep_failed", error=str(exc), code=exc.code)
            await asyncio.sleep(self._sweep_interval)

    async def _publish_in_order(self, rows: Sequence[OutboxRow]) -> None:
        sent: list[int] = []
        try:
            await self._publish_rows(rows, sent)
        finally:
            if sent:
                await self._store.mark_sent(sent)

    async def _publish_rows(self, rows: Sequence[OutboxRow], sent: list[int]) -> None:
        """Publish one room's rows in order, adding each row's seq to `sent` once JetStream
        has it; raises `RetryableError` at the first row that could not be published."""
        i = 0
        while i < len(rows):
            chunk = self._next_batch(rows, i)
            failure = await self._publish_batch(chunk) if self._batching(len(chunk)) else "serial"
            if failure is None:
                sent.extend(row.seq for row in chunk)
                i += len(chunk)
            elif failure == "duplicate":
                # What a crash left stored is a prefix of the room's unsent rows: go one by one
                # past it, then back to batches.
                while i < len(rows):
                    fresh = await self._publish(rows[i])
                    sent.append(rows[i].seq)
                    i += 1
                    if fresh:
                        break
            else:
                for row in chunk:
                    await self._publish(row)
                    sent.append(row.seq)
                i += len(chunk)

    def _next_batch(self, rows: Sequence[OutboxRow], start: int) -> Sequence[OutboxRow]:
        """The longest run of rows from `start` within the batch limits (at least one row)."""
        end, size = start, 0
        while end < len(rows) and end - start < self._max_batch_messages:
            size += len(rows[end].payload)
            if size > self._max_batch_bytes and end > start:
                break
            end += 1
        return rows[start:end]

    def _batching(self, n: int) -> bool:
        # The cheap checks first: most runs are not worth a batch, and asking for the
        # server's version parses it.
        if n < 2:
            return False
        if self._min_batch_rows is not None:
            if n < self._min_batch_rows:
                return False
        elif not worth_batching(n, self._batch_cost, self._publish_cost):
            return False
        if asyncio.get_running_loop().time() < self._atomic_off_until:
            return False
        if not self._server_batches():
            return False
        # A small batch does not queue for a slot; a big one is worth the wait.
        return n >= SMALL_BATCH or not self._batch_slots.locked()

    async def _publish_batch(self, rows: Sequence[OutboxRow]) -> str | None:
        """Publish rows (of one room, or of several: each on its room's subject) as one atomic
        batch; None once committed, else why not
        (then nothing of the batch is stored, or, if only the commit's reply was lost, all of
        it: the serial retry sees the rows as duplicates)."""
        batch_id = uuid.uuid4().hex
        stream = self._subjects.output_stream
        last = len(rows)
        loop = asyncio.get_running_loop()
        try:
            async with self._batch_slots:
                began = loop.time()
                for n, row in enumerate(rows[:-1], start=1):
                    headers = self._headers(row)
                    headers[EXPECTED_STREAM_HEADER] = stream
                    headers[BATCH_ID_HEADER] = batch_id
                    headers[BATCH_SEQUENCE_HEADER] = str(n)
                    await self._nc.publish(
                        self._subjects.output(row.room_id), row.payload, headers=headers
                    )
                headers = self._headers(rows[-1])
                headers[BATCH_ID_HEADER] = batch_id
                headers[BATCH_SEQUENCE_HEADER] = str(last)
                headers[BATCH_COMMIT_HEADER] = "1"
                ack = await self._requests.publish(
                    self._subjects.output(rows[-1].room_id),
                    rows[-1].payload,
                    timeout=self._publish_timeout,
                    stream=stream,
                    headers=headers,
                )
        except APIError as exc:
            return self._batch_refused(rows, exc)
        except (NatsError, JetStreamError, TimeoutError) as exc:
            _log.warning("outbox_batch_failed", room_id=rows[0].room_id, rows=last, error=repr(exc))
            return "nats"
        if ack.batch_id != batch_id or ack.batch_size != last:
            # Not the answer a committed batch gets: trust nothing, let the serial path sort
            # it out (stored rows come back as duplicates). No batch in the answer at all is a
            # server that ignores the batch headers: no more batches from this relay.
            _log.warning("outbox_batch_bad_ack", room_id=rows[0].room_id, rows=last, ack=repr(ack))
            if ack.batch_id is None:
                self._atomic_off_until = math.inf
            return "bad_ack"
        self._batch_cost = average(self._batch_cost, loop.time() - began)
        for output_type, n in Counter(row.output_type for row in rows).items():
            count_outputs(output_type, n)
        return None

    def _server_batches(self) -> bool:
        """Whether the server we are connected to knows atomic batches (2.12+). An older one
        would store every message of a batch on its own, as it arrives: not all-or-nothing."""
        try:
            version = self._nc.connected_server_version
            return (version.major, version.minor) >= (2, 12)
        except (ValueError, TypeError):
            return False

    def _batch_refused(self, rows: Sequence[OutboxRow], exc: APIError) -> str:
        if exc.err_code == BATCH_DUPLICATE:
            _log.info("outbox_batch_duplicate", room_id=rows[0].room_id, rows=len(rows))
            return "duplicate"
        if exc.err_code == ATOMIC_DISABLED:
            self._atomic_off_until = asyncio.get_running_loop().time() + ATOMIC_RETRY_AFTER
        elif exc.err_code == BATCH_TOO_LARGE:
            # The server's limit was lowered below ours: halve until batches fit.
            self._max_batch_messages = max(1, len(rows) // 2)
        _log.warning(
            "outbox_batch_refused",
            room_id=rows[0].room_id,
            rows=len(rows),
            err_code=exc.err_code,
            error=exc.description,
        )
        return "refused"

    @staticmethod
    def _headers(row: OutboxRow) -> dict[str, str]:
        return {
            ROOM_ID_HEADER: row.room_id,
            OUTPUT_TYPE_HEADER: row.output_type,
            MSG_ID_HEADER: msg_id(row),
        }

    async def _publish(self, row: OutboxRow) -> bool:
        """Publish one row and wait for its `PubAck`; True if JetStream stored it afresh."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            ack = await self._requests.publish(
                self._subjects.output(row.room_id),
                row.payload,
                timeout=self._publish_timeout,
                stream=self._subjects.output_stream,
                headers=self._headers(row),
            )
        except (NatsError, JetStreamError, TimeoutError) as exc:
            raise RetryableError(
                f"could not publish output {row.output_id} of {row.room_id}: {exc!r}",
                code="output_publish_failed",
            ) from exc
        self._publish_cost = average(self._publish_cost, loop.time() - began)
        if ack.duplicate:
            return False
        count_outputs(row.output_type)
        return True


def msg_id(row: OutboxRow) -> str:
    """The `Nats-Msg-Id` of a row: its output id and its outbox sequence number. A republish
    of the row carries the same one, so JetStream drops it; a purged room's events received
    again make the same output ids in new rows, whose new numbers keep them from being
    dropped as repeats of the old room's outputs still in the duplicate window."""
    return f"{row.output_id}#{row.seq}"


__all__ = [
    "MIN_AUTO_BATCH",
    "NatsOutboxRelay",
    "OutboxRow",
    "OutboxStore",
    "RoomsOutboxStore",
    "msg_id",
    "worth_batching",
]
