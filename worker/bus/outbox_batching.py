"""The vocabulary of the outbox relay's atomic batches (ADR-50): the headers, the JetStream
errors it acts on, and when a run of rows is worth a batch (`worth_batching`, pure). The
relay itself, and why batches cost what they do: `worker.bus.outbox`."""

from __future__ import annotations

# ADR-50's headers (nats-server `JSBatchId`, `JSBatchSeq`, `JSBatchCommit`) and the one the
# server checks against the stream a message lands in.
BATCH_ID_HEADER = "Nats-Batch-Id"
BATCH_SEQUENCE_HEADER = "Nats-Batch-Sequence"
BATCH_COMMIT_HEADER = "Nats-Batch-Commit"
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"
# JetStream error codes (nats-server errors.json) the relay acts on.
ATOMIC_DISABLED = 10174  # JSAtomicPublishDisabledErr: the stream lacks allow_atomic
BATCH_TOO_LARGE = 10199  # JSAtomicPublishTooLargeBatchErrF: beyond the server's max_batch_size
BATCH_DUPLICATE = 10201  # JSAtomicPublishContainsDuplicateMessageErr
# After a stream said atomic publish is disabled, try batches again this much later (an
# operator may update the stream meanwhile) instead of paying a failed batch every pass.
ATOMIC_RETRY_AFTER = 60.0
# Below this many rows a batch waits for no free slot: the serial path costs little more.
SMALL_BATCH = 8
# The shortest run `worth_batching` sends as a batch (see `worker.bus.outbox`): from about
# 30 rows on, a batch costs the server less CPU than the single publishes it replaces.
MIN_AUTO_BATCH = 32
# Weight of the newest sample in the cost averages.
COST_WEIGHT = 0.2


def worth_batching(rows: int, batch_cost: float | None, publish_cost: float | None) -> bool:
    """Whether `rows` rows go out sooner as one batch than one by one, by the measured average
    costs (seconds) of a committed batch and of one acknowledged publish, and are at least
    `MIN_AUTO_BATCH` rows (below that a batch costs the server more CPU than it saves). Until
    both costs are known, every run that long is batched, which measures a batch's cost early."""
    if rows < MIN_AUTO_BATCH:
        return False
    if batch_cost is None or publish_cost is None:
        return True
    return rows * publish_cost > batch_cost


def average(current: float | None, sample: float) -> float:
    """A moving average (`current`, None before the first sample) with `sample` added."""
    return sample if current is None else current + COST_WEIGHT * (sample - current)


__all__ = [
    "ATOMIC_DISABLED",
    "ATOMIC_RETRY_AFTER",
    "BATCH_COMMIT_HEADER",
    "BATCH_DUPLICATE",
    "BATCH_ID_HEADER",
    "BATCH_SEQUENCE_HEADER",
    "BATCH_TOO_LARGE",
    "COST_WEIGHT",
    "EXPECTED_STREAM_HEADER",
    "MIN_AUTO_BATCH",
    "SMALL_BATCH",
    "average",
    "worth_batching",
]
