"""`KeyedLocks`: one asyncio lock per key (a room), kept only while someone holds or waits
for it, so a worker that has seen a million rooms keeps no million locks.

Used wherever work of one room must go one at a time while other rooms go on: the outbox
relay publishing a room's rows, the Perform API building on a room's head. Outside the
layers of DESIGN §8 (an asyncio utility that any layer above the core may use).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


__all__ = ["KeyedLocks"]
