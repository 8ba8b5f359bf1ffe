"""The block/snapshot algebra over memory: packing, planning, compaction bounds."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core import stateblocks as sb

keys = st.tuples(st.integers(1, 40), st.integers(1, 3000))


@given(st.dictionaries(keys, st.integers(0, 2**40), max_size=300))
@settings(max_examples=60, deadline=None)
def test_pack_round_trip(entries: dict[sb.NidKey, int]) -> None:
    packed = sb.pack(entries)
    assert sb.unpack(packed) == entries
    # Same content, any insertion order: same bytes and same hash.
    shuffled = dict(sorted(entries.items(), key=lambda kv: hash(kv) % 97))
    assert sb.pack(shuffled) == packed
    assert sb.block_hash(1, packed) == sb.block_hash(1, sb.pack(shuffled))
    assert sb.block_hash(1, packed) != sb.block_hash(2, packed)


def test_narrow_and_wide_packing() -> None:
    assert sb.pack({(1, 1): 5})[0] == 4
    assert sb.pack({(1, 1): 2**33})[0] == 8
    assert len(sb.pack({(5, 70000): 123456})) == 1 + 12


def test_split_root_partitions_by_key() -> None:
    state = {(5, 65536 + i): 1000 + i for i in range(10_000)}
    blocks = sb.split_root(state)
    assert len(blocks) == sb.MAX_ROOT_BLOCKS
    merged: sb.NidState = {}
    for b in blocks:
        part = sb.unpack(b)
        assert not merged.keys() & part.keys()
        merged.update(part)
    assert merged == state
    # One changed entry changes exactly one bucket block.
    changed = dict(state)
    changed[(5, 65536 + 17)] = 1
    assert len(set(sb.split_root(changed)) - set(blocks)) == 1


class MemorySnapshots:
    """Stores plans like the SQL layer does, in a dict, to drive the algebra."""

    def __init__(self) -> None:
        self.rows: dict[int, sb.Layer] = {}

    def chain(self, nid: int) -> sb.Chain:
        return sb.chain_from_rows(nid, self.rows)

    def store(self, base: int, delta: sb.NidState) -> int:
        chain = self.chain(base)
        delta = {k: v for k, v in delta.items() if sb.value_at(chain, k) != v}
        if not delta:
            return base
        plan = sb.plan_snapshot(chain, delta)
        nid = len(self.rows) + 1
        if isinstance(plan, sb.NewRoot):
            if not plan.state:
                return 0
            n = len(sb.split_root(plan.state))
            self.rows[nid] = sb.Layer(nid, 0, sb.ROOT_RANK, plan.state, n)
        else:
            assert plan.parent in self.rows
            self.rows[nid] = sb.Layer(nid, plan.parent, plan.rank, plan.delta, 1)
        return nid


@given(st.integers(0, 2**32 - 1), st.integers(50, 1500))
@settings(max_examples=15, deadline=None)
def test_random_dag_of_snapshots_matches_reference(seed: int, steps: int) -> None:
    rnd = random.Random(seed)
    mem = MemorySnapshots()
    nodes: list[tuple[int, sb.NidState]] = [(0, {})]
    next_ev = 1
    for _ in range(steps):
        base, ref = nodes[rnd.randrange(len(nodes))] if rnd.random() < 0.2 else nodes[-1]
        delta: sb.NidState = {}
        for _ in range(rnd.choice([1, 1, 1, 2, 5, 40])):
            k = (rnd.randint(1, 6), rnd.randint(1, 400))
            if ref and rnd.random() < 0.05:
                k = rnd.choice(sorted(ref))
                delta[k] = 0
            else:
                delta[k] = next_ev
                next_ev += 1
        nid = mem.store(base, delta)
        want = dict(ref)
        sb.overlay(want, delta)
        chain = mem.chain(nid)
        assert sb.materialize(chain) == want
        assert sb.chain_blocks(chain) <= sb.MAX_BLOCKS
        nodes.append((nid, want))
    # Diffs through shared layers agree with full diffs.
    for _ in range(20):
        (a, ra), (b, rb) = rnd.choice(nodes), rnd.choice(nodes)
        touched = sb.touched_keys(mem.chain(a), {}, mem.chain(b), {})
        assert sb.diff_states(ra, rb) == sb.diff_states(ra, rb, touched)


def test_long_linear_room_stays_within_block_limit_and_cheap() -> None:
    mem = MemorySnapshots()
    nid = 0
    ev = 1
    written = 0
    for i in range(5000):
        nid2 = mem.store(nid, {(5, 65536 + i % 3000): ev})
        layer = mem.rows[nid2]
        written += len(layer.entries) if not layer.is_root else 0
        ev += 1
        nid = nid2
        assert sb.chain_blocks(mem.chain(nid)) <= sb.MAX_BLOCKS
    # Layer entries rewritten per change stay logarithmic, not linear in the state size.
    assert written / 5000 < 12
