"""Numeric IDs of event types and state keys (DESIGN §3, STYLE R8).

Both dictionaries are global and append-only, so a mapping once committed never changes and
can be cached in process forever; a mapping made inside a transaction is cached only after
that transaction commits (`NidCache.learn` is called by the store after commit).

Get-or-create of a whole batch (types and state keys together) is one statement: an INSERT of
the names not yet present, `ON CONFLICT DO NOTHING`, plus a SELECT of those already present.
Under concurrent writers a name inserted by a transaction that committed after our statement
began is neither inserted nor seen; it is read by one more SELECT (the rare second round trip).
Names are inserted in sorted order to make lock-order deadlocks unlikely; the store's
transaction helper retries the ones that still happen.

Existing names are found by one unique-index probe per name (scalar subqueries and `LATERAL`
lookups), never by a join that a cached generic plan could freeze into a hash join over the
whole dictionary: `state_keys` holds every user ID the server has seen
(worker.storage.params, "Plan robustness").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg

from worker.storage.params import keys_param

# Preassigned in schemas/sql/0001_initial.sql; the reserved range ends at 65535.
WELL_KNOWN_TYPES: Mapping[str, int] = {
    "m.room.create": 1,
    "m.room.power_levels": 2,
    "m.room.join_rules": 3,
    "m.room.third_party_invite": 4,
    "m.room.member": 5,
    "m.room.redaction": 6,
    "m.room.history_visibility": 7,
    "m.room.name": 8,
    "m.room.topic": 9,
    "m.room.avatar": 10,
    "m.room.canonical_alias": 11,
    "m.room.guest_access": 12,
    "m.room.server_acl": 13,
    "m.room.encryption": 14,
    "m.room.tombstone": 15,
    "m.room.pinned_events": 16,
    "m.room.message": 17,
    "m.room.encrypted": 18,
    "m.reaction": 19,
    "m.space.child": 20,
    "m.space.parent": 21,
}
MEMBER_TYPE_NID = 5
EMPTY_STATE_KEY_NID = 1
FIRST_DYNAMIC_NID = 65536

# Each name is probed once: `tin`/`kin` carry the NID of an existing name, and only the
# others reach the INSERTs.
GET_OR_CREATE = """
WITH tin AS (
    SELECT u.name, t.type_nid AS nid
    FROM (SELECT DISTINCT name FROM unnest((SELECT $1::text[])::text[]) AS n(name)) u
    LEFT JOIN LATERAL (
        SELECT x.type_nid FROM event_types x WHERE x.event_type = u.name LIMIT 1
    ) t ON true
), kin AS (
    SELECT u.name, k.state_key_nid AS nid
    FROM (SELECT DISTINCT name FROM unnest((SELECT $2::text[])::text[]) AS n(name)) u
    LEFT JOIN LATERAL (
        SELECT x.state_key_nid FROM state_keys x WHERE x.state_key = u.name LIMIT 1
    ) k ON true
), tnew AS (
    INSERT INTO event_types (event_type)
    SELECT name FROM tin WHERE nid IS NULL
    ORDER BY name
    ON CONFLICT (event_type) DO NOTHING
    RETURNING type_nid AS nid, event_type AS name
), knew AS (
    INSERT INTO state_keys (state_key)
    SELECT name FROM kin WHERE nid IS NULL
    ORDER BY name
    ON CONFLICT (state_key) DO NOTHING
    RETURNING state_key_nid AS nid, state_key AS name
)
SELECT true AS is_type, nid, name FROM tnew
UNION ALL
SELECT true, nid, name FROM tin WHERE nid IS NOT NULL
UNION ALL
SELECT false, nid, name FROM knew
UNION ALL
SELECT false, nid, name FROM kin WHERE nid IS NOT NULL
"""

SELECT_BY_NAME = f"""
SELECT true AS is_type, t.type_nid AS nid, t.event_type AS name
FROM {keys_param(1, "text")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.type_nid, x.event_type FROM event_types x WHERE x.event_type = k.key LIMIT 1
) t
UNION ALL
SELECT false, s.state_key_nid, s.state_key
FROM {keys_param(2, "text")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.state_key_nid, x.state_key FROM state_keys x WHERE x.state_key = k.key LIMIT 1
) s
"""

SELECT_BY_NID = f"""
SELECT true AS is_type, t.type_nid AS nid, t.event_type AS name
FROM {keys_param(1, "bigint")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.type_nid, x.event_type FROM event_types x WHERE x.type_nid = k.key LIMIT 1
) t
UNION ALL
SELECT false, s.state_key_nid, s.state_key
FROM {keys_param(2, "bigint")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.state_key_nid, x.state_key FROM state_keys x WHERE x.state_key_nid = k.key LIMIT 1
) s
"""

_CACHE_LIMIT = 1_000_000


@dataclass
class Nids:
    """A batch of resolved names: type -> NID and state key -> NID."""

    types: dict[str, int] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)


@dataclass
class NidCache:
    """Committed mappings, both directions. Append-only; cleared wholesale if it grows huge."""

    types: dict[str, int] = field(default_factory=lambda: dict(WELL_KNOWN_TYPES))
    keys: dict[str, int] = field(default_factory=lambda: {"": EMPTY_STATE_KEY_NID})
    type_names: dict[int, str] = field(
        default_factory=lambda: {v: k for k, v in WELL_KNOWN_TYPES.items()}
    )
    key_names: dict[int, str] = field(default_factory=lambda: {EMPTY_STATE_KEY_NID: ""})

    def learn(self, nids: Nids) -> None:
        if len(self.keys) + len(nids.keys) > _CACHE_LIMIT:
            self.keys = {"": EMPTY_STATE_KEY_NID}
            self.key_names = {EMPTY_STATE_KEY_NID: ""}
        for name, nid in nids.types.items():
            self.types[name] = nid
            self.type_names[nid] = name
        for name, nid in nids.keys.items():
            self.keys[name] = nid
            self.key_names[nid] = name

    def known(self, types: Iterable[str], keys: Iterable[str]) -> tuple[Nids, list[str], list[str]]:
        """(cached mappings, types not cached, keys not cached)."""
        out = Nids()
        miss_t: list[str] = []
        miss_k: list[str] = []
        for t in types:
            nid = self.types.get(t)
            if nid is None:
                miss_t.append(t)
            else:
                out.types[t] = nid
        for k in keys:
            nid = self.keys.get(k)
            if nid is None:
                miss_k.append(k)
            else:
                out.keys[k] = nid
        return out, miss_t, miss_k


def _collect(rows: Iterable[asyncpg.Record], into: Nids) -> None:
    for r in rows:
        if r["is_type"]:
            into.types[r["name"]] = r["nid"]
        else:
            into.keys[r["name"]] = r["nid"]


async def get_or_create_txn(
    conn: asyncpg.Connection, cache: NidCache, types: Iterable[str], keys: Iterable[str]
) -> tuple[Nids, Nids]:
    """(every mapping asked for, the ones not cached before) — one round trip, or none.

    The second value is what the caller passes to `cache.learn` after its transaction
    commits.
    """
    out, miss_t, miss_k = cache.known(set(types), set(keys))
    fresh = Nids()
    if not miss_t and not miss_k:
        return out, fresh
    _collect(await conn.fetch(GET_OR_CREATE, sorted(miss_t), sorted(miss_k)), fresh)
    still_t = [t for t in miss_t if t not in fresh.types]
    still_k = [k for k in miss_k if k not in fresh.keys]
    if still_t or still_k:
        # Committed by a concurrent writer after our statement's snapshot was taken.
        _collect(await conn.fetch(SELECT_BY_NAME, still_t, still_k), fresh)
    if any(t not in fresh.types for t in still_t) or any(k not in fresh.keys for k in still_k):
        raise RuntimeError("NID get-or-create lost a name: dictionary tables are inconsistent")
    out.types.update(fresh.types)
    out.keys.update(fresh.keys)
    return out, fresh


async def select_nids(
    conn: asyncpg.Connection, cache: NidCache, types: Iterable[str], keys: Iterable[str]
) -> Nids:
    """NIDs of existing names only (a name never stored has no NID and is absent)."""
    out, miss_t, miss_k = cache.known(set(types), set(keys))
    if miss_t or miss_k:
        fresh = Nids()
        _collect(await conn.fetch(SELECT_BY_NAME, miss_t, miss_k), fresh)
        cache.learn(fresh)
        out.types.update(fresh.types)
        out.keys.update(fresh.keys)
    return out


async def select_names(
    conn: asyncpg.Connection, cache: NidCache, type_nids: Iterable[int], key_nids: Iterable[int]
) -> tuple[dict[int, str], dict[int, str]]:
    """(type NID -> name, state key NID -> name) for committed NIDs."""
    tn = cache.type_names
    kn = cache.key_names
    miss_t = sorted({n for n in type_nids if n not in tn})
    miss_k = sorted({n for n in key_nids if n not in kn})
    if miss_t or miss_k:
        fresh = Nids()
        _collect(await conn.fetch(SELECT_BY_NID, miss_t, miss_k), fresh)
        cache.learn(fresh)
    return cache.type_names, cache.key_names
