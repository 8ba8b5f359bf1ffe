"""Three worker processes on a three-node NATS cluster (R3 streams) and PostgreSQL process a
multi-room replay while one worker is SIGKILLed (and replaced) and one NATS node restarts:
nothing is lost, duplicated or reordered, every room ends as a clean run leaves it, and the
write log shows no room written by two workers at once (DESIGN §5, §6)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cluster.harness import (
    Fleet,
    NatsCluster,
    build_replay,
    connect,
    provision,
    publish_replay,
    shard_owners,
    verify,
    wait_balanced,
    wait_done,
    wait_events,
    worker_env,
)
from worker.bus.shards import fair_share, shard_of
from worker.bus.subjects import Subjects
from worker.embedded import EmbeddedPostgres

SHARDS = 6


async def test_kill_a_worker_and_restart_a_nats_node(
    tmp_path: Path, embedded_pg: EmbeddedPostgres, database_dsn: str, prefix: str
) -> None:
    replay = await build_replay(rooms=16, events_per_room=40)
    cluster = NatsCluster(tmp_path / "nats")
    await asyncio.to_thread(cluster.start)
    nc = await connect(cluster.url)
    subjects = Subjects(prefix)
    fleet = Fleet(worker_env(cluster.url, database_dsn, prefix, SHARDS, tmp_path / "data"),
                  tmp_path / "logs")
    try:
        await provision(nc, subjects, SHARDS)
        for _ in range(3):
            await fleet.add()
        # Spread first: otherwise the first worker may hold every shard long enough to
        # write the whole replay alone, and the kill below would test nothing.
        await wait_balanced(embedded_pg.dsn(), prefix, SHARDS, 3)
        publisher = asyncio.create_task(publish_replay(nc, subjects, replay))
        await wait_events(database_dsn, replay.events // 3, timeout=90)
        fleet.workers[0].kill()
        await fleet.add()
        await wait_events(database_dsn, 2 * replay.events // 3, timeout=90)
        await asyncio.to_thread(cluster.restart, 1)
        await publisher
        await wait_done(database_dsn, nc, subjects, replay, timeout=120)

        # Every shard has one owner, and nobody more than its fair share. Balancing moves one
        # shard a second, so the fleet may still be settling after a fault: wait for it (the
        # deadline only guards against a hang).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            owners = await shard_owners(embedded_pg.dsn(), prefix)
            per_worker: dict[int, int] = {}
            for pid in owners.values():
                per_worker[pid] = per_worker.get(pid, 0) + 1
            settled = sorted(owners) == list(range(SHARDS)) and (
                max(per_worker.values()) <= fair_share(SHARDS, len(fleet.alive))
            )
            if settled or loop.time() > deadline:
                break
            await asyncio.sleep(0.5)
        assert sorted(owners) == list(range(SHARDS))
        assert max(per_worker.values()) <= fair_share(SHARDS, len(fleet.alive))

        verdict = await verify(database_dsn, nc, subjects, replay)
        print(verdict)
        assert verdict.ok, verdict
        assert verdict.writers >= 2  # the work really was spread over several workers
        codes = fleet.stop()
        assert codes == [0] * len(codes), [w.tail() for w in fleet.workers]
    except BaseException:
        for w in fleet.workers:
            print(f"--- {w.name} ---\n{w.tail(60)}")
        raise
    finally:
        fleet.kill_all()
        await nc.close()
        await asyncio.to_thread(cluster.stop)


@pytest.mark.parametrize("shards", [1, 4, 7, 64])
def test_shard_of_is_a_stable_partition(shards: int) -> None:
    rooms = [f"!r{i}:test" for i in range(200)]
    picks = [shard_of(r, shards) for r in rooms]
    assert all(0 <= p < shards for p in picks)
    assert picks == [shard_of(r, shards) for r in rooms]


def test_fair_share() -> None:
    assert [fair_share(6, n) for n in (1, 2, 3, 4, 5, 6, 7)] == [6, 3, 2, 2, 2, 1, 1]
    assert fair_share(4, 0) == 4
