"""The per-room dispatcher without NATS: order per room, concurrency across rooms, bounds."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.bus.dispatch import RoomDispatcher

GUARD = 20.0


@settings(max_examples=40, deadline=None)
@given(
    items=st.lists(st.sampled_from("abcd"), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
async def test_per_room_order_and_exclusivity(items: list[str], seed: int) -> None:
    rng = random.Random(seed)
    done: list[tuple[str, int]] = []
    busy: set[str] = set()
    overlaps: list[str] = []

    async def process(room: str, n: int) -> None:
        if room in busy:
            overlaps.append(room)
        busy.add(room)
        for _ in range(rng.randrange(3)):  # interleave rooms differently each run
            await asyncio.sleep(0)
        busy.discard(room)
        done.append((room, n))

    dispatcher: RoomDispatcher[int] = RoomDispatcher(process)
    for n, room in enumerate(items):
        dispatcher.submit(room, n)
        if rng.random() < 0.3:
            await asyncio.sleep(0)
    assert await dispatcher.wait_idle(GUARD)
    assert overlaps == []
    assert dispatcher.in_flight == 0 and dispatcher.rooms == 0
    for room in set(items):
        assert [n for r, n in done if r == room] == [n for n, r in enumerate(items) if r == room]


async def test_rooms_run_concurrently_and_wait_below_bounds() -> None:
    gate = asyncio.Event()
    entered: list[str] = []

    async def process(room: str, item: int) -> None:
        entered.append(room)
        await gate.wait()

    dispatcher: RoomDispatcher[int] = RoomDispatcher(process)
    for i, room in enumerate(["a", "b", "c", "a"]):
        dispatcher.submit(room, i)
    async with asyncio.timeout(GUARD):
        while len(entered) < 3:
            await asyncio.sleep(0)
    assert sorted(entered) == ["a", "b", "c"]  # a's second item waits for its first
    assert dispatcher.in_flight == 4 and dispatcher.rooms == 3
    waiter = asyncio.create_task(dispatcher.wait_below(4))
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.set()
    async with asyncio.timeout(GUARD):
        await waiter
    assert await dispatcher.wait_idle(GUARD)
    assert entered == ["a", "b", "c", "a"]


async def test_a_failing_item_does_not_stop_its_room() -> None:
    seen: list[int] = []

    async def process(room: str, item: int) -> None:
        seen.append(item)
        if item == 0:
            raise RuntimeError("boom")

    dispatcher: RoomDispatcher[int] = RoomDispatcher(process)
    dispatcher.submit("a", 0)
    dispatcher.submit("a", 1)
    assert await dispatcher.wait_idle(GUARD)
    assert seen == [0, 1]


async def test_cancel_returns_unfinished_items() -> None:
    async def process(room: str, item: int) -> None:
        await asyncio.Event().wait()

    dispatcher: RoomDispatcher[int] = RoomDispatcher(process)
    for i, room in enumerate(["a", "a", "b"]):
        dispatcher.submit(room, i)
    await asyncio.sleep(0)
    assert not await dispatcher.wait_idle(0.01)
    left = await dispatcher.cancel()
    assert sorted(left) == [0, 1, 2]
    assert dispatcher.in_flight == 0 and dispatcher.rooms == 0
    assert await dispatcher.wait_idle(GUARD)
