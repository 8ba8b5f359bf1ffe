"""The database errors the storage adapters retry, in one place.

`DATABASE_ERRORS`: what asyncpg raises when a statement did not complete, for any reason the
database or the driver gives. `is_database_down`: the subset that means the database is away
for a moment (a restart, a lost connection), which every write path reports as retryable;
any other error of a write is a bug that must surface.
"""

from __future__ import annotations

import asyncpg

from worker.errors import RetryableError

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


def is_database_down(exc: BaseException) -> bool:
    """A database restart or a lost connection, as asyncpg reports it: worth a retry.

    Besides connection errors, a server shutting down or starting up (SQLSTATE class 57,
    e.g. `CannotConnectNowError`, `AdminShutdownError`), a connection exception (class 08) and
    asyncpg's pool confusion when a connection dies mid-operation (`InternalClientError`) are
    just as transient, and must not dead-letter an input (found by `make chaos`).
    """
    if isinstance(exc, RetryableError):
        return False
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in ("08", "57")
    return False


__all__ = ["DATABASE_ERRORS", "is_database_down"]
