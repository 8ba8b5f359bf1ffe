"""A small weighted LRU for the store's in-process caches.

Everything cached by the store is either immutable once committed (NIDs, snapshot layers,
event ID <-> NID) or invalidated by the one writer that changes it (a room's current state and
extremities, an event's stored JSON after redaction).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Least-recently-used map bounded by the total weight of its values (by default each
    value weighs 1: the bound is on the number of entries)."""

    def __init__(self, capacity: int, weight: Callable[[V], int] | None = None) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._capacity = capacity
        # None: every value weighs 1, and `_total` is `len(_data)` (no call per entry; the
        # event and ID caches take several puts per event).
        self._weight = weight
        self._total = 0

    def get(self, key: K) -> V | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    def peek(self, key: K) -> V | None:
        return self._data.get(key)

    def key_list(self) -> list[K]:
        return list(self._data.keys())

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: K, value: V) -> None:
        data = self._data
        weight = self._weight
        if weight is None:
            data[key] = value
            data.move_to_end(key)
            if len(data) > self._capacity and len(data) > 1:
                data.popitem(last=False)
            return
        old = data.pop(key, None)
        if old is not None:
            self._total -= weight(old)
        data[key] = value
        self._total += weight(value)
        self._trim()

    def put_many(self, items: dict[K, V]) -> None:
        """`put` for many entries at once (a whole state's worth), trimming once."""
        data = self._data
        weight = self._weight
        if weight is None:
            for k in items.keys() & data.keys():
                del data[k]
            data.update(items)
            while len(data) > self._capacity and len(data) > 1:
                data.popitem(last=False)
            return
        for k in items.keys() & data.keys():
            self._total -= weight(data.pop(k))
        data.update(items)
        self._total += sum(map(weight, items.values()))
        self._trim()

    def _trim(self) -> None:
        assert self._weight is not None
        while self._total > self._capacity and len(self._data) > 1:
            _, dropped = self._data.popitem(last=False)
            self._total -= self._weight(dropped)

    def pop(self, key: K) -> None:
        old = self._data.pop(key, None)
        if old is not None and self._weight is not None:
            self._total -= self._weight(old)

    def clear(self) -> None:
        self._data.clear()
        self._total = 0
