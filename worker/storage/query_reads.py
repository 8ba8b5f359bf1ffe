"""The reads of the query API (`worker.query.ports.QueryStore`) over the roomserver's schema.

State comes from the store's own snapshot machinery (`PostgresStore`: `state_after`,
`current_state`, `lookup`, `materialize`), so there is one way to read a snapshot; this module
adds what only queries need, each in one round trip: events with their stored (redacted) JSON,
whole auth chains by a recursive walk of `events.auth_event_nids`, the state before events, and
"was this user ever joined".

Reads run on their own pool connections and take no locks: MVCC gives each statement a
consistent view, so a query never waits for, nor holds up, a room's writer (DESIGN §5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, cast

import asyncpg
import msgspec

from worker.core import stateblocks as sb
from worker.core.events import StateKey
from worker.core.versions import RoomRules, rules_for
from worker.pipeline.ports import StateHandle
from worker.query.ports import WILDCARD, QueryEvent, StateFilter
from worker.storage import rooms as room_sql
from worker.storage.invites import OutlierMembership, PgInviteReads
from worker.storage.nids import NidCache, select_names, select_nids
from worker.storage.params import keys_param
from worker.storage.snapshots import load_layers
from worker.storage.store import PostgresStore

# Mirrors of worker.storage.events codes (schemas/sql/0001_initial.sql comments).
_OUTCOMES = {1: "accepted", 2: "soft_failed", 3: "rejected", 4: "outlier", 5: "invalid"}
_YIELD_EVERY = 1000
_MEMBERSHIPS = {0: "", 1: "leave", 2: "invite", 3: "join", 4: "knock", 5: "ban"}
_MEMBER_TYPE_NID = 5
_JOIN = 3


# Every lookup by key is an index probe per key (scalar subqueries, `LATERAL (... LIMIT 1)`):
# never a join that a cached generic plan could freeze into a hash join over a whole table
# (worker.storage.params, "Plan robustness"; tests/storage/test_plans.py).
# The events with the IDs of parameter 1, one probe per ID.
_EVENTS_BY_ID = f"""{keys_param(1, "text")} AS k(key)
CROSS JOIN LATERAL (SELECT * FROM events x WHERE x.event_id = k.key LIMIT 1) e"""

SELECT_EVENTS = f"""
SELECT e.event_id, e.outcome, e.before_snapshot_nid IS NOT NULL AS has_state,
       e.redacted_by IS NOT NULL AS redacted, e.depth, e.membership, r.room_id,
       r.room_version, (SELECT j.json FROM event_json j WHERE j.event_nid = e.event_nid) AS json
FROM {_EVENTS_BY_ID}
CROSS JOIN LATERAL (
    SELECT x.room_id, x.room_version FROM rooms x WHERE x.room_nid = e.room_nid LIMIT 1
) r
"""

# UNION (not UNION ALL) drops repeats, so the walk ends even on a cyclic (corrupt) chain.
SELECT_AUTH_CHAIN = f"""
WITH RECURSIVE chain(nid) AS (
    SELECT unnest(e.auth_event_nids) FROM {_EVENTS_BY_ID}
  UNION
    SELECT unnest(e.auth_event_nids)
    FROM chain c
    CROSS JOIN LATERAL (
        SELECT x.auth_event_nids FROM events x WHERE x.event_nid = c.nid LIMIT 1
    ) e
)
SELECT e.event_id
FROM chain c
CROSS JOIN LATERAL (SELECT x.event_id FROM events x WHERE x.event_nid = c.nid LIMIT 1) e
"""

SELECT_BEFORE_SNAPSHOTS = f"""
SELECT e.event_id, e.before_snapshot_nid FROM {_EVENTS_BY_ID}
WHERE e.before_snapshot_nid IS NOT NULL
"""

SELECT_EVENT_IDS = f"""
SELECT e.event_nid, e.event_id
FROM {keys_param(1, "bigint")} AS k(key)
CROSS JOIN LATERAL (SELECT * FROM events x WHERE x.event_nid = k.key LIMIT 1) e
"""

# The server name of a user ID is everything after its first colon.
SELECT_SERVER_JOINED = f"""
SELECT EXISTS (
    SELECT 1 FROM memberships m
    WHERE m.room_nid = (SELECT r.room_nid FROM rooms r WHERE r.room_id = $1)
      AND m.membership = {_JOIN}
      AND (SELECT substr(s.state_key, strpos(s.state_key, ':') + 1)
           FROM state_keys s WHERE s.state_key_nid = m.target_nid) = $2
)
"""

SELECT_EVER_JOINED = f"""
SELECT EXISTS (
    SELECT 1 FROM events e
    WHERE e.room_nid = (SELECT r.room_nid FROM rooms r WHERE r.room_id = $1)
      AND e.state_key_nid = (SELECT s.state_key_nid FROM state_keys s WHERE s.state_key = $2)
      AND e.type_nid = {_MEMBER_TYPE_NID} AND e.membership = {_JOIN} AND e.outcome = 1
)
"""


class PostgresQueryReads:
    """`QueryStore` over PostgreSQL: `pool` for the query-only reads, `store` for state."""

    def __init__(self, pool: asyncpg.Pool[Any], store: PostgresStore) -> None:
        self._pool = pool
        self._store = store
        self._nids = NidCache()

    @classmethod
    def from_pool(
        cls,
        pool: asyncpg.Pool[Any],
        *,
        layer_cache_entries: int = 500_000,
        event_cache_size: int = 5_000,
        id_cache_size: int = 125_000,
    ) -> PostgresQueryReads:
        # Its own view of the state (own caches, sized for reads) over the same database.
        return cls(pool, PostgresStore(
            pool, layer_cache_entries=layer_cache_entries, event_cache_size=event_cache_size,
            id_cache_size=id_cache_size,
        ))

    async def room_version(self, room_id: str) -> str | None:
        version: str | None = await self._pool.fetchval(room_sql.SELECT_ROOM_VERSION, room_id)
        return version

    async def outlier_membership(self, room_id: str, user_id: str) -> OutlierMembership | None:
        """A user's membership in a room held only through an invite (`storage.invites`)."""
        return await PgInviteReads(self._pool).outlier_membership(room_id, user_id)

    async def events(self, event_ids: Sequence[str]) -> dict[str, QueryEvent]:
        if not event_ids:
            return {}
        rows = await self._pool.fetch(SELECT_EVENTS, list(event_ids))
        out: dict[str, QueryEvent] = {}
        for n, row in enumerate(rows, 1):
            if n % _YIELD_EVERY == 0:
                # A big room's state is thousands of rows: let other rooms' work interleave.
                await asyncio.sleep(0)
            rules = rules_for(row["room_version"])
            if rules is None:
                continue
            out[row["event_id"]] = _query_event(row, rules)
        return out

    async def extremities(self, room_id: str) -> list[str]:
        self._store.forget_room(room_id)
        return await self._store.extremities(room_id)

    async def current_state(self, room_id: str, keys: StateFilter) -> dict[StateKey, str]:
        # The store caches a room's mutable row for its writer; queries are not that writer
        # (nor, with several workers, in the writer's process): read the row afresh.
        self._store.forget_room(room_id)
        handle = await self._store.current_state(room_id)
        if handle is None:
            return {}
        return await self._read(handle, keys)

    async def state_after(
        self, event_ids: Sequence[str], keys: StateFilter
    ) -> dict[str, dict[StateKey, str]]:
        handles = await self._store.state_after(event_ids)
        return {i: await self._read(h, keys) for i, h in handles.items()}

    async def state_before(
        self, event_ids: Sequence[str], keys: StateFilter
    ) -> dict[str, dict[StateKey, str]]:
        """From each event's `before_snapshot_nid`: all snapshots' layers in one query, the
        filter turned into NIDs first so that only the wanted entries are ever named."""
        if not event_ids:
            return {}
        async with self._pool.acquire() as proxy:
            # The proxy forwards every call to its connection; the storage helpers are typed
            # for a plain connection.
            conn = cast("asyncpg.Connection[asyncpg.Record]", proxy)
            rows = await conn.fetch(SELECT_BEFORE_SNAPSHOTS, list(event_ids))
            if not rows:
                return {}
            layers = await load_layers(conn, [r["before_snapshot_nid"] for r in rows])
            want = await self._nid_filter(conn, keys)
            states: dict[str, sb.NidState] = {}
            for r in rows:
                full = sb.materialize(sb.chain_from_rows(r["before_snapshot_nid"], layers))
                states[r["event_id"]] = full if want is None else _pick(full, *want)
            return await self._name_states(conn, states)

    async def _nid_filter(
        self, conn: asyncpg.Connection, keys: StateFilter
    ) -> tuple[set[sb.NidKey], set[int]] | None:
        """(exact NID keys, type NIDs with a wildcard); names never stored match nothing."""
        if keys is None:
            return None
        nids = await select_nids(
            conn, self._nids, {t for t, _ in keys}, {k for _, k in keys if k != WILDCARD}
        )
        exact = {
            (nids.types[t], nids.keys[k])
            for t, k in keys
            if k != WILDCARD and t in nids.types and k in nids.keys
        }
        types = {nids.types[t] for t, k in keys if k == WILDCARD and t in nids.types}
        return exact, types

    async def _name_states(
        self, conn: asyncpg.Connection, states: Mapping[str, sb.NidState]
    ) -> dict[str, dict[StateKey, str]]:
        """NID states -> (type, state_key) -> event ID, with one query per kind of name."""
        type_nids = {t for st in states.values() for t, _ in st}
        key_nids = {k for st in states.values() for _, k in st}
        event_nids = sorted({e for st in states.values() for e in st.values()})
        types, skeys = await select_names(conn, self._nids, type_nids, key_nids)
        ids: dict[int, str] = {}
        if event_nids:
            ids = {
                r["event_nid"]: r["event_id"]
                for r in await conn.fetch(SELECT_EVENT_IDS, event_nids)
            }
        return {
            i: {
                (types[t], skeys[k]): ids[e]
                for (t, k), e in st.items()
                if t in types and k in skeys and e in ids
            }
            for i, st in states.items()
        }

    async def auth_chain(self, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        rows = await self._pool.fetch(SELECT_AUTH_CHAIN, list(event_ids))
        return {r["event_id"] for r in rows}

    async def server_joined(self, room_id: str, server_name: str) -> bool:
        return bool(await self._pool.fetchval(SELECT_SERVER_JOINED, room_id, server_name))

    async def ever_joined(self, room_id: str, user_id: str) -> bool:
        return bool(await self._pool.fetchval(SELECT_EVER_JOINED, room_id, user_id))

    async def _read(self, handle: StateHandle, keys: StateFilter) -> dict[StateKey, str]:
        """A state, filtered: exact keys by lookup, anything with a wildcard materialised."""
        if keys is not None and all(k[1] != WILDCARD for k in keys):
            found = await self._store.lookup(handle, list(keys))
            return {k: e.event_id for k, e in found.items()}
        full = await self._store.materialize(handle)
        if keys is None:
            return full
        exact = {k for k in keys if k[1] != WILDCARD}
        types = {k[0] for k in keys if k[1] == WILDCARD}
        return {k: v for k, v in full.items() if k in exact or k[0] in types}


class _TopLevel(msgspec.Struct):
    event_id: Any = None


# Reads only the top-level `event_id`; everything else is skipped without building objects.
_TOP_LEVEL = msgspec.json.Decoder(_TopLevel)


def _with_event_id(raw: bytes, event_id: str) -> bytes:
    """The PDU JSON with its `event_id`, as outputs carry it (v3+ PDUs are stored without
    one, their ID being their reference hash); spliced in, not re-encoded, to stay cheap."""
    if _TOP_LEVEL.decode(raw).event_id is not None:
        return raw
    head = b'{"event_id":' + msgspec.json.encode(event_id)
    body = raw.lstrip()[1:].lstrip()
    return head + (b"}" if body.startswith(b"}") else b"," + body)


def _query_event(row: asyncpg.Record, rules: RoomRules) -> QueryEvent:
    return QueryEvent(
        event_id=row["event_id"],
        json=_with_event_id(bytes(row["json"]), row["event_id"]),
        rules=rules,
        room_id=row["room_id"],
        depth=row["depth"],
        outcome=_OUTCOMES.get(row["outcome"], "invalid"),
        has_state=bool(row["has_state"]),
        redacted=bool(row["redacted"]),
        membership=_MEMBERSHIPS.get(row["membership"]) if row["membership"] is not None else None,
    )


def _pick(state: sb.NidState, exact: set[sb.NidKey], types: set[int]) -> sb.NidState:
    return {k: v for k, v in state.items() if k in exact or k[0] in types}
