"""`KeyedLocks`: one key's holders go one at a time, other keys are not held up, and no lock
outlives its last holder or waiter."""

from __future__ import annotations

import asyncio

import pytest

from worker.keyed_locks import KeyedLocks


async def test_one_key_at_a_time_others_free_and_nothing_kept() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    gate = asyncio.Event()

    async def hold(key: str, name: str, wait: bool) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            if wait:
                await gate.wait()
            order.append(f"{name}-")

    first = asyncio.create_task(hold("!a", "a1", wait=True))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("!a", "a2", wait=False))
    other = asyncio.create_task(hold("!b", "b1", wait=False))
    await other
    # Room b went through while room a's first holder still held its lock.
    assert order == ["a1+", "b1+", "b1-"]
    assert len(locks) == 1
    gate.set()
    await asyncio.gather(first, second)
    assert order[3:] == ["a1-", "a2+", "a2-"]
    assert len(locks) == 0


async def test_a_holder_that_fails_releases_the_key() -> None:
    locks = KeyedLocks()

    async def boom() -> None:
        async with locks.hold("!a"):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await boom()
    assert len(locks) == 0
    async with locks.hold("!a"):
        assert len(locks) == 1


async def test_a_waiter_cancelled_leaves_the_holder_and_nothing_else() -> None:
    locks = KeyedLocks()
    gate = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("!a"):
            await gate.wait()

    async def waiter() -> None:
        async with locks.hold("!a"):
            raise AssertionError("a cancelled waiter never holds the lock")

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    assert len(locks) == 1
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    gate.set()
    await first
    assert len(locks) == 0
    async with locks.hold("!a"):
        assert len(locks) == 1
    assert len(locks) == 0
