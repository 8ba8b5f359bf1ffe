"""`AckConfirmations`: the acks of a shard that come while a confirmation is in flight share
the next one; shards do not wait for each other; a failed confirmation reaches every ack of
its round and no other."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from nats.aio.msg import Msg

from worker.bus.ack_confirm import AckConfirmations


async def _turns() -> None:
    """Let every task that can run, run (a confirmation starts in a task of its own)."""
    for _ in range(5):
        await asyncio.sleep(0)


class FakeMsg:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self._log = log

    async def ack(self) -> None:
        self._log.append(f"ack {self.name}")


class Server:
    """Confirms on demand: each confirmation waits until the test lets it through."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gate = asyncio.Event()
        self.fail: set[str] = set()

    async def confirm(self, msg: Msg) -> None:
        name = cast(Any, msg).name
        self.log.append(f"confirm {name}")
        await self.gate.wait()
        if name in self.fail:
            raise ConnectionError(f"no confirmation for {name}")

    def msgs(self, *names: str) -> list[Msg]:
        return [cast(Msg, FakeMsg(n, self.log)) for n in names]


async def test_acks_during_a_confirmation_share_the_next_one() -> None:
    server = Server()
    confirms = AckConfirmations(server.confirm)
    first, *rest = server.msgs("a", "b", "c", "d")
    waiting = [asyncio.create_task(confirms.confirm(0, first))]
    await _turns()
    waiting += [asyncio.create_task(confirms.confirm(0, m)) for m in rest]
    await _turns()
    assert server.log == ["confirm a"]
    server.gate.set()
    await asyncio.gather(*waiting)
    # b and c are plain acks; d's confirmation answers all three.
    assert server.log == ["confirm a", "ack b", "ack c", "confirm d"]


async def test_a_lone_ack_is_confirmed_at_once_and_shards_are_independent() -> None:
    server = Server()
    confirms = AckConfirmations(server.confirm)
    a, b = server.msgs("a", "b")
    one = asyncio.create_task(confirms.confirm(0, a))
    other = asyncio.create_task(confirms.confirm(1, b))
    await _turns()
    assert sorted(server.log) == ["confirm a", "confirm b"]
    server.gate.set()
    await asyncio.gather(one, other)


async def test_a_failed_confirmation_fails_its_round_only() -> None:
    server = Server()
    server.fail = {"c"}
    confirms = AckConfirmations(server.confirm)
    a, b, c, d = server.msgs("a", "b", "c", "d")
    first = asyncio.create_task(confirms.confirm(0, a))
    await _turns()
    round_two = [asyncio.create_task(confirms.confirm(0, m)) for m in (b, c)]
    await _turns()
    server.gate.set()
    await first
    for task in round_two:
        with pytest.raises(ConnectionError):
            await task
    # The next ack is confirmed on its own, and succeeds.
    await confirms.confirm(0, d)
    assert server.log[-1] == "confirm d"
