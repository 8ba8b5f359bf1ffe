"""`make chaos`: the long fault run (issue 8). Exit status 0 only if nothing went wrong.

    python -m chaos [--rooms 100] [--events-per-room 200] [--kills 20] [--shards 8] [--seed N]

On loopback, started here: a 3-node NATS JetStream cluster (R3 streams), PostgreSQL, and 3
`python -m worker run` processes. A replay of rooms x events-per-room events (at least
20,000 by default) is published while, at random moments of its progress, a worker is
SIGKILLed (and a new one started in its place) `--kills` times, one NATS node is restarted
and PostgreSQL is restarted. Then everything is checked as in tests/cluster (see
`tests.cluster.harness.verify`) and the figures are printed:

    events, kills, takeovers (shards a killed worker held that another took over), longest
    takeover (kill to the last of its shards owned again), lost (must be 0), duplicated
    outputs (must be 0), and the other checks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from tests.cluster.harness import (
    Fleet,
    NatsCluster,
    WorkerProcess,
    build_replay,
    connect,
    progress,
    provision,
    publish_replay,
    shard_owners,
    verify,
    wait_done,
    worker_env,
)
from worker.bus.subjects import Subjects
from worker.connections import ensure_database
from worker.embedded import EmbeddedPostgres


async def lease_pid(admin_dsn: str, worker: WorkerProcess) -> int | None:
    """The backend pid of a worker process's lease session (its id holds the OS pid)."""
    assert worker.proc is not None
    conn = await asyncpg.connect(admin_dsn)
    try:
        pid = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1",
            f"roomserver-lease %:{worker.proc.pid}:%",
        )
    finally:
        await conn.close()
    return int(pid) if pid is not None else None


async def measure_takeover(admin_dsn: str, prefix: str, shards: set[int], dead: int,
                           killed_at: float, timeout: float = 60.0) -> float:
    """Seconds from the kill until every shard the dead worker held has a live owner."""
    deadline = killed_at + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            owners = await shard_owners(admin_dsn, prefix)
            if all(s in owners and owners[s] != dead for s in shards):
                return time.monotonic() - killed_at
        await asyncio.sleep(0.05)
    return float("inf")


async def wait_fraction(dsn: str, count: int) -> None:
    while True:
        with contextlib.suppress(Exception):
            if (await progress(dsn))[0] >= count:
                return
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace, base: Path) -> int:
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    replay = await build_replay(args.rooms, args.events_per_room, seed=args.seed)
    print(f"replay: {len(replay.rooms)} rooms, {replay.events} events, {replay.outputs} "
          f"outputs (clean run in {time.monotonic() - t0:.1f}s)", flush=True)

    pg = EmbeddedPostgres(base / "pg", fsync=False)
    await asyncio.to_thread(pg.start)
    cluster = NatsCluster(base / "nats")
    await asyncio.to_thread(cluster.start)
    await ensure_database(pg.dsn(), "chaos")
    dsn = pg.dsn("chaos")
    prefix = f"chaos{uuid.uuid4().hex[:6]}"
    subjects = Subjects(prefix)
    nc = await connect(cluster.url)
    fleet = Fleet(worker_env(cluster.url, dsn, prefix, args.shards, base / "data"), base / "logs")
    takeovers: list[float] = []
    moved = 0
    try:
        await provision(nc, subjects, args.shards)
        for _ in range(3):
            await fleet.add()
        started = time.monotonic()
        publisher = asyncio.create_task(publish_replay(nc, subjects, replay))

        # The faults, each at a random point of the replay's progress, in that order.
        faults = ["kill"] * args.kills + ["nats", "postgres"]
        points = sorted(rng.uniform(0.02, 0.9) for _ in faults)
        rng.shuffle(faults)
        measuring: list[asyncio.Task[float]] = []
        for point, fault in zip(points, faults, strict=True):
            await wait_fraction(dsn, int(point * replay.events))
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            if fault == "kill":
                victim = rng.choice(fleet.alive)
                dead = await lease_pid(pg.dsn(), victim)
                owners = await shard_owners(pg.dsn(), prefix) if dead is not None else {}
                held = {s for s, p in owners.items() if p == dead}
                victim.kill()
                killed_at = time.monotonic()
                moved += len(held)
                print(f"[{killed_at - started:6.1f}s] SIGKILL {victim.name} "
                      f"(shards {sorted(held)})", flush=True)
                if held and dead is not None:
                    measuring.append(asyncio.create_task(
                        measure_takeover(pg.dsn(), prefix, held, dead, killed_at)))
                await fleet.add()
            elif fault == "nats":
                print(f"[{time.monotonic() - started:6.1f}s] restart NATS node n1", flush=True)
                await asyncio.to_thread(cluster.restart, 1)
            else:
                print(f"[{time.monotonic() - started:6.1f}s] restart PostgreSQL", flush=True)
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(pg.start)
        await publisher
        await wait_done(dsn, nc, subjects, replay, timeout=args.timeout)
        elapsed = time.monotonic() - started
        takeovers = list(await asyncio.gather(*measuring))
        verdict = await verify(dsn, nc, subjects, replay)
        codes = fleet.stop()
    except BaseException:
        for w in fleet.workers[-4:]:
            print(f"--- {w.name} ---\n{w.tail(40)}", file=sys.stderr)
        raise
    finally:
        fleet.kill_all()
        with contextlib.suppress(Exception):
            await nc.close()
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(pg.stop)

    longest = max(takeovers, default=0.0)
    print()
    print(f"events:                 {replay.events} in {elapsed:.1f}s "
          f"({replay.events / elapsed:.0f}/s)")
    print(f"kills:                  {args.kills} (SIGKILL), plus 1 NATS node restart and "
          "1 PostgreSQL restart")
    print(f"takeovers:              {moved} shards of killed workers taken over")
    print(f"longest takeover:       {longest:.2f}s")
    print(f"lost:                   {verdict.lost}")
    print(f"duplicated outputs:     {verdict.duplicated_outputs}")
    print(f"wrong outcomes:         {len(verdict.wrong_outcomes)}")
    print(f"rooms out of order:     {len(verdict.out_of_order_rooms)}")
    print(f"rooms in a wrong state: {len(verdict.wrong_state_rooms)}")
    print(f"dead letters:           {verdict.dead_letters}")
    print(f"overlapping writers:    {len(verdict.overlaps)} "
          f"({verdict.handoffs} room handoffs between {verdict.writers} workers)")
    print(f"worker exit codes:      {codes}")
    for line in (verdict.wrong_outcomes + verdict.out_of_order_rooms
                 + verdict.wrong_state_rooms + verdict.overlaps)[:20]:
        print(f"  {line}")
    ok = verdict.ok and longest <= 10.0 and all(c == 0 for c in codes)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--events-per-room", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    print(f"chaos seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="roomserver-chaos-") as d:
        return asyncio.run(run(args, Path(d)))


if __name__ == "__main__":
    sys.exit(main())
