"""worker.storage: the PostgreSQL adapter (DESIGN §3), asyncpg only.

The store (`PostgresStore`, the pipeline's `RoomStore`) is a facade over one module per part:

    store.py         the facade: `PostgresStore`, and the write fence's bookkeeping
    transactions.py  the pool, one transaction per write with its rooms' advisory locks
    caches.py        every in-process cache, and what a committed write teaches them
    lru.py           the weighted LRU the caches are made of
    coalesce.py      concurrent small requests merged into shared round trips
    handles.py       `PgState`, the state handle, and the pure operations on one
    state_reads.py   reads through a handle: lookup, materialize, diff, handle_from_map
    reads.py         the coalesced reads of rooms and events
    event_rows.py    stored event rows decoded through the caches
    event_write.py   the write of one event, and what every write path shares
    run_write.py     the write of a run of new events in a fixed number of round trips
    group_commit.py  the writes of several rooms in one transaction
    fence.py         a write computed from a stale view of its room is refused
    batch.py         one room's writes held in memory and committed together

SQL, by table group (each module holds its statements and the functions that run them):

    params.py        how statements take parameters, so their plans stay index probes
    rooms.py         rooms
    events.py        events, event_json, event_prevs, write_log, redactions
    nids.py          event_types, state_keys (names <-> NIDs)
    snapshots.py     state_snapshots, state_blocks
    finish.py        the end of a write: rooms, memberships, invites, outbox, redactions
    outbox.py        outbox reads and marks, and the relay's `PgOutboxStore`
    query_reads.py   the query service's reads (`worker.query.ports.QueryStore`)
    migrations.py    schemas/sql, applied in order
    errors.py        which database errors are retried

Who may import it: `worker.app` (which builds the store and hands it to the pipeline, the
query service and the relay), the operator tools (`worker.inspect`, `worker.commands`) and
tests. It imports the ports it implements (`worker.pipeline.ports`, `worker.query.ports`) and
the pure core, never the bus, the federation adapter or the app (an import-linter contract).
"""

from worker.storage.handles import PgState
from worker.storage.migrations import SCHEMA_VERSION, apply_migrations, schema_version
from worker.storage.outbox import (
    OutboxRow,
    PgOutboxStore,
    fetch_unsent,
    mark_sent,
    outbox_stats,
    prune_sent,
)
from worker.storage.store import PostgresStore
from worker.storage.transactions import room_lock_key

__all__ = [
    "SCHEMA_VERSION",
    "OutboxRow",
    "PgOutboxStore",
    "PgState",
    "PostgresStore",
    "apply_migrations",
    "fetch_unsent",
    "mark_sent",
    "outbox_stats",
    "prune_sent",
    "room_lock_key",
    "schema_version",
]
