"""The store's in-process caches, and what a committed write teaches them.

NIDs, snapshot layers and event ID <-> NID mappings are immutable once committed; a room's
row (current snapshot, extremities) and the state after the events this process wrote are
refreshed by the store's one writer (`StoreCaches.learn`, with the `WriteEffects` of a
committed transaction). `forget_room` drops what may have been written elsewhere meanwhile,
when a room's ownership moves to this process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from worker.core import stateblocks as sb
from worker.core.events import Event, StateKey
from worker.storage import nids as nid_sql
from worker.storage import rooms as room_sql
from worker.storage import snapshots as snap_sql
from worker.storage.handles import PgState
from worker.storage.lru import Lru

# Materialized states kept for `handle_from_map` and repeated `materialize` calls.
_RECENT_MATERIALIZED = 8

# (base snapshot, NID delta): the key of a snapshot derived from another.
DerivedKey = tuple[int, frozenset[tuple[sb.NidKey, int]]]


@dataclass
class WriteEffects:
    """What a write transaction made, for the caches to learn once it commits (and for
    the transaction's later writes to build on meanwhile)."""

    nids: nid_sql.Nids = field(default_factory=nid_sql.Nids)
    layers: dict[int, sb.Layer] = field(default_factory=dict)
    id_nids: dict[str, int] = field(default_factory=dict)
    room: room_sql.RoomRow | None = None
    stale_events: set[str] = field(default_factory=set)
    derived: dict[DerivedKey, int] = field(default_factory=dict)
    after: dict[str, PgState] = field(default_factory=dict)
    # Handles stored as snapshots by this transaction, newest last (`rebase_on_stored`).
    stored: list[tuple[PgState, int]] = field(default_factory=list)
    # Events this transaction inserted (not upserted): stored exactly as given.
    inserted: dict[str, Event] = field(default_factory=dict)
    # Events whose stored JSON this transaction redacted.
    redacted: set[str] = field(default_factory=set)
    # A group commit writes its new state layers together at the end, under snapshot NIDs
    # reserved up front: the NIDs left, and the rows held. None: each snapshot is written
    # when planned.
    layer_nids: list[int] = field(default_factory=list)
    held_layers: list[snap_sql.LayerRow] | None = None


class StoreCaches:
    """Every cache of one `PostgresStore`, shared by its reads and its writes."""

    def __init__(
        self, *, layer_cache_entries: int, event_cache_size: int, id_cache_size: int
    ) -> None:
        self.nids = nid_sql.NidCache()
        self.layers: Lru[int, sb.Layer] = Lru(
            layer_cache_entries, lambda layer: len(layer.entries) + 1
        )
        # Root layers cached: a chain walk may stop at any of them.
        self.roots: Lru[int, bool] = Lru(1024)
        self.rooms: dict[str, room_sql.RoomRow] = {}
        self.events: Lru[str, Event] = Lru(event_cache_size)
        self.nid_ids: Lru[int, str] = Lru(id_cache_size)
        self.id_nids: Lru[str, int] = Lru(id_cache_size)
        # (base snapshot, NID delta) -> the snapshot already stored for it: the state after an
        # event is written as the room's current state, then read back as the next event's
        # state before; this skips the second (deduplicated) insert.
        self.derived: Lru[DerivedKey, int] = Lru(4096)
        self.recent: deque[tuple[PgState, dict[StateKey, str]]] = deque(
            maxlen=_RECENT_MATERIALIZED
        )
        # The state after events this process wrote (with state), for `state_after`: the
        # next event's prev is nearly always the event written just before, which would
        # otherwise be read back right after it was written.
        self.after: Lru[str, PgState] = Lru(event_cache_size)

    def put_layers(self, layers: Mapping[int, sb.Layer]) -> None:
        for nid, layer in layers.items():
            self.layers.put(nid, layer)
            if layer.is_root:
                self.roots.put(nid, True)

    def getter(self, pending: Mapping[int, sb.Layer]) -> Callable[[int], sb.Layer | None]:
        """Layers of a transaction not yet committed, then the cache (read without
        reordering)."""
        cache = self.layers

        def get(nid: int) -> sb.Layer | None:
            layer = pending.get(nid)
            return layer if layer is not None else cache.peek(nid)

        return get

    def learn(self, fx: WriteEffects) -> None:
        """What a committed write transaction made."""
        self.nids.learn(fx.nids)
        self.put_layers(fx.layers)
        for eid, nid in fx.id_nids.items():
            self.nid_ids.put(nid, eid)
            self.id_nids.put(eid, nid)
        for dkey, nid in fx.derived.items():
            self.derived.put(dkey, nid)
        for eid in fx.stale_events:
            self.events.pop(eid)
        for eid, event in fx.inserted.items():
            # The next events' auth lookups name these (a sender's join, a new power level).
            if eid not in fx.redacted:
                self.events.put(eid, event)
        for eid, after in fx.after.items():
            self.after.put(eid, after)
        if fx.room is not None:
            self.rooms[fx.room.room_id] = fx.room

    def forget_room(self, room_id: str) -> None:
        """Drop what is cached about a room's mutable rows (its current state, extremities)."""
        self.rooms.pop(room_id, None)
        # Another writer may have rewritten events of the room meanwhile; this is rare (a
        # lease change), so forgetting every room's entries keeps it simple.
        self.after.clear()


__all__ = ["DerivedKey", "StoreCaches", "WriteEffects"]
