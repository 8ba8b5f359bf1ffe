"""The transactional outbox (DESIGN §2 steps 8-9).

Rows are inserted in the event's own transaction, by the end of its write
(`worker.storage.finish`), so an output exists exactly when its event's effects are
committed. The relay (`worker.bus.outbox`) reads
`fetch_unsent` in commit order, publishes each with `Nats-Msg-Id = output_id`, then calls
`mark_sent`. A crash between publish and mark only causes a republish, which JetStream's
duplicate window drops; so a mark is not flushed to disk on its own (see MARK_SENT).
Re-running an input inserts nothing: `output_id` is unique.

`PgOutboxStore` is the relay's `OutboxStore` port (declared in `worker.bus.outbox`) over
these functions and a pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from worker.errors import RetryableError
from worker.storage.errors import DATABASE_ERRORS
from worker.storage.params import array_param, keys_param

# Outputs written outside an event's own write (a purge's `purge_room` output), in the order
# given; the write paths of events put their outbox rows in with FINISH_EVENT / FINISH_ROOMS.
INSERT_OUTPUTS = """
INSERT INTO outbox (output_id, room_id, output_type, payload)
SELECT output_id, $1, output_type, payload
FROM unnest($2::text[], $3::text[], $4::bytea[]) WITH ORDINALITY
     AS u(output_id, output_type, payload, pos)
ORDER BY pos
ON CONFLICT (output_id) DO NOTHING
"""

# Rows of the rooms with an unsent row at least $2 seconds old, all of each such room's
# unsent rows: a room's rows in seq order are its commit order, created_at (its transaction's
# start) need not be, so filtering rows by age could skip a row and take a later one.
SELECT_UNSENT = """
SELECT seq, output_id, room_id, output_type, payload
FROM outbox WHERE sent_at IS NULL AND room_id IN (
    SELECT room_id FROM outbox
    WHERE sent_at IS NULL AND created_at <= now() - make_interval(secs => $2)
)
ORDER BY seq LIMIT $1
"""

SELECT_UNSENT_ROOM = """
SELECT seq, output_id, room_id, output_type, payload
FROM outbox WHERE sent_at IS NULL AND room_id = $2
ORDER BY seq LIMIT $1
"""

# Each room's first unsent rows, at most $3 (by outbox_unsent_idx, one probe per room), then
# the first $1 of those overall.
SELECT_UNSENT_ROOMS = f"""
SELECT o.seq, o.output_id, o.room_id, o.output_type, o.payload
FROM (SELECT DISTINCT key FROM {keys_param(2, "text")} AS r(key)) AS k
CROSS JOIN LATERAL (
    SELECT x.seq, x.output_id, x.room_id, x.output_type, x.payload
    FROM outbox x WHERE x.sent_at IS NULL AND x.room_id = k.key
    ORDER BY x.seq LIMIT $3
) o
ORDER BY o.seq LIMIT $1
"""

# Rows are found by their key, one probe per output ID. Written plainly (`output_id = ANY($1)
# AND sent_at IS NULL`), the planner takes outbox_unsent_idx, whose predicate that WHERE
# implies, and scans every unsent row (and every marked one not yet vacuumed out of that
# index) to mark a few: each mark then costs as much as the whole backlog. Keeping sent_at
# out of the UPDATE's own WHERE leaves the primary key as its only index. The rows to mark
# are joined by key, not listed (`output_id = ANY(ARRAY(..))`): on the half-filled pages of a
# never-analyzed outbox (schemas/sql/0009) the planner costs that list's filter over a scan
# below its probes, and a generic plan would keep the scan. Two relays marking one row at
# once may both count it; the row is marked either way. The IDs are read through an InitPlan
# so that the generic plan is kept, not re-planned per call (see "Generic plans" in
# worker.storage.params).
#
# With $2 (the rows' seqs, in the order of $1), a row is marked only if it is the one that was
# read: once a purged room's events are received again, a new row can carry the output id of
# one read (and published) before the purge.
#
# The mark commits without waiting for its WAL to reach the disk (synchronous_commit off for
# its own transaction only: `set_config(.., true)`, in force at its commit; the pooled
# connection's later transactions are durable as configured). The next durable commit, or
# the WAL writer within moments, flushes it. What a power cut can lose is the mark, never a
# row: the row is then published again, with the same `Nats-Msg-Id`, and the output stream
# drops it as a duplicate (the relay's sweep at start-up republishes within the stream's
# duplicate window).
MARK_SENT = f"""
WITH unsent AS (
    SELECT o.output_id
    FROM unnest({array_param(1, "text")}, {array_param(2, "bigint")}) AS u(id, seq)
    CROSS JOIN LATERAL (
        SELECT x.output_id, x.sent_at, x.seq FROM outbox x WHERE x.output_id = u.id LIMIT 1
    ) o
    WHERE o.sent_at IS NULL AND (u.seq IS NULL OR o.seq = u.seq)
)
UPDATE outbox x SET sent_at = now()
FROM unsent
WHERE x.output_id = unsent.output_id
    AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
"""

SELECT_STATS = """
SELECT count(*) AS unsent,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS lag
FROM outbox WHERE sent_at IS NULL
"""

DELETE_SENT = """
DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)
"""

Executor = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    output_id: str
    room_id: str
    output_type: str
    payload: bytes


async def fetch_unsent(
    db: Executor, *, room_id: str | None = None, limit: int = 256, min_age: float = 0.0
) -> list[OutboxRow]:
    """Unsent rows in commit order: of one room, or of every room with an unsent row
    committed at least `min_age` seconds ago."""
    if room_id is None:
        rows = await db.fetch(SELECT_UNSENT, limit, float(min_age))
    else:
        rows = await db.fetch(SELECT_UNSENT_ROOM, limit, room_id)
    return [
        OutboxRow(r["seq"], r["output_id"], r["room_id"], r["output_type"], bytes(r["payload"]))
        for r in rows
    ]


async def fetch_unsent_rooms(
    db: Executor, room_ids: Sequence[str], *, limit: int = 256, per_room: int | None = None
) -> list[OutboxRow]:
    """Unsent rows of several rooms in commit order, in one round trip: the first `limit`,
    of at most `per_room` (default `limit`) of each room."""
    if not room_ids:
        return []
    rows = await db.fetch(
        SELECT_UNSENT_ROOMS, limit, list(room_ids), limit if per_room is None else per_room
    )
    return [
        OutboxRow(r["seq"], r["output_id"], r["room_id"], r["output_type"], bytes(r["payload"]))
        for r in rows
    ]


async def mark_sent(
    db: Executor, output_ids: Sequence[str], seqs: Sequence[int] | None = None
) -> int:
    """Mark published rows (those with these seqs too, when given); returns how many were
    newly marked.

    The mark turns off synchronous commit for the transaction it runs in (see MARK_SENT):
    run it on its own, never in a transaction that writes anything a crash must not lose.
    """
    if not output_ids:
        return 0
    status = await db.execute(
        MARK_SENT, list(output_ids), list(seqs) if seqs is not None else [None] * len(output_ids)
    )
    return int(status.split()[-1])


async def outbox_stats(db: Executor) -> tuple[int, float]:
    """(unsent rows, age in seconds of the oldest unsent row) for the outbox metrics."""
    row = await db.fetchrow(SELECT_STATS)
    if row is None:
        return 0, 0.0
    return int(row["unsent"]), float(row["lag"])


async def prune_sent(db: Executor, older_than_seconds: float) -> int:
    """Delete rows published more than `older_than_seconds` ago; returns how many."""
    status = await db.execute(DELETE_SENT, float(older_than_seconds))
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class PgOutboxStore:
    """The relay's `OutboxStore` over this module's functions and a connection pool.

    Every database error becomes `RetryableError` (the statements are idempotent reads and
    marks: the relay tries again on its next pass), so a flush that cannot reach PostgreSQL
    naks the input instead of failing it.
    """

    db: asyncpg.Pool
    # Rows are marked by output id: the ids of fetched rows, by seq, until marked.
    _ids: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    async def fetch_unsent(
        self, limit: int, room_id: str | None = None, *, min_age: float = 0.0
    ) -> Sequence[OutboxRow]:
        try:
            rows = await fetch_unsent(self.db, room_id=room_id, limit=limit, min_age=min_age)
        except DATABASE_ERRORS as exc:
            raise RetryableError(
                f"outbox read failed: {exc!r}", code="database_unavailable"
            ) from exc
        self._ids.update((r.seq, r.output_id) for r in rows)
        return rows

    async def fetch_unsent_rooms(
        self, room_ids: Sequence[str], limit: int, *, per_room: int | None = None
    ) -> Sequence[OutboxRow]:
        try:
            rows = await fetch_unsent_rooms(self.db, room_ids, limit=limit, per_room=per_room)
        except DATABASE_ERRORS as exc:
            raise RetryableError(
                f"outbox read failed: {exc!r}", code="database_unavailable"
            ) from exc
        self._ids.update((r.seq, r.output_id) for r in rows)
        return rows

    async def mark_sent(self, seqs: Sequence[int]) -> None:
        held = [seq for seq in seqs if seq in self._ids]
        ids = [self._ids.pop(seq) for seq in held]
        try:
            await mark_sent(self.db, ids, held)
        except DATABASE_ERRORS as exc:
            raise RetryableError(
                f"outbox update failed: {exc!r}", code="database_unavailable"
            ) from exc

    async def stats(self) -> tuple[int, float]:
        """(unsent rows, age of the oldest in seconds) for the outbox gauges."""
        try:
            return await outbox_stats(self.db)
        except DATABASE_ERRORS as exc:
            raise RetryableError(
                f"outbox stats failed: {exc!r}", code="database_unavailable"
            ) from exc
