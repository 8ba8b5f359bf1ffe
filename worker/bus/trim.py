"""Trimming the input stream: what a shard's consumer acknowledged is purged, in bulk.

The input stream has limits retention (see `worker.bus.streams`), so an ack only moves the
consumer's ack floor and an acknowledged input stays stored until it is trimmed here. Every
message of a shard at or below its consumer's ack floor was settled (acked, or terminated
after its dead letter was written), so it can go: `trim(shard)` asks for the floor and
purges the shard's subjects below it, one request for however many messages.

Why not work-queue retention, which deletes each message as it is acked: on a server that
syncs every write (a single node with `sync_interval: always`, as `make run` runs it), each
of those deletes writes a tombstone and syncs the disk, one sync per input more than the
publish already costs. A purge writes its tombstones together and syncs once.

Safety does not depend on timing: the floor is read from JetStream, and a floor once reported
stays true of every message below it even if the consumer is recreated meanwhile (a reset
only purges first, see `InputConsumer.reset_consumer`). Acks that JetStream had not yet
written to disk when the machine went down only make the floor lower after a restart, so
less is trimmed and the inputs are delivered again and answered as duplicates.

One thing a floor covers that was not settled by us: a message JetStream stopped delivering
after `max_deliver` deliveries. The consumer asks for one delivery more than its own limit
and dead-letters the message on it, so only a message whose every delivery crashed the
worker gets there; it is trimmed with the rest (a work-queue stream kept it, undelivered).

A stream created with work-queue retention by an earlier version (JetStream cannot change
that in place) deletes on ack by itself: the trimmer notices and does nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from nats.errors import Error as NatsError
from nats.js.api import RetentionPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from worker.bus.subjects import Subjects
from worker.observability.logging import get_logger

_log = get_logger(__name__)


class InputTrimmer:
    """Purges the settled inputs of the shards it is told about (see the module docstring)."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        interval: float,
        owned: Callable[[], Collection[int]],
    ) -> None:
        """`owned` names the shards this worker consumes now: only those are trimmed by the
        periodic pass (`run`)."""
        if interval <= 0:
            raise ValueError("the trim interval must be positive")
        self._js = js
        self._subjects = subjects
        self._interval = interval
        self._owned = owned
        # Shards with a message settled since their last trim.
        self._dirty: set[int] = set()
        # The floor up to which each shard was trimmed: a floor not above it has nothing new.
        self._trimmed: dict[int, int] = {}
        # None until the stream's retention is known; False on a work-queue stream.
        self._needed: bool | None = None

    def settled(self, shard: int) -> None:
        """A message of `shard` was settled: the next pass trims the shard."""
        self._dirty.add(shard)

    async def run(self) -> None:
        """Every `interval` seconds, trim the owned shards with settled messages; until
        cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            owned = self._owned()
            for shard in sorted(self._dirty):
                if shard in owned:
                    await self.trim(shard)
                else:
                    self._dirty.discard(shard)

    async def trim(self, shard: int) -> int:
        """Purge the shard's inputs below its consumer's ack floor; returns the floor's stream
        sequence (0: nothing to trim, or it could not be read). Failures are logged, not
        raised: the shard is tried again by the next pass."""
        self._dirty.discard(shard)
        try:
            if not await self._is_needed():
                return 0
            info = await self._js.consumer_info(
                self._subjects.input_stream, self._subjects.input_consumer(shard)
            )
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            if floor <= self._trimmed.get(shard, 0):
                return floor
            # "Up to but not including" `seq`, of the shard's subjects only.
            await self._js.purge_stream(
                self._subjects.input_stream,
                seq=floor + 1,
                subject=self._subjects.input_shard_filter(shard),
            )
        except NotFoundError:
            # No consumer (being reset, or never made): nothing of it to trim.
            return 0
        except (NatsError, JetStreamError, TimeoutError) as exc:
            self._dirty.add(shard)
            _log.warning("input_trim_failed", shard=shard, error=repr(exc))
            return 0
        self._trimmed[shard] = floor
        return floor

    async def _is_needed(self) -> bool:
        if self._needed is None:
            info = await self._js.stream_info(self._subjects.input_stream)
            self._needed = info.config.retention != RetentionPolicy.WORK_QUEUE
        return self._needed


__all__ = ["InputTrimmer"]
