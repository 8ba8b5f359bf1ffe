"""The reads of the homeserver queries (`worker.query.homeserver_ports.HomeserverStore`).

Two sources, both kept by the pipeline in each event's own transaction:

- `memberships`: each user's membership in each room per the current state. Indexed by
  (user, membership) and by (room, membership) (schemas/sql/0006): the rooms of a user, the
  joined members of a room and their count are each one index range, whatever the size.
  Invites to rooms this server is not in are outliers of rooms with no current state, read
  by `worker.storage.invites.invited_rooms`.
- the current state snapshot of each room (`rooms.current_snapshot_nid`): only the entries
  asked for are read, from the snapshot's layers (immutable once written, so cached here by
  NID), then their JSON; when the room's snapshot has not changed since the same entries
  were last asked for, the rooms' rows and the JSON come in one statement.

Reads take no locks and run on their own pool connections: MVCC gives each statement a
consistent view, so they never wait for, nor hold up, a room's writer (DESIGN §5). Lookups by
key follow worker.storage.events "Plan robustness": one probe per key, driven by the keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import asyncpg

from worker.core import stateblocks as sb
from worker.core.events import StateKey
from worker.query.homeserver_ports import WILDCARD, RoomState, StateEntry
from worker.storage.events import MEMBERSHIP_CODES, MEMBERSHIP_NAMES
from worker.storage.invites import invited_rooms
from worker.storage.lru import Lru
from worker.storage.nids import NidCache, select_names, select_nids
from worker.storage.params import keys_param
from worker.storage.snapshots import load_layers

_JOIN = MEMBERSHIP_CODES["join"]
# Memberships a user can forget a room in (after leaving it or being banned).
_FORGETTABLE = frozenset({"leave", "ban"})
SELECT_FORGOTTEN = "SELECT room_id FROM forgotten_rooms WHERE user_id = $1"
# Snapshot layers cached, by total entries (a 30,000-member root is 30,000).
_LAYER_CACHE_ENTRIES = 500_000
# Root NIDs sent to the layer load as "stop here": bounded, it is a query parameter.
_KNOWN_ROOTS = 4_096
# (room, keys asked) -> the entries picked from the room's snapshot the last time.
_PICKED_ENTRIES = 100_000
# Event NID -> its entry (ID and stored JSON), and whether that JSON is already redacted.
_ENTRIES = 200_000

SELECT_ROOM_IDS = f"""
SELECT r.room_nid, r.room_id
FROM {keys_param(1, "bigint")} AS k(key)
CROSS JOIN LATERAL (SELECT x.room_nid, x.room_id FROM rooms x WHERE x.room_nid = k.key LIMIT 1) r
"""

# The rooms of a user with one membership: one range of memberships_user_idx, as one array.
SELECT_ROOMS_OF_USER = """
SELECT array_agg(m.room_nid) FROM memberships m
WHERE m.target_nid = (SELECT s.state_key_nid FROM state_keys s WHERE s.state_key = $1)
  AND m.membership = $2
"""

# Users joined to rooms the user is joined to, with how many: the user's rooms by one range,
# each room's joined members by one range of memberships_room_idx.
SELECT_SHARED_ALL = f"""
SELECT o.target_nid, count(*) AS n
FROM memberships u
CROSS JOIN LATERAL (
    SELECT x.target_nid FROM memberships x WHERE x.room_nid = u.room_nid AND x.membership = {_JOIN}
) o
WHERE u.target_nid = $1 AND u.membership = {_JOIN}
GROUP BY o.target_nid
"""

# The same for given users: each one's joined rooms (one range each), kept where the user is
# joined too (one primary key probe each).
SELECT_SHARED_WITH = f"""
SELECT k.key AS target_nid, (
    SELECT count(*) FROM memberships o
    WHERE o.target_nid = k.key AND o.membership = {_JOIN}
      AND EXISTS (SELECT 1 FROM memberships u
                  WHERE u.room_nid = o.room_nid AND u.target_nid = $1 AND u.membership = {_JOIN})
) AS n
FROM {keys_param(2, "bigint")} AS k(key)
"""

# Users joined to rooms the user is joined to, as one array of NIDs; their names come from
# the NID cache (names never change), so a room of thousands reads no name twice.
SELECT_CO_MEMBERS = f"""
SELECT array_agg(DISTINCT o.target_nid)
FROM memberships u
CROSS JOIN LATERAL (
    SELECT x.target_nid FROM memberships x
    WHERE x.room_nid = u.room_nid AND x.membership = {_JOIN}
) o
WHERE u.target_nid = (SELECT s.state_key_nid FROM state_keys s WHERE s.state_key = $1)
  AND u.membership = {_JOIN}
"""

# The counts kept by the triggers of schemas/sql/0006 (no row: nobody ever joined).
SELECT_JOINED_COUNTS = f"""
SELECT r.room_id,
       coalesce((SELECT c.joined FROM room_joined_counts c WHERE c.room_nid = r.room_nid), 0) AS n
FROM {keys_param(1, "text")} AS k(key)
CROSS JOIN LATERAL (SELECT x.room_nid, x.room_id FROM rooms x WHERE x.room_id = k.key LIMIT 1) r
"""

# The joined members of a room as one array of NIDs (one range of memberships_room_idx).
SELECT_JOINED_NIDS = f"""
SELECT array_agg(m.target_nid) FROM memberships m
WHERE m.room_nid = (SELECT r.room_nid FROM rooms r WHERE r.room_id = $1)
  AND m.membership = {_JOIN}
"""

SELECT_MEMBERSHIPS_IN = f"""
SELECT s.state_key, m.membership
FROM {keys_param(2, "text")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.state_key_nid, x.state_key FROM state_keys x WHERE x.state_key = k.key LIMIT 1
) s
CROSS JOIN LATERAL (
    SELECT y.membership FROM memberships y
    WHERE y.room_nid = (SELECT r.room_nid FROM rooms r WHERE r.room_id = $1)
      AND y.target_nid = s.state_key_nid
    LIMIT 1
) m
"""

SELECT_MEMBERSHIPS_OF = f"""
SELECT r.room_id, m.membership
FROM {keys_param(2, "text")} AS k(key)
CROSS JOIN LATERAL (SELECT x.room_nid, x.room_id FROM rooms x WHERE x.room_id = k.key LIMIT 1) r
CROSS JOIN LATERAL (
    SELECT y.membership FROM memberships y
    WHERE y.room_nid = r.room_nid
      AND y.target_nid = (SELECT s.state_key_nid FROM state_keys s WHERE s.state_key = $1)
    LIMIT 1
) m
"""

# One statement, so that everything is read in one snapshot: the rows of the rooms of $1
# (`version` not null), then (`version` null) the events of $2 with their stored JSON, and
# those of $3 only if they were redacted (their JSON rewritten) since they were cached.
SELECT_ROOMS_AND_JSON = f"""
SELECT r.room_id AS id, r.room_version AS version, r.current_snapshot_nid AS nid,
       NULL::bytea AS json, false AS redacted
FROM {keys_param(1, "text")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.room_id, x.room_version, x.current_snapshot_nid FROM rooms x
    WHERE x.room_id = k.key LIMIT 1
) r
UNION ALL
SELECT e.event_id, NULL, e.event_nid,
       (SELECT j.json FROM event_json j WHERE j.event_nid = e.event_nid),
       e.redacted_by IS NOT NULL
FROM {keys_param(2, "bigint")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.event_nid, x.event_id, x.redacted_by FROM events x WHERE x.event_nid = k.key LIMIT 1
) e
UNION ALL
SELECT e.event_id, NULL, e.event_nid,
       (SELECT j.json FROM event_json j WHERE j.event_nid = e.event_nid), true
FROM {keys_param(3, "bigint")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.event_nid, x.event_id FROM events x
    WHERE x.event_nid = k.key AND x.redacted_by IS NOT NULL LIMIT 1
) e
"""

# Event IDs and stored JSON by NID, one probe each.
SELECT_JSON_BY_NID = f"""
SELECT e.event_nid, e.event_id,
       (SELECT j.json FROM event_json j WHERE j.event_nid = e.event_nid) AS json,
       e.redacted_by IS NOT NULL AS redacted
FROM {keys_param(1, "bigint")} AS k(key)
CROSS JOIN LATERAL (
    SELECT x.event_nid, x.event_id, x.redacted_by FROM events x WHERE x.event_nid = k.key LIMIT 1
) e
"""


def _layer_weight(layer: sb.Layer) -> int:
    return max(1, len(layer.entries))


class PostgresHomeserverReads:
    """`HomeserverStore` over PostgreSQL.

    Its caches hold what never changes once committed (NIDs and their names, room NID ->
    room ID, snapshot layers), or what is checked against the database on every use: the
    entries picked from a room's snapshot (used only while the room's current snapshot is
    still that one) and events' JSON (used only while the event has not been redacted).
    NIDs are never reused, so a purged room or event cannot be mistaken for a new one."""

    def __init__(
        self, pool: asyncpg.Pool[Any], *, layer_cache_entries: int = _LAYER_CACHE_ENTRIES
    ) -> None:
        self._pool = pool
        self._nids = NidCache()
        self._room_ids: dict[int, str] = {}
        self._layers: Lru[int, sb.Layer] = Lru(layer_cache_entries, _layer_weight)
        self._roots: Lru[int, bool] = Lru(_KNOWN_ROOTS)
        self._picked: Lru[tuple[str, tuple[StateKey, ...]], tuple[int, dict[StateKey, int]]] = (
            Lru(_PICKED_ENTRIES)
        )
        self._entries: Lru[int, tuple[StateEntry, bool]] = Lru(_ENTRIES)

    # --- names ---------------------------------------------------------------------------

    async def _user_nid(self, conn: asyncpg.Connection, user_id: str) -> int | None:
        return (await select_nids(conn, self._nids, (), [user_id])).keys.get(user_id)

    async def _room_names(self, conn: asyncpg.Connection, nids: Sequence[int]) -> list[str]:
        """Room IDs of room NIDs (a NID names one room for good: it is never reused)."""
        names = self._room_ids
        try:
            # One pass when every room is known, as it nearly always is.
            return [names[n] for n in nids]
        except KeyError:
            pass
        if len(names) > 1_000_000:
            names.clear()
        missing = [n for n in nids if n not in names]
        for r in await conn.fetch(SELECT_ROOM_IDS, missing):
            names[r["room_nid"]] = r["room_id"]
        return [names[n] for n in nids if n in names]

    async def _user_names(self, conn: asyncpg.Connection, nids: Sequence[int]) -> dict[int, str]:
        """Names of state key NIDs: from the cache, the others in one query."""
        _, keys = await select_names(conn, self._nids, (), nids)
        return {n: keys[n] for n in nids if n in keys}

    # --- memberships ---------------------------------------------------------------------

    async def rooms_of_user(self, user_id: str, membership: str) -> list[str]:
        code = MEMBERSHIP_CODES.get(membership)
        if code is None:
            return []
        async with self._pool.acquire() as proxy:
            conn = cast("asyncpg.Connection[asyncpg.Record]", proxy)
            nids = await conn.fetchval(SELECT_ROOMS_OF_USER, user_id, code)
            rooms = await self._room_names(conn, nids or [])
            if membership == "invite":
                # Invites to rooms we are not in are outliers, in no current state.
                user = await self._user_nid(conn, user_id)
                if user is not None:
                    rooms = sorted({*rooms, *await invited_rooms(conn, user)})
            if membership in _FORGETTABLE and rooms:
                # Rooms the user forgot after leaving (perform `forget`) are not listed; a
                # join clears the mark.
                forgotten = {r["room_id"] for r in await conn.fetch(SELECT_FORGOTTEN, user_id)}
                rooms = [r for r in rooms if r not in forgotten]
            return sorted(rooms)

    async def shared_users(self, user_id: str, others: Sequence[str]) -> dict[str, int]:
        async with self._pool.acquire() as proxy:
            conn = cast("asyncpg.Connection[asyncpg.Record]", proxy)
            user = await self._user_nid(conn, user_id)
            if user is None:
                return {}
            if others:
                nids = (await select_nids(conn, self._nids, (), others)).keys
                rows = await conn.fetch(SELECT_SHARED_WITH, user, sorted(set(nids.values())))
            else:
                rows = await conn.fetch(SELECT_SHARED_ALL, user)
            counts = {r["target_nid"]: r["n"] for r in rows if r["n"]}
            names = await self._user_names(conn, list(counts))
            return {names[n]: c for n, c in counts.items() if n in names}

    async def known_users(self, user_id: str, search: str, limit: int) -> list[str]:
        if limit <= 0:
            return []
        async with self._pool.acquire() as proxy:
            conn = cast("asyncpg.Connection[asyncpg.Record]", proxy)
            nids = await conn.fetchval(SELECT_CO_MEMBERS, user_id)
            names = await self._user_names(conn, nids or [])
        needle = search.lower()
        found = sorted(n for n in names.values() if n != user_id and needle in n.lower())
        return found[:limit]

    async def joined_counts(self, room_ids: Sequence[str]) -> dict[str, int]:
        if not room_ids:
            return {}
        rows = await self._pool.fetch(SELECT_JOINED_COUNTS, list(room_ids))
        return {r["room_id"]: r["n"] for r in rows}

    async def joined_users_of_server(self, room_id: str, server_name: str) -> list[str]:
        async with self._pool.acquire() as proxy:
            conn = cast("asyncpg.Connection[asyncpg.Record]", proxy)
            nids = await conn.fetchval(SELECT_JOINED_NIDS, room_id)
            names = await self._user_names(conn, nids or [])
        # The server name of a user ID is everything after its first colon.
        return sorted(n for n in names.values() if n.partition(":")[2] == server_name)

    async def memberships_in(self, room_id: str, user_ids: Sequence[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        rows = await self._pool.fetch(SELECT_MEMBERSHIPS_IN, room_id, list(user_ids))
        return {r[0]: MEMBERSHIP_NAMES.get(r[1], "") for r in rows}

    async def memberships_of(self, user_id: str, room_ids: Sequence[str]) -> dict[str, str]:
        if not room_ids:
            return {}
        rows = await self._pool.fetch(SELECT_MEMBERSHIPS_OF, user_id, list(room_ids))
        return {r[0]: MEMBERSHIP_NAMES.get(r[1], "") for r in rows}

    # --- current state -------------------------------------------------------------------

    async def current_state(
        self, room_ids: Sequence[str], keys: Sequence[StateKey]
    ) -> dict[str, RoomState]:
        """One round trip when nothing changed since the last time these keys were asked:
        the rooms' rows come with what the entries picked then need, and for each room whose
        current snapshot is still the one they were picked from (snapshots are immutable),
        they are the answer. Other rooms are picked again from their snapshots' layers
        (cached), and the JSON of new entries read in a second round trip.

        An event's stored JSON changes once at most, when a redaction applies to it (and
        `redacted_by` is set in the same transaction), so entries are cached by event NID
        and only checked for that: the JSON itself crosses the wire once."""
        if not room_ids:
            return {}
        asked = tuple(keys)
        wanted = sorted(set(room_ids))
        guesses = {room: self._picked.peek((room, asked)) for room in wanted}
        guessed = {e for g in guesses.values() if g is not None for e in g[1].values()}
        found: dict[int, StateEntry] = {}
        unknown: list[int] = []
        check: list[int] = []
        for e in sorted(guessed):
            cached = self._entries.get(e)
            if cached is None:
                unknown.append(e)
            else:
                found[e] = cached[0]
                if not cached[1]:
                    check.append(e)
        async with self._pool.acquire() as proxy:
            conn = cast("asyncpg.Connection[asyncpg.Record]", proxy)
            tops: dict[str, int] = {}
            versions: dict[str, str] = {}
            for r in await conn.fetch(SELECT_ROOMS_AND_JSON, wanted, unknown, check):
                if r["version"] is not None:
                    tops[r["id"]] = r["nid"] or 0
                    versions[r["id"]] = r["version"]
                elif r["json"] is not None:
                    found[r["nid"]] = self._learn(r["nid"], r["id"], r["json"], r["redacted"])
            picked: dict[str, dict[StateKey, int]] = {}
            stale: dict[str, int] = {}
            for room, top in tops.items():
                guess = guesses.get(room)
                if guess is not None and guess[0] == top:
                    picked[room] = guess[1]
                else:
                    stale[room] = top
            if stale:
                fresh = await self._pick(conn, stale, keys)
                for room, top in stale.items():
                    picked[room] = fresh.get(room, {})
                    self._picked.put((room, asked), (top, picked[room]))
                missing = sorted(
                    {e for room in stale for e in picked[room].values() if e not in found}
                )
                if missing:
                    for r in await conn.fetch(SELECT_JSON_BY_NID, missing):
                        if r["json"] is not None:
                            found[r["event_nid"]] = self._learn(
                                r["event_nid"], r["event_id"], r["json"], r["redacted"]
                            )
        return {
            room: RoomState(
                versions[room],
                {k: found[e] for k, e in picked.get(room, {}).items() if e in found},
            )
            for room in tops
        }

    def _learn(self, nid: int, event_id: str, json: bytes, redacted: bool) -> StateEntry:
        entry = StateEntry(event_id, bytes(json))
        self._entries.put(nid, (entry, redacted))
        return entry

    async def _pick(
        self, conn: asyncpg.Connection, tops: Mapping[str, int], keys: Sequence[StateKey]
    ) -> dict[str, dict[StateKey, int]]:
        """Room -> (type, state_key) -> event NID of the wanted entries of each snapshot."""
        exact = [k for k in keys if k[1] != WILDCARD]
        nids = await select_nids(
            conn, self._nids, {t for t, _ in keys}, {s for _, s in exact}
        )
        exact_nids = {
            (nids.types[t], nids.keys[s]): (t, s)
            for t, s in exact
            if t in nids.types and s in nids.keys
        }
        wild_types = {nids.types[t] for t, s in keys if s == WILDCARD and t in nids.types}
        if not exact_nids and not wild_types:
            return {}
        chains = await self._chains(conn, [t for t in tops.values() if t])
        out: dict[str, dict[StateKey, int]] = {}
        wild: dict[str, sb.NidState] = {}
        for room, top in tops.items():
            chain = chains.get(top, ())
            got: dict[StateKey, int] = {}
            for nkey, key in exact_nids.items():
                ev = sb.value_at(chain, nkey)
                if ev:
                    got[key] = ev
            if wild_types:
                wild[room] = _of_types(chain, wild_types)
            out[room] = got
        if wild:
            key_nids = {s for st in wild.values() for _, s in st}
            types, skeys = await select_names(conn, self._nids, wild_types, key_nids)
            for room, st in wild.items():
                for (t, s), ev in st.items():
                    if t in types and s in skeys:
                        out[room][(types[t], skeys[s])] = ev
        return out

    async def _chains(self, conn: asyncpg.Connection, tops: Iterable[int]) -> dict[int, sb.Chain]:
        out: dict[int, sb.Chain] = {}
        missing: list[int] = []
        for top in set(tops):
            try:
                out[top] = sb.chain_via(top, self._layers.get)
            except KeyError:
                missing.append(top)
        if missing:
            known = self._roots.key_list()
            held = {n: layer for n in known if (layer := self._layers.peek(n)) is not None}
            loaded = await load_layers(conn, missing, held)
            for nid, layer in loaded.items():
                self._layers.put(nid, layer)
                if layer.is_root:
                    self._roots.put(nid, True)

            def get(nid: int) -> sb.Layer | None:
                return loaded.get(nid) or held.get(nid) or self._layers.peek(nid)

            for top in missing:
                out[top] = sb.chain_via(top, get)
        return out


def _of_types(chain: sb.Chain, types: set[int]) -> sb.NidState:
    """The entries of a snapshot whose type is one of `types`, without materialising the
    rest (a big room's member entries are most of its state)."""
    state: sb.NidState = {}
    for layer in chain:
        for k, v in layer.entries.items():
            if k[0] in types:
                if v:
                    state[k] = v
                else:
                    state.pop(k, None)
    return state
