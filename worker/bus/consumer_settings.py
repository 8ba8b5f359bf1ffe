"""Tuning of the input consumer, and the JetStream consumer configuration it implies."""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from worker.bus import settle
from worker.bus.subjects import Subjects


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """Tuning of the input consumer; `configured` takes the worker's configuration."""

    shards: int = 4
    # Messages one pull request asks for (fewer when the shard's share is nearly full). On a
    # server that syncs every write, a stream sends its acks and deliveries only between the
    # bursts of publishes it stores (a disk sync each), so messages a request leaves behind
    # wait a whole burst more: this is above what a shard gets in one burst under load.
    batch: int = 512
    # Each shard may hold a K-th of this; a room's backlog needs a few batches' worth
    # (room_batch) queued behind the one being handled, or it stalls on every fetch. With
    # many busy rooms, what a room has queued when its turn comes is its next batch, and
    # per-batch costs (a task, a group-commit slot, the room's finish, an outbox read) are
    # most of an event's cost in such rooms, so the bound is set well above what hundreds of
    # busy rooms queue. Memory is bounded by `max_in_flight_bytes`, not by this count
    # (8,192 PDUs of 64 KiB would be 512 MiB).
    max_in_flight: int = 8192
    # Bytes of message bodies held, in all (each shard a K-th, like the count): a shard
    # stops fetching while its share is full, so it may go one fetch (`batch` messages)
    # beyond.
    max_in_flight_bytes: int = 64 * 1024 * 1024
    # At most this many queued inputs of one room are handled together (with a handler
    # that can: `BatchInputHandler`); 1 handles each on its own.
    room_batch: int = 64
    # JetStream redelivers a message not settled nor touched for this long.
    ack_wait: float = 60.0
    # How long one pull request waits for messages; bounds how fast a shard stops.
    fetch_timeout: float = 1.0
    retry: settle.RetryPolicy = field(default_factory=settle.RetryPolicy)
    drain_grace: float = 30.0
    # Seconds between trims of the input stream (`worker.bus.trim`): settled inputs stay
    # stored at most about this long.
    trim_interval: float = 1.0
    # Reset a shard's consumer when its deliveries skip a sequence number. Only sound when
    # one worker alone fetches each shard (the lease manager guarantees it), so off by default.
    reset_on_gap: bool = False

    @classmethod
    def configured(
        cls, *, shards: int, max_retries: int, retry_backoff: float, drain_grace: float
    ) -> ConsumerSettings:
        """From the worker's configuration (`SHARDS`, `MAX_RETRIES`, `RETRY_BACKOFF`,
        `DRAIN_GRACE_SECONDS`): `max_retries` redeliveries after the first delivery."""
        return cls(
            shards=shards,
            retry=settle.RetryPolicy(max_deliveries=max_retries + 1, base_delay=retry_backoff),
            drain_grace=drain_grace,
        )

    @property
    def heartbeat_interval(self) -> float:
        return self.ack_wait / 3

    def consumer_config(self, subjects: Subjects, shard: int) -> ConsumerConfig:
        # JetStream's own limit is one above ours: the extra delivery is where a message that
        # never got settled (the worker crashed on it) is dead-lettered instead of stranded.
        max_deliver = self.retry.max_deliveries + 1
        # No JetStream `backoff`: with one set, nats-server (2.15) replaces the delay of a
        # repeated nak by the back-off step (a 10 ms nak waits ack_wait), and our retry
        # delays are chosen per error (`RetryableError.delay`, `RetryPolicy`). Redelivery
        # after an ack timeout (a dead worker) simply waits `ack_wait`.
        return ConsumerConfig(
            durable_name=subjects.input_consumer(shard),
            description=f"roomserver input shard {shard}",
            filter_subject=subjects.input_shard_filter(shard),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=self.max_in_flight,
            max_waiting=8,
        )


__all__ = ["ConsumerSettings"]
