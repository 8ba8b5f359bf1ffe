"""State blocks and snapshots: SQL for the layered chains of `worker.core.stateblocks`.

A snapshot of any depth loads in one query: a recursive CTE walks the parents from the asked
snapshots down to their roots and returns, in the same result, each layer's inline delta and
each root's bucket blocks. Layers already cached in process are passed in and the walk stops
there, so a new snapshot on top of a cached chain reads one row.

Writes deduplicate by content hash within the room (`ON CONFLICT (hash) DO NOTHING` and a read
of the existing row in the same statement); the per-room advisory lock held by every writer
means two writers never race on the same room's hashes.

Every lookup by key is a `LATERAL (... LIMIT 1)` probe or a scalar subquery, never a join the
planner could freeze into a hash join over a whole table in a cached generic plan (see
worker.storage.params, "Plan robustness"; tests/storage/test_plans.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import asyncpg

from worker.core import stateblocks as sb
from worker.observability.metrics import (
    SNAPSHOTS_WRITTEN,
    STATE_BLOCKS_REUSED,
    STATE_BLOCKS_WRITTEN,
)
from worker.storage.params import array_param, keys_param

LOAD_CHAINS = f"""
WITH RECURSIVE chain AS (
    SELECT s.snapshot_nid, s.parent_nid, s.rank, s.block_nids, s.delta
    FROM {keys_param(1, "bigint")} AS k(key)
    CROSS JOIN LATERAL (
        SELECT p.snapshot_nid, p.parent_nid, p.rank, p.block_nids, p.delta
        FROM state_snapshots p WHERE p.snapshot_nid = k.key LIMIT 1
    ) s
  UNION
    SELECT s.snapshot_nid, s.parent_nid, s.rank, s.block_nids, s.delta
    FROM chain c
    CROSS JOIN LATERAL (
        SELECT p.snapshot_nid, p.parent_nid, p.rank, p.block_nids, p.delta
        FROM state_snapshots p WHERE p.snapshot_nid = c.parent_nid LIMIT 1
    ) s
    WHERE NOT (s.snapshot_nid = ANY({array_param(2, "bigint")}))
)
SELECT c.snapshot_nid, c.parent_nid, c.rank, c.delta AS data, 0::bigint AS pos,
       coalesce(cardinality(c.block_nids), 0) AS nblocks
FROM chain c
UNION ALL
SELECT c.snapshot_nid, c.parent_nid, c.rank, b.entries, u.pos, cardinality(c.block_nids)
FROM chain c
CROSS JOIN LATERAL unnest(c.block_nids) WITH ORDINALITY AS u(block_nid, pos)
CROSS JOIN LATERAL (
    SELECT x.entries FROM state_blocks x WHERE x.block_nid = u.block_nid LIMIT 1
) b
"""

# Blocks of one room's root or of several rooms' roots: $1 the room NID of each block, $2
# their hashes, $3 their entries. Each hash is probed once: `input` carries the NID of an
# existing block, and only the others reach the INSERT. The arrays are read through
# InitPlans so that the generic plan is kept, not re-planned per call (see "Generic plans"
# in worker.storage.params).
INSERT_BLOCKS = f"""
WITH input AS (
    SELECT u.room_nid, u.hash, u.entries, u.pos, b.block_nid
    FROM unnest({array_param(1, "bigint")}, {array_param(2, "bytea")},
                {array_param(3, "bytea")}) WITH ORDINALITY AS u(room_nid, hash, entries, pos)
    LEFT JOIN LATERAL (
        SELECT x.block_nid FROM state_blocks x WHERE x.hash = u.hash LIMIT 1
    ) b ON true
), ins AS (
    INSERT INTO state_blocks (room_nid, hash, entries)
    SELECT room_nid, hash, entries FROM input
    WHERE block_nid IS NULL
    ORDER BY pos
    ON CONFLICT (hash) DO NOTHING
    RETURNING block_nid, hash
)
SELECT block_nid, hash, true AS fresh FROM ins
UNION ALL
SELECT block_nid, hash, false FROM input WHERE block_nid IS NOT NULL
"""

INSERT_SNAPSHOT = """
WITH old AS (
    SELECT snapshot_nid FROM state_snapshots WHERE hash = $2
), ins AS (
    INSERT INTO state_snapshots (room_nid, hash, parent_nid, rank, block_nids, delta)
    SELECT $1, $2, $3, $4, $5, $6
    WHERE NOT EXISTS (SELECT 1 FROM old)
    ON CONFLICT (hash) DO NOTHING
    RETURNING snapshot_nid
)
SELECT snapshot_nid, true AS fresh FROM ins
UNION ALL
SELECT snapshot_nid, false FROM old
"""


# INSERT_SNAPSHOT for several roots of one block each (rank $4, no parent): $1 their room
# NIDs, $2 their hashes, $3 their blocks' NIDs. Each hash is probed once, as in INSERT_BLOCKS;
# the answer gives every root's NID, by hash.
INSERT_ROOTS = f"""
WITH input AS (
    SELECT u.room_nid, u.hash, u.block_nid, u.pos, o.snapshot_nid
    FROM unnest({array_param(1, "bigint")}, {array_param(2, "bytea")},
                {array_param(3, "bigint")}) WITH ORDINALITY AS u(room_nid, hash, block_nid, pos)
    LEFT JOIN LATERAL (
        SELECT x.snapshot_nid FROM state_snapshots x WHERE x.hash = u.hash LIMIT 1
    ) o ON true
), ins AS (
    INSERT INTO state_snapshots (room_nid, hash, parent_nid, rank, block_nids, delta)
    SELECT room_nid, hash, 0, $4, ARRAY[block_nid], NULL FROM input
    WHERE snapshot_nid IS NULL
    ORDER BY pos
    ON CONFLICT (hash) DO NOTHING
    RETURNING snapshot_nid, hash
)
SELECT snapshot_nid, hash, true AS fresh FROM ins
UNION ALL
SELECT snapshot_nid, hash, false FROM input WHERE snapshot_nid IS NOT NULL
"""


# Layers whose NIDs were reserved beforehand (with the rooms' rows:
# rooms.UPSERT_ROOMS_RESERVING), written together at the end of a group commit; answers the
# NIDs it inserted. A layer whose hash is stored already is skipped (and missing from the
# answer): the caller must then redo the whole transaction with layers written one at a time,
# which deduplicate (`INSERT_SNAPSHOT`).
INSERT_LAYERS = f"""
INSERT INTO state_snapshots (snapshot_nid, room_nid, hash, parent_nid, rank, delta)
OVERRIDING SYSTEM VALUE
SELECT * FROM unnest({array_param(1, "bigint")}, {array_param(2, "bigint")},
                     {array_param(3, "bytea")}, {array_param(4, "bigint")},
                     {array_param(5, "smallint")}, {array_param(6, "bytea")})
ON CONFLICT DO NOTHING
RETURNING snapshot_nid
"""

# A layer planned for a reserved NID: (NID, room NID, hash, parent, rank, packed delta).
LayerRow = tuple[int, int, bytes, int, int, bytes]


def layer_row(room_nid: int, plan: sb.NewLayer, nid: int) -> tuple[LayerRow, sb.Layer]:
    """The row of `plan` stored as snapshot `nid`, and its layer (what `write_plan_txn`
    would store and answer for it, but for the NID)."""
    h, packed = _layer_content(room_nid, plan)
    return (nid, room_nid, h, plan.parent, plan.rank, packed), sb.Layer(
        nid, plan.parent, plan.rank, plan.delta, 1
    )


def _layer_content(room_nid: int, plan: sb.NewLayer) -> tuple[bytes, bytes]:
    """A planned layer's (hash, packed delta): its row's dedup key and content."""
    packed = sb.pack(plan.delta)
    return sb.snapshot_hash(room_nid, plan.parent, plan.rank, (), packed), packed


async def insert_layers_txn(conn: asyncpg.Connection, rows: Sequence[LayerRow]) -> bool:
    """Write the reserved layers; False if any was stored already (nothing to rely on then:
    the transaction must be redone without reserved layers)."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    inserted = await conn.fetch(INSERT_LAYERS, *columns)
    SNAPSHOTS_WRITTEN.inc(len(inserted))
    return len(inserted) == len(rows)


async def load_layers(
    conn: asyncpg.Connection, tops: Iterable[int], known: Iterable[int] = ()
) -> dict[int, sb.Layer]:
    """The layers of the chains under `tops`, stopping at `known` ones (one query)."""
    wanted = sorted({t for t in tops if t})
    if not wanted:
        return {}
    rows = await conn.fetch(LOAD_CHAINS, wanted, sorted(set(known)))
    meta: dict[int, tuple[int, int, int]] = {}
    deltas: dict[int, bytes | None] = {}
    roots: dict[int, list[tuple[int, bytes]]] = {}
    for r in rows:
        nid = r["snapshot_nid"]
        meta[nid] = (r["parent_nid"], r["rank"], r["nblocks"])
        if r["pos"]:
            roots.setdefault(nid, []).append((r["pos"], r["data"]))
        else:
            deltas[nid] = r["data"]
    out: dict[int, sb.Layer] = {}
    for nid, (parent, rank, nblocks) in meta.items():
        if rank == sb.ROOT_RANK:
            blocks = sorted(roots.get(nid, []))
            if len(blocks) != nblocks:
                raise RuntimeError(f"snapshot {nid}: {nblocks} blocks listed, {len(blocks)} found")
            state: sb.NidState = {}
            for _, data in blocks:
                state.update(sb.unpack(data))
            out[nid] = sb.Layer(nid, parent, rank, state, nblocks)
        else:
            out[nid] = sb.Layer(nid, parent, rank, sb.unpack(deltas.get(nid)), 1)
    return out


async def write_plan_txn(
    conn: asyncpg.Connection, room_nid: int, plan: sb.Plan
) -> tuple[int, sb.Layer | None]:
    """Store a planned snapshot; (its NID, its layer) — (0, None) for the empty state."""
    if isinstance(plan, sb.NewRoot):
        return await _write_root_txn(conn, room_nid, plan.state)
    h, packed = _layer_content(room_nid, plan)
    nid = await _insert_snapshot_txn(conn, room_nid, h, plan.parent, plan.rank, None, packed)
    return nid, sb.Layer(nid, plan.parent, plan.rank, plan.delta, 1)


async def _insert_blocks_txn(
    conn: asyncpg.Connection, room_nids: Sequence[int], blocks: Sequence[bytes]
) -> list[int]:
    """Store `blocks` (each of the room at the same place in `room_nids`) unless stored
    already; their NIDs, in order."""
    hashes = [sb.block_hash(room_nid, b) for room_nid, b in zip(room_nids, blocks, strict=True)]
    by_hash: dict[bytes, int] = {}
    fresh = 0
    for r in await conn.fetch(INSERT_BLOCKS, list(room_nids), hashes, list(blocks)):
        by_hash[bytes(r["hash"])] = r["block_nid"]
        fresh += bool(r["fresh"])
    STATE_BLOCKS_WRITTEN.inc(fresh)
    STATE_BLOCKS_REUSED.inc(len(blocks) - fresh)
    return [by_hash[h] for h in hashes]


async def _write_root_txn(
    conn: asyncpg.Connection, room_nid: int, state: Mapping[sb.NidKey, int]
) -> tuple[int, sb.Layer | None]:
    if not state:
        return 0, None
    blocks = sb.split_root(state)
    block_nids = await _insert_blocks_txn(conn, [room_nid] * len(blocks), blocks)
    h = sb.snapshot_hash(room_nid, 0, sb.ROOT_RANK, block_nids, b"")
    nid = await _insert_snapshot_txn(conn, room_nid, h, 0, sb.ROOT_RANK, block_nids, None)
    return nid, sb.Layer(nid, 0, sb.ROOT_RANK, dict(state), len(block_nids))


async def write_roots_txn(
    conn: asyncpg.Connection, roots: Sequence[tuple[int, Mapping[sb.NidKey, int], bytes]]
) -> list[sb.Layer]:
    """Store the roots of several rooms, each a non-empty state of its room held in one block
    (room NID, state, its block as `sb.split_root` makes it), in two round trips; their
    layers, in order. What `write_plan_txn` stores for each, deduplicated the same way."""
    block_nids = await _insert_blocks_txn(
        conn, [room_nid for room_nid, _, _ in roots], [block for _, _, block in roots]
    )
    hashes = [
        sb.snapshot_hash(room_nid, 0, sb.ROOT_RANK, [block_nid], b"")
        for (room_nid, _, _), block_nid in zip(roots, block_nids, strict=True)
    ]
    rows = await conn.fetch(
        INSERT_ROOTS, [room_nid for room_nid, _, _ in roots], hashes, block_nids, sb.ROOT_RANK
    )
    by_root = {bytes(r["hash"]): r["snapshot_nid"] for r in rows}
    SNAPSHOTS_WRITTEN.inc(sum(bool(r["fresh"]) for r in rows))
    return [
        sb.Layer(by_root[h], 0, sb.ROOT_RANK, dict(state), 1)
        for h, (_, state, _) in zip(hashes, roots, strict=True)
    ]


async def _insert_snapshot_txn(
    conn: asyncpg.Connection,
    room_nid: int,
    h: bytes,
    parent: int,
    rank: int,
    block_nids: list[int] | None,
    delta: bytes | None,
) -> int:
    rows = await conn.fetch(INSERT_SNAPSHOT, room_nid, h, parent, rank, block_nids, delta)
    if any(r["fresh"] for r in rows):
        SNAPSHOTS_WRITTEN.inc()
    return int(rows[0]["snapshot_nid"])
