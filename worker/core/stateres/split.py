"""The first step of state resolution v2 and v2.1: splitting the state sets.

A key whose value is the same in every state set is *unconflicted*; every other key (one
that some state set lacks included) is *conflicted*, with the distinct values the sets give
it. Resolution reads every entry of every state set here and nowhere else, so this is the
part whose cost grows with the room's state rather than with the conflict:

- two state sets (the usual fork) are compared key by key, in C where their keys come in
  the same order (`_split_two`);
- many state sets (forward extremities merging at once) are copies of one state with a few
  keys changed or added: each is compared with the first one as lists of keys and values,
  a slice at a time (`_differing_positions`).

Both give exactly what the definition gives (`separate_v2` is the reference, and
`tests/core/test_stateres_internals.py` compares them on random sets, big ones included).

Spec: https://spec.matrix.org/latest/rooms/v2/#state-resolution ("Unconflicted state map
and conflicted state set").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress
from operator import ne

from worker.core.events import StateKey

# The slice lengths of the value comparison: whole chunks, then item by item in C.
_CHUNK = 256


def separate_v2(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], dict[StateKey, list[str]]]:
    """Split state sets into the unconflicted state map and the conflicted state set (v2+).

    A key absent from some set is conflicted (spec, v2 "Unconflicted state map"). Conflicted
    values come back as sorted lists of distinct event IDs; the conflicted keys come in the
    first set's key order, then the keys the other sets add, in the order met.
    """
    if not state_sets:
        return {}, {}
    first = state_sets[0]
    rest = state_sets[1:]
    if len(rest) > 1:
        split, keys = _split_many(first, rest)
        return split, {key: _values(state_sets, key) for key in keys}
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, list[str]] = {}
    for key, eid in first.items():
        for s in rest:
            if s.get(key) != eid:
                conflicted[key] = _values(state_sets, key)
                break
        else:
            unconflicted[key] = eid
    for s in rest:
        for key in s:
            if key not in first and key not in conflicted:
                conflicted[key] = _values(state_sets, key)
    return unconflicted, conflicted


def split_ordered(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], list[list[str]], list[StateKey]]:
    """The unconflicted state map, each state set's conflicted events in the set's own
    order (an empty list when nothing is conflicted), and the conflicted keys (the state
    sets' own key objects).

    The same split as `separate_v2`, without the per-key value lists that resolution does
    not need.
    """
    if len(state_sets) == 2:
        return _split_two(state_sets[0], state_sets[1])
    if len(state_sets) < 2:
        # (Nothing is conflicted in fewer than two sets.)
        return separate_v2(state_sets)[0], [], []
    unconflicted, keys = _split_many(state_sets[0], state_sets[1:])
    if not keys:
        return unconflicted, [], []
    return (
        unconflicted,
        [[eid for key in keys if (eid := s.get(key)) is not None] for s in state_sets],
        keys,
    )


def split_sets(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], list[set[str]]]:
    """`split_ordered` with each state set's conflicted events as a set."""
    unconflicted, ordered, _ = split_ordered(state_sets)
    return unconflicted, [set(x) for x in ordered]


def _split_two(
    first: Mapping[StateKey, str], second: Mapping[StateKey, str]
) -> tuple[dict[StateKey, str], list[list[str]], list[StateKey]]:
    """`split_ordered` for a two-way fork."""
    keys = list(first)
    if keys == list(second):
        # The same keys in the same order (one state copied, some values replaced): the
        # values are compared position by position, in C.
        mine_values = list(first.values())
        theirs_values = list(second.values())
        differ = list(map(ne, mine_values, theirs_values))
        unconflicted = dict(first)
        if not any(differ):
            return unconflicted, [], []
        conflicted_keys = list(compress(keys, differ))
        for key in conflicted_keys:
            del unconflicted[key]
        return (
            unconflicted,
            [list(compress(mine_values, differ)), list(compress(theirs_values, differ))],
            conflicted_keys,
        )
    mine: list[str] = []
    theirs: list[str] = []
    conflicted_keys = []
    second_get = second.get
    for key, eid in first.items():
        other = second_get(key)
        if other != eid:
            # A key missing from one set is conflicted too (spec v2 definitions).
            conflicted_keys.append(key)
            mine.append(eid)
            if other is not None:
                theirs.append(other)
    # A copy (in C) less the conflicted keys: in a big room nearly every key is shared.
    unconflicted = dict(first)
    for key in conflicted_keys:
        del unconflicted[key]
    # Keys only `second` has: there are some unless every key of `second` was met above.
    if len(unconflicted) + len(theirs) != len(second):
        for key, eid in second.items():
            if key not in first:
                conflicted_keys.append(key)
                theirs.append(eid)
    if not mine and not theirs:
        return unconflicted, [], []
    return unconflicted, [mine, theirs], conflicted_keys


def _split_many(
    first: Mapping[StateKey, str], rest: Sequence[Mapping[StateKey, str]]
) -> tuple[dict[StateKey, str], list[StateKey]]:
    """The unconflicted state map of `first` and the sets of `rest` (two or more), and the
    conflicted keys, in `separate_v2`'s order."""
    keys, positions, extra = _differing_positions(first, rest)
    differing = [keys[i] for i in sorted(positions)]
    split = dict(first)
    for key in differing:
        del split[key]
    differing += extra
    return split, differing


def _differing_positions(
    first: Mapping[StateKey, str], rest: Sequence[Mapping[StateKey, str]]
) -> tuple[list[StateKey], set[int], dict[StateKey, None]]:
    """The positions (in `first`'s key order) of the keys of `first` on which some set of
    `rest` differs from it, and the keys of `rest` that `first` lacks, in order met.

    Merging many forward extremities hands over state sets that are copies of one another
    with a few keys changed or added, so their keys mostly come in the same order, and they
    differ from one another on the same few keys. Each set is read into two lists (its keys
    and its values); over the longest run of keys that it shares with `first` from the
    start, in the same order (its *head*), its values are compared with a *probe*: `first`'s
    values with those at the positions found so far replaced by the set's own. Equal lists
    (compared in C, by identity for shared strings) mean the set differs from `first` only
    where some set did already, which is all this function reports; otherwise its values
    are compared a chunk at a time to find the new positions. The keys after the head are
    compared one by one. (`first`'s keys come back too, as a list.)
    """
    keys = list(first)
    values = list(first.values())
    n = len(keys)
    chunks = [values[lo : lo + _CHUNK] for lo in range(0, n, _CHUNK)]
    # `first`'s key lists and probes by head length (sets of other lengths have other heads).
    key_heads: dict[int, list[StateKey]] = {n: keys}
    probes: dict[int, list[str]] = {}
    found: set[int] = set()
    # `found`, sorted: the positions each probe takes from the set it is compared with.
    positions: list[int] = []
    extra: dict[StateKey, None] = {}
    guess = n
    for s in rest:
        theirs = list(s)
        shared = n
        tail: list[StateKey] = []
        if theirs != keys:
            shared = guess = _head_length(keys, theirs, guess, key_heads)
            tail = theirs[shared:]
        vals = list(s.values())
        if len(vals) != shared:
            del vals[shared:]
        probe = probes.get(shared)
        if probe is None:
            probe = probes[shared] = values[:shared]
        for i in positions:
            if i >= shared:
                break
            probe[i] = vals[i]
        if vals != probe:
            before = len(found)
            _compare(vals, chunks, shared, found)
            if len(found) != before:
                positions = sorted(found)
        if shared < n:
            get = s.get
            found.update(i for i in range(shared, n) if get(keys[i]) != values[i])
            positions = sorted(found)
        if tail:
            extra.update((key, None) for key in tail if key not in first)
    return keys, found, extra


def _head_length(
    a: list[StateKey], b: list[StateKey], guess: int, heads: dict[int, list[StateKey]]
) -> int:
    """The length of the longest common prefix of `a` and `b` (which differ), by list
    comparisons; `heads` keeps prefixes of `a` by length.

    `guess` (the answer for the previous set) is tried first: sets copied from one state
    usually share it. It is tried on `b` cut short in place (and mended if wrong), so that
    the usual case copies only what `b` holds after it.
    """
    good = min(len(a), len(b))
    if guess <= good and (guess == good or a[guess] != b[guess]):
        tail = b[guess:]
        del b[guess:]
        same = b == _head(a, guess, heads)
        b += tail
        if same:
            return guess
    if _head(a, good, heads) == b[:good]:
        return good
    # The first `lo` items agree, the first `hi` do not.
    lo, hi = 0, good
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _head(a: list[StateKey], length: int, heads: dict[int, list[StateKey]]) -> list[StateKey]:
    got = heads.get(length)
    if got is None:
        got = heads[length] = a[:length]
    return got


def _compare(vals: list[str], chunks: list[list[str]], end: int, found: set[int]) -> None:
    """Add to `found` the positions before `end` where `vals` and the values that `chunks`
    cut into pieces of `_CHUNK` differ."""
    for c, lo in enumerate(range(0, end, _CHUNK)):
        hi = min(lo + _CHUNK, end)
        theirs = vals[lo:hi]
        mine = chunks[c] if hi - lo == _CHUNK else chunks[c][: hi - lo]
        if theirs != mine:
            found.update(compress(range(lo, hi), map(ne, theirs, mine)))


def _values(state_sets: Sequence[Mapping[StateKey, str]], key: StateKey) -> list[str]:
    if len(state_sets) == 2:
        # The usual two-way fork: at most two values, ordered without building a set.
        a = state_sets[0].get(key)
        b = state_sets[1].get(key)
        if a is None or b is None or a == b:
            got = a if a is not None else b
            return [got] if got is not None else []
        return [a, b] if a < b else [b, a]
    return sorted({v for s in state_sets if (v := s.get(key)) is not None})
