"""The state block and snapshot algebra: pure, no I/O (DESIGN §3, STYLE R1).

A state is a map (type NID, state key NID) -> event NID. It is stored as a *chain* of layers:

* a **root** holds a full state split into at most `MAX_ROOT_BLOCKS` bucket blocks (a key's
  bucket is a hash of the key, so a change rewrites one bucket and every other bucket block is
  shared, by content hash, with the previous root);
* each **layer** above it holds one delta block (event NID 0 removes a key) and points at its
  parent snapshot.

Why layers rather than Dendrite's "full block + single-event deltas": a full copy of a
10,000-member state is ~120 KB, so any scheme that copies the state every 64 changes costs
kilobytes per state event. Here layers are merged like a base-4 counter (LSM tiering): when
`FANOUT` layers of the same rank sit on top of the chain, a new snapshot replaces them with one
layer of the next rank, whose parent is the snapshot below them (which already exists). Every
entry is thus rewritten about log4(changes) times, each new snapshot is exactly one new row,
and the chain stays short (at most FANOUT - 1 layers per rank). When the layers hold more than
a quarter of the root's size (or the chain would pass `MAX_BLOCKS` blocks) the next snapshot
is a new root: only the buckets that changed get new blocks.

A snapshot's blocks are its root's buckets plus one per layer; that count is what
`MAX_BLOCKS` bounds. Everything here is deterministic: keys are sorted before packing and
hashing, so the same state written twice gives the same bytes and the same hash (STYLE R9).
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

# (type NID, state key NID)
NidKey = tuple[int, int]
# A state or a delta over NIDs: key -> event NID; in a delta, 0 removes the key.
NidState = dict[NidKey, int]

MAX_BLOCKS = 64
MAX_ROOT_BLOCKS = 32
TARGET_BLOCK_ENTRIES = 256
FANOUT = 4
# Layers are folded into a new root when they hold more entries than this fraction of the
# root (and at least MIN_REBUILD_ENTRIES): rebuilding costs one copy of the changed buckets.
REBUILD_DIVISOR = 4
MIN_REBUILD_ENTRIES = 128
ROOT_RANK = -1

_U32 = "I" if array("I").itemsize == 4 else "L"
_U64 = "Q"
_WIDE = 8
_NARROW = 4
_BIG_ENDIAN = sys.byteorder == "big"


# --- packing ---------------------------------------------------------------------------------


def pack(entries: Mapping[NidKey, int]) -> bytes:
    """Triples sorted by key, as three little-endian columns behind a width byte.

    Columns (all types, then all state keys, then all event NIDs) rather than rows, because
    PostgreSQL compresses large values and a column of mostly equal type NIDs compresses to
    almost nothing. Unsigned 32-bit when every value fits, else 64-bit.
    """
    if not entries:
        return b""
    keys = sorted(entries)
    types = [k[0] for k in keys]
    sks = [k[1] for k in keys]
    evs = [entries[k] for k in keys]
    wide = max(max(types), max(sks), max(evs)) >= 1 << 32
    arr = array(_U64 if wide else _U32, types)
    arr.extend(sks)
    arr.extend(evs)
    if _BIG_ENDIAN:
        arr.byteswap()
    return bytes((_WIDE if wide else _NARROW,)) + arr.tobytes()


def unpack(data: bytes | None) -> NidState:
    """The entries of a packed block (inverse of `pack`)."""
    if not data:
        return {}
    arr = array(_U64 if data[0] == _WIDE else _U32)
    arr.frombytes(data[1:])
    if _BIG_ENDIAN:
        arr.byteswap()
    n = len(arr) // 3
    return dict(zip(zip(arr[:n], arr[n : 2 * n], strict=True), arr[2 * n :], strict=True))


def _digest(person: bytes, *parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=person)
    for p in parts:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.digest()


def block_hash(room_nid: int, packed: bytes) -> bytes:
    """Dedup key of a block: the room is part of it, so rooms never share rows (Dendrite did)."""
    return _digest(b"rs-block", room_nid.to_bytes(8, "little"), packed)


def snapshot_hash(
    room_nid: int, parent: int, rank: int, block_nids: Sequence[int], delta: bytes
) -> bytes:
    """Dedup key of a snapshot row: its room, parent, rank and content."""
    ints = array("q", [room_nid, parent, rank, *block_nids])
    if _BIG_ENDIAN:
        ints.byteswap()
    return _digest(b"rs-snap", ints.tobytes(), delta)


# --- roots -----------------------------------------------------------------------------------


def bucket_count(n: int) -> int:
    """Buckets for a root of n entries: a power of two, ~TARGET_BLOCK_ENTRIES each, capped."""
    b = 1
    while b < MAX_ROOT_BLOCKS and b * TARGET_BLOCK_ENTRIES < n:
        b *= 2
    return b


def bucket_of(key: NidKey, buckets: int) -> int:
    """The bucket of a key: multiplicative hash, stable across processes and versions."""
    h = (key[0] * 0x9E3779B1 + key[1] * 0x85EBCA77) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 12
    return (h * buckets) >> 32


def split_root(state: Mapping[NidKey, int]) -> list[bytes]:
    """A full state as packed bucket blocks, in bucket order, empty buckets left out."""
    if not state:
        return []
    n = bucket_count(len(state))
    parts: list[NidState] = [{} for _ in range(n)]
    for k, v in state.items():
        parts[bucket_of(k, n)][k] = v
    return [pack(p) for p in parts if p]


# --- chains ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
    """One stored snapshot row as the algebra sees it.

    For a root, `entries` is the full state and `blocks` its bucket count; for a layer,
    `entries` is its delta (0 = removed) and `blocks` is 1.
    """

    nid: int
    parent: int
    rank: int
    entries: Mapping[NidKey, int]
    blocks: int

    @property
    def is_root(self) -> bool:
        return self.rank == ROOT_RANK


# A chain is a snapshot's layers from its root up to itself; () is the empty state.
Chain = tuple[Layer, ...]


def chain_from_rows(top: int, rows: Mapping[int, Layer]) -> Chain:
    """Follow parents from `top` through `rows` (nid -> layer) down to the root."""
    return chain_via(top, rows.get)


def chain_via(top: int, get: Callable[[int], Layer | None]) -> Chain:
    """Follow parents from `top` through `get` (nid -> layer) down to the root.

    Raises KeyError when a layer is not available (the caller then loads it).
    """
    out: list[Layer] = []
    nid = top
    while nid:
        layer = get(nid)
        if layer is None:
            raise KeyError(nid)
        out.append(layer)
        nid = layer.parent
        if len(out) > MAX_BLOCKS:
            raise ValueError(f"snapshot {top} has a chain longer than {MAX_BLOCKS}")
    out.reverse()
    return tuple(out)


def chain_blocks(chain: Chain) -> int:
    """Blocks of the snapshot at the top of `chain` (what MAX_BLOCKS bounds)."""
    return sum(layer.blocks for layer in chain)


def overlay(state: NidState, delta: Mapping[NidKey, int]) -> None:
    """Apply a delta in place (0 removes)."""
    for k, v in delta.items():
        if v:
            state[k] = v
        else:
            state.pop(k, None)


def materialize(chain: Chain, delta: Mapping[NidKey, int] | None = None) -> NidState:
    """The full state of a chain, plus an optional pending delta on top."""
    if not chain:
        state: NidState = {}
    else:
        state = dict(chain[0].entries)
        for layer in chain[1:]:
            overlay(state, layer.entries)
    if delta:
        overlay(state, delta)
    return state


def value_at(chain: Chain, key: NidKey, delta: Mapping[NidKey, int] | None = None) -> int:
    """The event NID at `key` (0 when absent), reading layers from the top down."""
    if delta is not None and key in delta:
        return delta[key]
    for layer in reversed(chain):
        v = layer.entries.get(key)
        if v is not None:
            return v
    return 0


def touched_keys(
    a: Chain, a_delta: Mapping[NidKey, int], b: Chain, b_delta: Mapping[NidKey, int]
) -> set[NidKey] | None:
    """Keys where two states may differ, when they share a root; None when they do not.

    Layers common to both chains (same NIDs from the root up) cannot differ, so only the
    keys named by the layers above the fork point, and by the pending deltas, are candidates.
    """
    if not a or not b or a[0].nid != b[0].nid:
        return None
    i = 1
    while i < len(a) and i < len(b) and a[i].nid == b[i].nid:
        i += 1
    keys: set[NidKey] = set(a_delta) | set(b_delta)
    for layer in (*a[i:], *b[i:]):
        keys.update(layer.entries)
    return keys


def diff_states(
    old: Mapping[NidKey, int], new: Mapping[NidKey, int], keys: Iterable[NidKey] | None = None
) -> tuple[list[int], list[int]]:
    """(event NIDs in `new` not in `old`, event NIDs in `old` not in `new`), each sorted.

    Entries are compared by key: a key whose event changed contributes to both lists.
    """
    added: set[int] = set()
    removed: set[int] = set()
    for k in old.keys() | new.keys() if keys is None else keys:
        o = old.get(k, 0)
        n = new.get(k, 0)
        if o != n:
            if n:
                added.add(n)
            if o:
                removed.add(o)
    return sorted(added), sorted(removed)


# --- planning a new snapshot -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewLayer:
    """Store a layer: `delta` over snapshot `parent`, with merge rank `rank`."""

    parent: int
    rank: int
    delta: NidState


@dataclass(frozen=True, slots=True)
class NewRoot:
    """Store a new root holding `state` (no removals) as bucket blocks."""

    state: NidState


Plan = NewLayer | NewRoot


def plan_snapshot(chain: Chain, delta: Mapping[NidKey, int]) -> Plan:
    """How to store the state `chain` + `delta` (delta non-empty), touching one row or a root.

    The new rank-0 delta carries into the layers on top of the chain like a base-FANOUT
    counter: while FANOUT - 1 layers of the current rank sit on top, they are merged with it
    (later entries win; removals are kept, since the root below may hold the key) and the
    merged layer's parent is the snapshot under them.
    """
    if not chain:
        return NewRoot({k: v for k, v in delta.items() if v})
    root = chain[0]
    tail = list(chain[1:])
    merged: NidState = dict(delta)
    rank = 0
    group = FANOUT - 1
    while len(tail) >= group and all(layer.rank == rank for layer in tail[-group:]):
        combined: NidState = {}
        for layer in tail[-group:]:
            combined.update(layer.entries)
        combined.update(merged)
        merged = combined
        rank += 1
        del tail[-group:]
    tail_entries = sum(len(layer.entries) for layer in tail) + len(merged)
    too_long = root.blocks + len(tail) + 1 > MAX_BLOCKS
    too_heavy = tail_entries > max(MIN_REBUILD_ENTRIES, len(root.entries) // REBUILD_DIVISOR)
    if too_long or too_heavy:
        return NewRoot(materialize(chain, delta))
    parent = tail[-1].nid if tail else root.nid
    return NewLayer(parent, rank, merged)
