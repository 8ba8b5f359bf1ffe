"""The group commit: the writes of several rooms submitted meanwhile share one transaction.

`GroupCommit.submit` queues one room's writes (`persist_many`); at most `concurrency` write
transactions run at once, and the commits that arrive while they run go together in the next
one, under the advisory locks of all their rooms (`worker.storage.coalesce`). When every room
of a group writes one run of new events, the group is written as one run whose room rows,
names, references, event rows and end states each take one round trip for all the rooms
(`group_run_txn`); otherwise each room's writes are written in turn on the one connection.
If the group's transaction fails, each room's writes are committed alone, so that one room's
refusal (its fence, a conflict) is its own. Nothing is cached before a transaction commits.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from worker.errors import InvariantViolation
from worker.observability.logging import get_logger
from worker.pipeline.ports import EventWrite
from worker.storage import rooms as room_sql
from worker.storage import snapshots as snap_sql
from worker.storage.caches import StoreCaches, WriteEffects
from worker.storage.coalesce import Coalescer
from worker.storage.event_write import EventWriter
from worker.storage.fence import RoomView, check_view
from worker.storage.run_write import (
    RunRows,
    RunWriter,
    StaleWrite,
    is_one_run,
    layers_wanted,
    new_event_run,
    run_names,
    write_rows,
)
from worker.storage.transactions import Database, room_lock_key

_log = get_logger(__name__)

# Rooms whose writes one group commit carries at most (bounds how long it holds their locks).
_GROUP_ROOMS = 64


@dataclass(frozen=True, slots=True, eq=False)
class Commit:
    """One room's writes waiting for a group commit, with the view they were computed
    from when they are fenced (`worker.storage.fence`)."""

    room_id: str
    writes: Sequence[EventWrite]
    fence: RoomView | None


class GroupCommit:
    """The store's write path: every `persist_many` goes through `submit`."""

    def __init__(
        self,
        db: Database,
        caches: StoreCaches,
        writer: EventWriter,
        runs: RunWriter,
        *,
        concurrency: int,
    ) -> None:
        self.db = db
        self.caches = caches
        self.writer = writer
        self.runs = runs
        self.commits: Coalescer[Commit, None] = Coalescer(
            self.commit_group, concurrency=concurrency, max_batch=_GROUP_ROOMS
        )
        # Group transactions that failed and were redone room by room (`commit_group`).
        self.groups_split = 0

    async def submit(self, commit: Commit) -> None:
        """Commit one room's writes; a room's commits run one after another, in order."""
        await self.commits.submit(commit, key=commit.room_id)

    async def commit_group(self, commits: list[Commit]) -> list[BaseException | None]:
        """Commit the writes of several rooms in one transaction; if it fails, commit each
        room's alone, so that one room's refusal (a fence, a conflict) is its own."""
        if len(commits) > 1:
            try:
                effects = await self.db.txn(
                    "persist_group",
                    lambda c: self.group_txn(c, commits),
                    locks=[room_lock_key(x.room_id) for x in commits],
                )
            except Exception as e:
                # Expected now and then (a fenced room); anything else is a bug that the
                # room-by-room retry below would otherwise hide.
                self.groups_split += 1
                _log.info("group_commit_split", rooms=len(commits), error=repr(e))
            else:
                for fx in effects:
                    self.caches.learn(fx)
                return [None] * len(commits)
        answers: list[BaseException | None] = []
        for x in commits:
            desc = "persist_event" if len(x.writes) == 1 else "persist_events"
            try:
                alone = await self.db.txn(desc, self._alone(x), locks=[room_lock_key(x.room_id)])
            except Exception as e:
                answers.append(e)
            else:
                self.caches.learn(alone[0])
                answers.append(None)
        return answers

    def _alone(
        self, commit: Commit
    ) -> Callable[[asyncpg.Connection], Awaitable[list[WriteEffects]]]:
        return lambda conn: self.group_txn(conn, [commit])

    async def group_txn(
        self, conn: asyncpg.Connection, commits: Sequence[Commit]
    ) -> list[WriteEffects]:
        """The commits' writes on `conn`, inside the transaction holding their rooms' locks."""
        if len(commits) > 1 and all(is_one_run(x.writes) for x in commits):
            return await self.group_run_txn(conn, commits)
        return [await self.persist_all_txn(conn, x.writes, x.fence) for x in commits]

    async def persist_all_txn(
        self, conn: asyncpg.Connection, writes: Sequence[EventWrite], fence: RoomView | None
    ) -> WriteEffects:
        """One room's writes in order: runs of new events together, the rest one by one."""
        # One set of effects for the whole transaction: what an earlier write created (NIDs,
        # snapshots, event NIDs, the room row) is what the later ones build on.
        fx = WriteEffects()
        i = 0
        while i < len(writes):
            run = new_event_run(writes, i, fx.id_nids)
            if len(run) > 1:
                await self.runs.persist_run_txn(conn, run, fx, fence)
                i += len(run)
            else:
                await self.writer.persist_txn(conn, writes[i], fx, fence)
                i += 1
        return fx

    async def group_run_txn(
        self, conn: asyncpg.Connection, commits: Sequence[Commit]
    ) -> list[WriteEffects]:
        """`RunWriter.persist_run_txn` for several rooms at once, each with one run of new
        events (`is_one_run`): the rooms' rows, names, references, events and end states
        each take one round trip for all of them, not one per room. So do new rooms' first
        snapshots (`EventWriter.store_first_roots_txn`) and the new layers (reserved, written
        at the end); any other new root is written room by room."""
        reserve = [len(x.writes) for x in commits]
        found = {
            r["room_id"]: r
            for r in await conn.fetch(
                room_sql.UPSERT_ROOMS_RESERVING,
                [x.room_id for x in commits],
                [x.writes[0].room_version for x in commits],
                reserve,
                [layers_wanted(x.writes) for x in commits],
            )
        }
        effects = [WriteEffects(held_layers=[]) for _ in commits]
        types: set[str] = set()
        keys: set[str] = set()
        refs: set[str] = set()
        rooms: list[tuple[room_sql.RoomRow, list[int]]] = []
        own: set[str] = set()
        for x, fx in zip(commits, effects, strict=True):
            r = found.get(x.room_id)
            if r is None:
                raise InvariantViolation(f"room {x.room_id} could not be created")
            room = room_sql.room_row(r)
            check_view(room, x.fence)
            rooms.append((room, sorted(r["reserved"])))
            fx.layer_nids = sorted(r["layers"])
            t, k, refs_of = run_names(x.writes)
            types |= t
            keys |= k
            refs |= refs_of
            own.update(w.event.event_id for w in x.writes)
        # Names and references are shared: what one room's writes make or look up is
        # learned once, with the first room's effects.
        nids = await self.writer.nids_txn(conn, types, keys, effects[0])
        shared = effects[0].id_nids
        shared.update(await self.writer.ref_nids(conn, refs - own))
        rows = RunRows()
        plans: list[Mapping[str, int]] = []
        for x, fx, (_, reserved) in zip(commits, effects, rooms, strict=True):
            for w, nid in zip(x.writes, reserved, strict=True):
                fx.id_nids[w.event.event_id] = nid
            plans.append(fx.id_nids if fx is effects[0] else ChainMap(fx.id_nids, shared))
        # New rooms' first snapshots together, where each room's run would write its own.
        await self.writer.store_first_roots_txn(
            conn,
            [
                (room.room_nid, x.writes[0], nids, id_nids, fx)
                for x, fx, (room, _), id_nids in zip(commits, effects, rooms, plans, strict=True)
            ],
        )
        for x, fx, (room, reserved), id_nids in zip(commits, effects, rooms, plans, strict=True):
            await self.runs.plan_run(conn, room, x.writes, reserved, nids, id_nids, fx, rows)
        layers = [row for fx in effects for row in fx.held_layers or ()]
        if layers and not await snap_sql.insert_layers_txn(conn, layers):
            # A planned layer is stored already (the same state over the same parent, which
            # only the database remembers): redone room by room, where layers deduplicate.
            raise StaleWrite("a state layer of the group is stored already")
        await write_rows(conn, rows)
        for x, fx in zip(commits, effects, strict=True):
            for w in x.writes:
                fx.inserted[w.event.event_id] = w.event
        return effects


__all__ = ["Commit", "GroupCommit"]
