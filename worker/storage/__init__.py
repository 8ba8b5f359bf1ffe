"""worker.storage: the asyncpg adapter (DESIGN §3).

`PostgresStore` implements the pipeline's `RoomStore`; `apply_migrations` brings a database
to `SCHEMA_VERSION`; the outbox functions serve the relay in `worker.bus`.
"""

from worker.storage.handles import PgState
from worker.storage.migrations import SCHEMA_VERSION, apply_migrations, schema_version
from worker.storage.outbox import OutboxRow, fetch_unsent, mark_sent, outbox_stats, prune_sent
from worker.storage.store import PostgresStore
from worker.storage.transactions import room_lock_key

__all__ = [
    "SCHEMA_VERSION",
    "OutboxRow",
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
