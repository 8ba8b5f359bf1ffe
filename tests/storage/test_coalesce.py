"""`Coalescer`: requests that wait for a busy slot share the next call; per key, requests
never share a call nor overlap, and keep their order; failures reach their own submitters."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.storage.coalesce import Coalescer


class Recorder:
    """A `run` that records its calls, holds each until released, and answers `2 * x`."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on: set[int] = set()

    async def run(self, requests: list[int]) -> list[int | BaseException]:
        self.calls.append(list(requests))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
        finally:
            self.running -= 1
        return [ValueError(f"no {x}") if x in self.fail_on else 2 * x for x in requests]


def _held(concurrency: int, max_batch: int = 8) -> tuple[Recorder, Coalescer[int, int]]:
    """A recorder whose calls wait until `gate` is set, and a coalescer over it."""
    r = Recorder()
    r.gate.clear()
    return r, Coalescer(r.run, concurrency=concurrency, max_batch=max_batch)


async def test_a_request_alone_runs_at_once() -> None:
    r = Recorder()
    c: Coalescer[int, int] = Coalescer(r.run, concurrency=2, max_batch=8)
    assert await c.submit(1) == 2
    assert await c.submit(2) == 4
    assert r.calls == [[1], [2]]


async def test_requests_arriving_while_the_slots_are_busy_share_the_next_call() -> None:
    r, c = _held(1)
    first = asyncio.create_task(c.submit(0))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(c.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    assert r.calls == [[0]]
    r.gate.set()
    assert await first == 0
    assert [await t for t in rest] == [2, 4, 6, 8, 10]
    assert r.calls == [[0], [1, 2, 3, 4, 5]]
    assert (c.calls, c.requests) == (2, 6)


async def test_a_call_takes_at_most_max_batch_requests() -> None:
    r, c = _held(1, max_batch=2)
    tasks = [asyncio.create_task(c.submit(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    r.gate.set()
    assert [await t for t in tasks] == [0, 2, 4, 6, 8]
    assert r.calls == [[0], [1, 2], [3, 4]]


async def test_requests_of_one_key_never_share_a_call_and_keep_their_order() -> None:
    r, c = _held(3)
    # 10 and 11 have key "a", 20 key "b": while "a" runs, 11 waits though a slot is free.
    tasks = [
        asyncio.create_task(c.submit(10, key="a")),
        asyncio.create_task(c.submit(11, key="a")),
        asyncio.create_task(c.submit(20, key="b")),
    ]
    await asyncio.sleep(0.01)
    assert r.calls == [[10], [20]]
    r.gate.set()
    assert [await t for t in tasks] == [20, 22, 40]
    assert r.calls == [[10], [20], [11]]


async def test_an_answer_that_is_an_exception_is_raised_to_its_submitter_alone() -> None:
    r, c = _held(1)
    r.fail_on = {2}
    tasks = [asyncio.create_task(c.submit(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    r.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == 0 and results[1] == 2 and results[3] == 6
    assert isinstance(results[2], ValueError)


async def test_when_run_raises_every_request_of_the_call_gets_the_error() -> None:
    async def broken(requests: list[int]) -> list[int]:
        raise ConnectionError("down")

    c: Coalescer[int, int] = Coalescer(broken, concurrency=1, max_batch=8)
    results = await asyncio.gather(*(c.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(x, ConnectionError) for x in results)
    # And the coalescer goes on afterwards.
    assert c.calls >= 1


async def test_a_request_cancelled_before_it_was_taken_is_dropped() -> None:
    r, c = _held(1)
    first = asyncio.create_task(c.submit(0))
    await asyncio.sleep(0.01)
    doomed = asyncio.create_task(c.submit(1))
    kept = asyncio.create_task(c.submit(2))
    await asyncio.sleep(0.01)
    doomed.cancel()
    r.gate.set()
    assert await first == 0
    assert await kept == 4
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert r.calls == [[0], [2]]


def test_bad_limits_are_refused() -> None:
    async def run(requests: list[int]) -> list[int]:
        return requests

    with pytest.raises(ValueError):
        Coalescer(run, concurrency=0, max_batch=1)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=40),
    concurrency=st.integers(1, 4),
    max_batch=st.integers(1, 6),
)
def test_per_key_order_and_exclusion_hold_for_any_arrival(
    keys: list[str | None], concurrency: int, max_batch: int
) -> None:
    """Whatever arrives when: each request is answered once, calls respect the limits, a key
    is never in two running calls nor twice in one, and a key's requests run in order."""

    async def scenario() -> None:
        running_keys: list[str] = []
        seen: dict[str, list[int]] = {}
        calls: list[list[int]] = []

        async def run(requests: list[int]) -> list[int]:
            assert len(requests) <= max_batch
            mine = [keys[i] for i in requests if keys[i] is not None]
            assert len(mine) == len(set(mine))
            assert not set(mine) & set(running_keys)
            running_keys.extend(k for k in mine if k is not None)
            calls.append(requests)
            await asyncio.sleep(0.001 * (len(calls) % 3))
            for i in requests:
                k = keys[i]
                if k is not None:
                    seen.setdefault(k, []).append(i)
                    running_keys.remove(k)
            return [i * 10 for i in requests]

        c: Coalescer[int, int] = Coalescer(run, concurrency=concurrency, max_batch=max_batch)
        tasks = []
        for i, k in enumerate(keys):
            tasks.append(asyncio.create_task(c.submit(i, key=k)))
            if i % 3 == 0:
                await asyncio.sleep(0)
        assert [await t for t in tasks] == [i * 10 for i in range(len(keys))]
        for k, order in seen.items():
            assert order == sorted(order), k
        assert sorted(i for call in calls for i in call) == list(range(len(keys)))

    asyncio.run(scenario())


async def test_a_failed_call_gives_each_submitter_its_own_exception() -> None:
    class Down(Exception):
        def __init__(self, where: str) -> None:
            super().__init__(f"down at {where}")
            self.where = where

    async def broken(requests: list[int]) -> list[int]:
        raise Down("db")

    c: Coalescer[int, int] = Coalescer(broken, concurrency=1, max_batch=8)
    results = await asyncio.gather(*(c.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(x, Down) and x.where == "db" for x in results)
    assert len({id(x) for x in results}) == len(results)
