"""Every Prometheus metric of the worker (DESIGN §7), defined once, imported by the others.

Names carry base units (`_seconds`, `_bytes`) and counters end in `_total`. Labels come from
small fixed sets, spelled out below as `Literal` types so that mypy rejects anything else;
a room ID is never a label (expensive rooms are reported by name in logs instead).

All metrics live in prometheus_client's default registry, beside its process and GC
collectors; `worker.observability.http` serves that registry on `/metrics`.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

# The pipeline's steps (DESIGN §2), the label of STAGE_DURATION.
Stage = Literal[
    "decode",
    "validate",
    "dedupe",
    "fill_gaps",
    "auth_own",
    "state_before",
    "auth_state",
    "soft_fail",
    "persist",
    "publish",
    "reply",
    # Waiting in the per-room queue before the pipeline starts, and the whole pipeline.
    "queue_wait",
    "total",
]
Kind = Literal["new", "outlier", "old", "invite"]
OutcomeLabel = Literal["accepted", "soft_failed", "rejected", "outlier", "invalid"]
StateResAlgorithm = Literal["v1", "v2", "v2.1"]
SettleAction = Literal["ack", "nak", "term", "in_progress"]

# Latencies from a sub-millisecond cached lookup to a multi-second resolution of a big room.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
_COUNT_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000, 50000)

EVENTS_PROCESSED = Counter(
    "roomserver_events_processed_total",
    "Input events the pipeline finished, by input kind and outcome.",
    ["kind", "outcome"],
)
DUPLICATES = Counter(
    "roomserver_duplicate_events_total",
    "Input events that had already been processed and were answered with their original outcome.",
)


class StageHistogram(Collector):
    """A histogram labelled by stage, for `measure`: the pipeline observes a dozen stages
    per event, and prometheus_client's `Histogram.observe` takes a lock twice and walks the
    buckets in Python each time, a cost that shows in the worker's CPU. Here an observation
    is a bisect and two additions on plain lists. Everything runs on the one event loop,
    `/metrics` included (`worker.observability.http`), so nothing needs a lock. Exposed exactly as a
    `Histogram` of the same name and buckets (`_bucket`, `_count`, `_sum`).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = [*buckets, math.inf]
        # Per stage: an observation count per bucket (not cumulative), then the sum.
        self._data: dict[str, list[float]] = {}
        registry.register(self)

    def observe(self, stage: str, value: float) -> None:
        data = self._data.get(stage)
        if data is None:
            data = self._data[stage] = [0.0] * (len(self._bounds) + 1)
        data[bisect.bisect_left(self._bounds, value)] += 1
        data[-1] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["stage"])
        for stage, data in sorted(self._data.items()):
            total = 0.0
            buckets = []
            for bound, n in zip(self._bounds, data, strict=False):
                total += n
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
            family.add_metric([stage], buckets, data[-1])
        yield family


STAGE_DURATION = StageHistogram(
    "roomserver_stage_duration_seconds",
    "Time spent in each pipeline stage per input event.",
    _LATENCY_BUCKETS,
)
STATE_RESOLUTION_DURATION = Histogram(
    "roomserver_state_resolution_duration_seconds",
    "Duration of one state resolution, by algorithm.",
    ["algorithm"],
    buckets=_LATENCY_BUCKETS,
)
STATE_RESOLUTION_CONFLICTED = Histogram(
    "roomserver_state_resolution_conflicted_events",
    "Size of the conflicted state set (plus auth difference) handed to one resolution.",
    ["algorithm"],
    buckets=_COUNT_BUCKETS,
)
STATE_RESETS = Counter(
    "roomserver_state_resets_total",
    "Merges that removed a member's join or lowered a power level with no event doing so"
    " on either branch (the state-reset detector).",
    ["kind"],
)
STATE_BLOCKS_WRITTEN = Counter(
    "roomserver_state_blocks_written_total",
    "State blocks inserted because no block with the same content existed in the room.",
)
STATE_BLOCKS_REUSED = Counter(
    "roomserver_state_blocks_reused_total",
    "State blocks a new snapshot shared with existing ones instead of writing them.",
)
SNAPSHOTS_WRITTEN = Counter(
    "roomserver_state_snapshots_written_total",
    "State snapshots inserted (deduplicated snapshots are not counted).",
)
OUTBOX_LAG = Gauge(
    "roomserver_outbox_lag_seconds",
    "Age of the oldest outbox row not yet published (0 when the outbox is empty).",
)
OUTBOX_UNSENT = Gauge(
    "roomserver_outbox_unsent_messages",
    "Outbox rows committed but not yet published.",
)
OUTPUTS_PUBLISHED = Counter(
    "roomserver_outputs_published_total",
    "Output messages published to the output stream, by output type.",
    ["type"],
)
REDELIVERIES = Counter(
    "roomserver_redeliveries_total",
    "Input messages received with a delivery count above one.",
)
DEAD_LETTERS = Counter(
    "roomserver_dead_letters_total",
    "Messages written to the dead-letter stream, by reason code.",
    ["reason"],
)
MESSAGES_SETTLED = Counter(
    "roomserver_messages_settled_total",
    "Input messages settled with JetStream, by action.",
    ["action"],
)
SHARDS_OWNED = Gauge(
    "roomserver_shards_owned",
    "Input shards this worker holds the lease of.",
)
CONSUMER_PENDING = Gauge(
    "roomserver_consumer_pending_messages",
    "Messages waiting in an input shard's durable consumer, as last reported by JetStream.",
    ["shard"],
)
ROOMS_IN_FLIGHT = Gauge(
    "roomserver_rooms_in_flight",
    "Rooms with at least one input event being processed or queued in this worker.",
)
FEDERATION_REQUESTS = Counter(
    "roomserver_federation_requests_total",
    "Requests to the federation service (gap filling and performs), by verb and result.",
    ["verb", "result"],
)
QUERIES = Counter(
    "roomserver_queries_total",
    "Query requests answered, by query name and result (ok or an error code).",
    ["query", "result"],
)
QUERY_DURATION = Histogram(
    "roomserver_query_duration_seconds",
    "Time to answer one query, by query name.",
    ["query"],
    buckets=_LATENCY_BUCKETS,
)
DB_TRANSACTION_DURATION = Histogram(
    "roomserver_db_transaction_duration_seconds",
    "Duration of labelled database transactions, by label (a fixed string in the code).",
    ["desc"],
    buckets=_LATENCY_BUCKETS,
)
DB_TRANSACTION_RETRIES = Counter(
    "roomserver_db_transaction_retries_total",
    "Transactions retried after a serialization failure or deadlock, by label.",
    ["desc"],
)
READY = Gauge(
    "roomserver_ready",
    "1 while the worker is connected to NATS and PostgreSQL with migrations applied, else 0.",
)
BUILD_INFO = Info("roomserver_build", "Version of the running worker.")


class _Timer:
    """`measure`'s context manager: a plain class, as it runs a dozen times per event."""

    __slots__ = ("_stage", "_start")

    def __init__(self, stage: str) -> None:
        self._stage = stage
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        STAGE_DURATION.observe(self._stage, time.perf_counter() - self._start)


def measure(stage: Stage) -> AbstractContextManager[None]:
    """Time the enclosed block into STAGE_DURATION{stage}, also when it raises."""
    return _Timer(stage)


# Labelled children of the per-event counters, looked up once per label set (`labels` is
# not cheap), keyed by (counter, *labels).
_CHILDREN: dict[tuple[object, ...], Counter] = {}


def _child(counter: Counter, *labels: str) -> Counter:
    key = (counter, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = counter.labels(*labels)
    return child


def count_event(kind: Kind, outcome: OutcomeLabel) -> None:
    """Count one finished input event."""
    _child(EVENTS_PROCESSED, kind, outcome).inc()


def count_outputs(output_type: str, n: int = 1) -> None:
    """Count outputs newly stored in the output stream."""
    _child(OUTPUTS_PUBLISHED, output_type).inc(n)


def count_settle(action: SettleAction, n: int = 1) -> None:
    """Count JetStream settlements of input messages."""
    _child(MESSAGES_SETTLED, action).inc(n)


__all__ = [
    "BUILD_INFO",
    "CONSUMER_PENDING",
    "DB_TRANSACTION_DURATION",
    "DB_TRANSACTION_RETRIES",
    "DEAD_LETTERS",
    "DUPLICATES",
    "EVENTS_PROCESSED",
    "FEDERATION_REQUESTS",
    "MESSAGES_SETTLED",
    "OUTBOX_LAG",
    "OUTBOX_UNSENT",
    "OUTPUTS_PUBLISHED",
    "QUERIES",
    "QUERY_DURATION",
    "READY",
    "REDELIVERIES",
    "ROOMS_IN_FLIGHT",
    "SHARDS_OWNED",
    "SNAPSHOTS_WRITTEN",
    "STAGE_DURATION",
    "STATE_BLOCKS_REUSED",
    "STATE_BLOCKS_WRITTEN",
    "STATE_RESOLUTION_CONFLICTED",
    "STATE_RESOLUTION_DURATION",
    "Kind",
    "OutcomeLabel",
    "SettleAction",
    "Stage",
    "StateResAlgorithm",
    "count_event",
    "count_outputs",
    "count_settle",
    "measure",
]

# --- shard ownership (worker.bus.leases); SHARDS_OWNED above is kept by the consumer ---------

LeaseEvent = Literal["acquired", "lost", "released"]
LEASE_CHANGES = Counter(
    "roomserver_shard_lease_changes_total",
    "Shard lease changes of this worker: acquired, lost (taken away) or released (rebalance).",
    ["event"],
)
SHARD_TAKEOVER_SECONDS = Histogram(
    "roomserver_shard_takeover_seconds",
    "From this worker first seeing a shard without an owner to it consuming the shard.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 60.0),
)
__all__ += ["LEASE_CHANGES", "SHARD_TAKEOVER_SECONDS", "LeaseEvent"]

# --- gap filling (worker.pipeline.fetch_missing, worker.federation) -----------------------------------

# closed: get_missing_events closed the gap; state_ids / state: the state before the event was
# fetched (by IDs, or in full); auth: only missing auth events were fetched; failed: refused.
GapPath = Literal["closed", "state_ids", "state", "auth", "failed"]
GAPS = Counter(
    "roomserver_gaps_total",
    "Inputs with missing prev or auth events, by how the gap was filled (or failed).",
    ["path"],
)
FEDERATION_FETCH_SECONDS = Histogram(
    "roomserver_federation_fetch_seconds",
    "Latency of one request to the federation service, answered or not.",
    ["verb"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
__all__ += ["FEDERATION_FETCH_SECONDS", "GAPS", "GapPath"]

# --- purges (worker.storage.purge, worker.perform.admin) ----------------------------------------

# What asked for a purge: an admin's purge_room, an admin's purge_history, or the retention job.
PurgeOp = Literal["room", "history", "retention"]
# The label `table` comes from worker.storage.purge_sql.ROOM_ROWS: the schema's tables.
PURGED_ROWS = Counter(
    "roomserver_purged_rows_total",
    "Rows deleted by purges, by what asked (op) and table.",
    ["op", "table"],
)
PURGED_BYTES = Counter(
    "roomserver_purged_bytes_total",
    "Bytes of the rows deleted by purges (pg_column_size), by op and table: space VACUUM can reuse.",
    ["op", "table"],
)
RETENTION_RUNS = Counter(
    "roomserver_retention_runs_total",
    "Runs of the history retention job, by result (done: every room visited; partial: stopped "
    "at its per-run bound; failed).",
    ["result"],
)

__all__ += ["PURGED_BYTES", "PURGED_ROWS", "RETENTION_RUNS", "PurgeOp"]
# --- the Perform API (worker.perform.service) ---------------------------------------------------

PERFORMS = Counter(
    "roomserver_performs_total",
    "Performs answered, by perform name and outcome (ok or an error code).",
    ["perform", "outcome"],
)
PERFORM_DURATION = Histogram(
    "roomserver_perform_duration_seconds",
    "Time to answer one perform, request to reply (the built events stored), by perform name.",
    ["perform"],
    buckets=_LATENCY_BUCKETS,
)
__all__ += ["PERFORMS", "PERFORM_DURATION"]
