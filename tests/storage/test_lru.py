"""`worker.storage.lru.Lru`: a model-based property test (no database)."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st

from worker.storage.lru import Lru

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["get", "peek", "put", "put_many", "pop"]),
        st.integers(0, 12),
        st.lists(st.integers(0, 12), max_size=5),
    ),
    max_size=60,
)


class _Model:
    """The plainest LRU there is: recency order in an OrderedDict, a weight per value."""

    def __init__(self, capacity: int, weight: object) -> None:
        self.data: OrderedDict[int, int] = OrderedDict()
        self.capacity = capacity
        self.weight = weight if callable(weight) else (lambda _: 1)

    def touch(self, key: int, value: int) -> None:
        self.data.pop(key, None)
        self.data[key] = value

    def trim(self) -> None:
        while sum(map(self.weight, self.data.values())) > self.capacity and len(self.data) > 1:
            self.data.popitem(last=False)


@given(ops=_OPS, capacity=st.integers(0, 10), weighted=st.booleans())
def test_lru_matches_the_model(
    ops: list[tuple[str, int, list[int]]], capacity: int, weighted: bool
) -> None:
    weight = (lambda v: v % 3 + 1) if weighted else None
    lru: Lru[int, int] = Lru(capacity, weight)
    model = _Model(capacity, weight)
    for op, key, many in ops:
        if op == "get":
            got = lru.get(key)
            assert got == model.data.get(key)
            if got is not None:
                model.data.move_to_end(key)
        elif op == "peek":
            assert lru.peek(key) == model.data.get(key)
        elif op == "put":
            lru.put(key, key * 7)
            model.touch(key, key * 7)
            model.trim()
        elif op == "put_many":
            items = {k: k * 5 for k in many}
            lru.put_many(items)
            for k, v in items.items():
                model.touch(k, v)
            model.trim()
        else:
            lru.pop(key)
            model.data.pop(key, None)
        assert lru.key_list() == list(model.data)
        assert len(lru) == len(model.data)
