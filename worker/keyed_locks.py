"""`KeyedLocks`: one asyncio lock per key (a room), kept only while someone holds or waits
for it, so a worker that has seen a million rooms keeps no million locks.

Used wherever work of one room must go one at a time while other rooms go on: the outbox
relay publishing a room's rows, the Perform API building on a room's head. Outside the
layers of DESIGN §8 (an asyncio utility that any layer above the core may use).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def hold(self, key: str) -> _Hold:
        """`async with locks.hold(key):` the key's lock, held for the block."""
        return _Hold(self, key)

    def _enter(self, key: str) -> asyncio.Lock:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        return lock

    def _leave(self, key: str) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class _Hold:
    """The context manager `KeyedLocks.hold` answers: a plain class, not a generator-based
    one, since the performs and the outbox relay take a room's lock for every event."""

    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: KeyedLocks, key: str) -> None:
        self._locks = locks
        self._key = key
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        lock = self._locks._enter(self._key)
        try:
            await lock.acquire()
        except BaseException:
            self._locks._leave(self._key)
            raise
        self._lock = lock

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lock is not None
        self._lock.release()
        self._lock = None
        self._locks._leave(self._key)


__all__ = ["KeyedLocks"]
