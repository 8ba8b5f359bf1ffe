"""How the store tells a passing database outage from a real error."""

from __future__ import annotations

import asyncpg

from worker.errors import RetryableError


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


__all__ = ["is_database_down"]
