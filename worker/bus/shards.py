"""Shard arithmetic (DESIGN §5).

- `shard_of(room_id, shards)`: the shard NATS puts a room in. The input stream's subject
  transform `{{partition(K,1)}}` hashes the room token with 32-bit FNV-1a, modulo K
  (nats-server `subject_transform.go`); computed here so a worker that gains a shard knows
  which of its cached rooms moved to it (`PostgresStore.forget_rooms`).
- `fair_share(shards, workers)`: ceil(K / live workers), what each worker aims to own.

A moved room is made safe by the store's write fence (`worker.storage.fence`).
"""

from __future__ import annotations

from worker.bus.subjects import room_token

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def shard_of(room_id: str, shards: int) -> int:
    """The input shard of a room, as the stream's `partition(shards,1)` transform picks it."""
    return fnv1a_32(room_token(room_id).encode()) % shards


def fair_share(shards: int, workers: int) -> int:
    """How many shards each of `workers` live workers should own: ceil(shards / workers)."""
    return -(-shards // max(workers, 1))


__all__ = ["fair_share", "fnv1a_32", "shard_of"]
