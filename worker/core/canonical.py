"""Matrix canonical JSON: the one byte encoding that hashes and event IDs are computed over.

Spec: https://spec.matrix.org/latest/appendices/#canonical-json

Canonical JSON is JSON with object keys sorted by code point, no insignificant whitespace,
UTF-8 output and only the escapes JSON demands (`\\"`, `\\\\`, the short escapes `\\b \\f \\n
\\r \\t`, and `\\u00XX` in lower-case hex for the other control characters below U+0020).
Everything else, including U+007F, U+2028 and astral characters, is written as raw UTF-8.

`encode_canonical` is byte-identical to the `canonicaljson` PyPI package (what Synapse, the
reference implementation, hashes with); `tests/core/test_canonical.py` proves it with a
hypothesis property over arbitrary JSON values. Two decisions follow from that promise:

* **Floats.** The spec forbids floats from room version 6 on (`check_json_values(strict=True)`
  refuses them), but rooms 1 to 5 contain events with floats whose hashes were computed by
  Synapse, that is with Python's `repr` of the float (`1e+16`, `1e-07`). msgspec writes
  `1e16`, `1e-7`. So a value containing a float is encoded by the standard library encoder,
  configured exactly as `canonicaljson` does, and the bytes match. NaN and ±infinity have no
  JSON form and raise `ValueError`.
* **Lone surrogates** (a `str` holding U+D800..U+DFFF unpaired) cannot be written as UTF-8, so
  they raise `UnicodeEncodeError` (a `ValueError`), exactly like `canonicaljson`. Our JSON
  decoder refuses `"\\ud800"` escapes outright, so such strings only reach us through a
  Mapping built in Python.

Inputs are JSON values: dict with str keys, list or tuple, str, int, float, bool, None.
Other types are outside the contract.

`check_json_values` is the value-level validation of canonical JSON: strict mode (v6+) refuses
floats and integers beyond ±(2**53-1); every mode refuses nesting deeper than `MAX_NESTING`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

import msgspec

from worker.core.outcomes import Rejection
from worker.core.reasons import Reason

# The largest integer canonical JSON allows (v6+); also the bound on `depth` in every version.
MAX_SAFE_INT = 2**53 - 1

# Deepest nesting of objects and arrays we accept, counting the PDU object itself as 1.
# Real Matrix events nest a handful of levels (content -> m.relates_to -> ...). The limit
# exists so that no input can drive a recursive walk (ours, msgspec's, the json module's)
# into Python's recursion limit (1,000 frames): 100 leaves a wide margin for callers' own
# frames. It is also below serde_json's default of 128, so an event we accept can be parsed by
# ruma-based servers too, and far above anything a legitimate client produces.
MAX_NESTING = 100

# msgspec is the fast path: it sorts keys itself (`order="sorted"` sorts by UTF-8 bytes,
# which is code point order) and escapes exactly like the json module with ensure_ascii off.
_FAST = msgspec.json.Encoder(order="sorted")

# The exact configuration of `canonicaljson.encode_canonical_json`; used when msgspec's
# output could differ (floats) or msgspec refuses an input the json module accepts.
_SLOW = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
    sort_keys=True,
)

# A float in msgspec's output is a number token, right after `[`, `:` or `,`, that has a `.`
# or an exponent; a float at the very top level is caught by looking at the first byte. The
# same bytes can occur inside a string (a server name "1.2.3.4" after a colon): such a false
# positive only costs the slow path, never correctness. NaN and infinity come out of msgspec
# as `null`, so `null` also takes the slow path, which raises for them as canonicaljson does.
# (The pattern starts with a character class and no alternation so that `re` can scan for
# its first byte quickly: this test is most of the cost of the fast path.)
_MAYBE_FLOAT = re.compile(rb"[:,\[]-?\d+[.eE]")
_NUMBER_START = frozenset(b"-0123456789")


def encode_canonical(value: Any) -> bytes:
    """Encode a JSON value as Matrix canonical JSON (UTF-8 bytes).

    Raises `ValueError` for values with no canonical form (NaN, infinity, lone surrogates)
    and `TypeError` for non-JSON types.
    """
    try:
        out = _FAST.encode(value)
    except TypeError:
        # msgspec refuses non-str keys when sorting; the json module stringifies int keys,
        # and canonicaljson does what the json module does.
        return _SLOW.encode(value).encode("utf-8")
    if out[0] in _NUMBER_START or b"null" in out or _MAYBE_FLOAT.search(out) is not None:
        return _SLOW.encode(value).encode("utf-8")
    return out


def encode_canonical_float_free(value: Any) -> bytes:
    """`encode_canonical` of a value the caller knows holds no float: the hashed parts of a
    PDU that `check_json_values(strict=True)` accepted and `encode_canonical` could encode.

    Same bytes, without the scan for floats that is most of `encode_canonical`'s cost; the
    hashes of every v6+ event are computed this way, two per event received.
    """
    try:
        return _FAST.encode(value)
    except TypeError:
        return encode_canonical(value)


def check_json_values(
    value: Any, *, strict: bool, lenient_keys: Collection[str] = ()
) -> Rejection | None:
    """Check every value nested in `value` against the canonical JSON rules.

    https://spec.matrix.org/latest/appendices/#canonical-json ("integers ... in the range
    [-(2**53)+1, (2**53)-1]", "floats are not permitted") and the room version pages: the
    value rules are enforced from room version 6 (`strict`). Nesting is limited in every
    version (see `MAX_NESTING`). Returns the first problem found, or None; its sentence
    names the offending value by its path (`content.users['@a:b']`-style, `content.x[2]`).

    `lenient_keys` names top-level keys whose values are exempt from the strict value rules
    (but not from the nesting limit): `format` passes `unsigned`, which is neither signed
    nor hashed and which Synapse filters before it applies these rules.
    """
    # An explicit stack instead of recursion: the depth limit is what we are checking, so the
    # walk itself must not depend on Python's recursion limit. Each entry carries the path of
    # the container, built only for containers (leaves build theirs on error only), and
    # whether the strict rules apply below it.
    stack: list[tuple[Any, int, str, bool]] = [(value, 1, "", strict)]
    while stack:
        item, level, path, strict_here = stack.pop()
        if isinstance(item, dict):
            if level > MAX_NESTING:
                return _too_deep(path)
            for key, sub in item.items():
                if not isinstance(key, str):
                    return _reject(
                        Reason.WRONG_TYPE, f"the object key {key!r} at {_at(path)} is not a string"
                    )
                sub_strict = strict_here and not (level == 1 and key in lenient_keys)
                # The common leaves are decided inline: this walk runs on every event.
                if _plain(sub, sub_strict):
                    continue
                if isinstance(sub, dict | list | tuple):
                    stack.append((sub, level + 1, _child(path, key), sub_strict))
                    continue
                problem = _check_scalar(sub, sub_strict, path, key)
                if problem is not None:
                    return problem
        elif isinstance(item, list | tuple):
            if level > MAX_NESTING:
                return _too_deep(path)
            for index, sub in enumerate(item):
                if _plain(sub, strict_here):
                    continue
                if isinstance(sub, dict | list | tuple):
                    stack.append((sub, level + 1, f"{path}[{index}]", strict_here))
                    continue
                problem = _check_scalar(sub, strict_here, path, index)
                if problem is not None:
                    return problem
        else:
            problem = _check_scalar(item, strict_here, path, None)
            if problem is not None:
                return problem
    return None


def _plain(value: Any, strict: bool) -> bool:
    """True for the leaves that need no further thought: strings, booleans, null, and exact
    ints within range. Exact type tests (not isinstance) keep bool and int subclasses on
    the careful path of `_check_scalar`."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    return kind is int and (not strict or -MAX_SAFE_INT <= value <= MAX_SAFE_INT)


def _child(path: str, key: str) -> str:
    """The path of `key` inside the object at `path`: dotted when the key is a plain name."""
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _at(path: str) -> str:
    return f"'{path}'" if path else "the top level"


def _check_scalar(value: Any, strict: bool, path: str, key: str | int | None) -> Rejection | None:
    """One leaf: str, bool, None always pass; ints and floats depend on `strict`."""
    # bool is a subclass of int and is always fine; test it first.
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        # v6+: "integers outside the range [-(2**53)+1, (2**53)-1]" make the event invalid.
        if strict and not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return _reject(
                Reason.BAD_INTEGER,
                f"{_where(path, key)} is {value}, outside the canonical JSON range ±(2**53-1)",
            )
        return None
    if isinstance(value, float):
        # v6+: "floats are not permitted". v1-v5 keep them, but NaN/inf have no JSON form.
        if strict:
            return _reject(
                Reason.FLOAT_NOT_ALLOWED,
                f"{_where(path, key)} is the float {value!r}; room versions 6 and later "
                "forbid floats",
            )
        if value != value or value in (float("inf"), float("-inf")):
            return _reject(Reason.BAD_JSON, f"{_where(path, key)} is {value!r}, not a JSON number")
        return None
    return _reject(
        Reason.WRONG_TYPE,
        f"{_where(path, key)} has type {type(value).__name__}, not a JSON type",
    )


def _where(path: str, key: str | int | None) -> str:
    """'the value of 'content.n'' for a leaf, from its container's path and its key."""
    if isinstance(key, str):
        path = _child(path, key)
    elif isinstance(key, int):
        path = f"{path}[{key}]"
    return f"the value at '{path}'" if path else "the value"


def _reject(code: Reason, reason: str) -> Rejection:
    return Rejection(code.value, reason, "canonical-json")


def _too_deep(path: str) -> Rejection:
    # The path of a too-deep value is itself ~100 segments long: show its beginning only.
    if len(path) > 60:
        path = path[:60] + "..."
    return _reject(
        Reason.TOO_DEEP,
        f"objects and arrays are nested more than {MAX_NESTING} levels deep (at {_at(path)})",
    )
