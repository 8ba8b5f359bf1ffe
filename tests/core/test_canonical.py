"""Canonical JSON: byte-identical to the `canonicaljson` package, and the value rules."""

from __future__ import annotations

from typing import Any

import canonicaljson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.canonical import (
    MAX_NESTING,
    MAX_SAFE_INT,
    check_json_values,
    encode_canonical,
    encode_canonical_float_free,
)

# Strings that stress the escaping rules: every control character, the characters JSON
# escapes, DEL, the JavaScript line separators, BMP/astral boundaries and non-characters.
_TRICKY = st.sampled_from(
    [chr(c) for c in range(0x20)]
    + ['"', "\\", "/", "\x7f", "\u2028", "\u2029", "\ufeff", "\uffff", "\U0001f600", "\U0010ffff"]
    + ["é", "\u00a0", ":", "1.5", "null", "e", "[1.0]"]
)
_TEXT = st.one_of(
    st.text(max_size=12),
    st.lists(_TRICKY, max_size=6).map("".join),
)
_INTS = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, MAX_SAFE_INT, -MAX_SAFE_INT, 2**63, -(2**63), 2**64, 10**40]),
)
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _TEXT)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def _json(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(_TEXT, children, max_size=4),
        ),
        max_leaves=20,
    )


@settings(max_examples=400, deadline=None)
@given(_json(_SCALARS))
def test_matches_canonicaljson_without_floats(value: Any) -> None:
    assert encode_canonical(value) == canonicaljson.encode_canonical_json(value)


@settings(max_examples=400, deadline=None)
@given(_json(_SCALARS))
def test_float_free_matches_canonicaljson_on_strict_values(value: Any) -> None:
    # The hashes of a v6+ PDU encode it without the float scan once the strict rules held.
    if check_json_values(value, strict=True) is None:
        assert encode_canonical_float_free(value) == canonicaljson.encode_canonical_json(value)


@settings(max_examples=200, deadline=None)
@given(_json(st.one_of(_SCALARS, _FLOATS)))
def test_matches_canonicaljson_with_floats(value: Any) -> None:
    # Floats exist in room versions 1-5; their hashes were computed with Python's repr.
    assert encode_canonical(value) == canonicaljson.encode_canonical_json(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Keys sorted by code point: U+FFFF sorts before U+1F600 (UTF-16 order would not).
        ({"\U0001f600": 1, "\uffff": 2, "b": 3, "a": 4}, '{"a":4,"b":3,"\uffff":2,"\U0001f600":1}'),
        ("\x00\x1f\x7f\u2028", '"\\u0000\\u001f\x7f\u2028"'),
        ('\b\f\n\r\t"\\/', '"\\b\\f\\n\\r\\t\\"\\\\/"'),
        ({"a": [1, {"c": None, "b": True}]}, '{"a":[1,{"b":true,"c":null}]}'),
        (10**30, "1000000000000000000000000000000"),
        (1e16, "1e+16"),
        (1e-07, "1e-07"),
        (-0.0, "-0.0"),
        # A string that looks like a float after a colon takes the slow path, same bytes.
        ({"a": "x:1.5"}, '{"a":"x:1.5"}'),
        ((1, 2), "[1,2]"),
        ({1: "int key"}, '{"1":"int key"}'),
    ],
)
def test_known_encodings(value: Any, expected: str) -> None:
    assert encode_canonical(value) == expected.encode("utf-8")
    assert encode_canonical(value) == canonicaljson.encode_canonical_json(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": [float("-inf")]}])
def test_non_finite_floats_raise(value: Any) -> None:
    with pytest.raises(ValueError):
        encode_canonical(value)
    with pytest.raises(ValueError):
        canonicaljson.encode_canonical_json(value)


@pytest.mark.parametrize("value", ["\ud800", {"k": "a\udfffb"}, {"\udc00": 1}])
def test_lone_surrogates_raise_like_canonicaljson(value: Any) -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_canonical(value)
    with pytest.raises(UnicodeEncodeError):
        canonicaljson.encode_canonical_json(value)


def test_paired_surrogate_escapes_are_the_astral_character() -> None:
    # JSON input "\ud83d\ude00" decodes to one code point and encodes as raw UTF-8.
    assert encode_canonical("\U0001f600") == '"\U0001f600"'.encode()


# --- check_json_values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [MAX_SAFE_INT, -MAX_SAFE_INT, 0, True, None, "x", {"a": [1, {"b": False}]}],
)
def test_strict_accepts(value: Any) -> None:
    assert check_json_values(value, strict=True) is None


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (MAX_SAFE_INT + 1, "bad_integer"),
        (-MAX_SAFE_INT - 1, "bad_integer"),
        ({"a": {"b": [2**64]}}, "bad_integer"),
        (1.0, "float_not_allowed"),
        ({"a": [0.5]}, "float_not_allowed"),
        ({"pl": {"users": {"@a:b": 1e2}}}, "float_not_allowed"),
    ],
)
def test_strict_rejects(value: Any, code: str) -> None:
    problem = check_json_values(value, strict=True)
    assert problem is not None and problem.code == code
    # Before v6 the same values are fine.
    assert check_json_values(value, strict=False) is None


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"content": {"weight": 2.5}}, "'content.weight'"),
        ({"content": {"users": {"@a:b": 1.0}}}, "'content.users['@a:b']'"),
        ({"content": {"x": [0, [1, 0.5]]}}, "'content.x[1][1]'"),
        ([[2**60]], "'[0][0]'"),
    ],
)
def test_rejection_names_the_value(value: Any, path: str) -> None:
    problem = check_json_values(value, strict=True)
    assert problem is not None and path in problem.reason


def test_lenient_keys_are_top_level_only() -> None:
    value = {"unsigned": {"f": 1.5}, "content": {"unsigned": {"f": 1.5}}}
    problem = check_json_values(value, strict=True, lenient_keys={"unsigned"})
    assert problem is not None and "content.unsigned.f" in problem.reason
    assert check_json_values({"unsigned": [2**60]}, strict=True, lenient_keys={"unsigned"}) is None


def _nest(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"k": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("strict", [True, False])
def test_nesting_limit(strict: bool) -> None:
    assert check_json_values(_nest(MAX_NESTING), strict=strict) is None
    problem = check_json_values(_nest(MAX_NESTING + 1), strict=strict)
    assert problem is not None and problem.code == "too_deep"


def test_absurd_nesting_does_not_recurse() -> None:
    # Far beyond Python's recursion limit: the walk is iterative.
    problem = check_json_values(_nest(50_000), strict=False)
    assert problem is not None and problem.code == "too_deep"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({1: "x"}, "wrong_type"),
        ({"a": b"bytes"}, "wrong_type"),
        ({"a": {1, 2}}, "wrong_type"),
        ({"a": float("nan")}, "bad_json"),
        ([float("inf")], "bad_json"),
    ],
)
def test_non_json_values(value: Any, code: str) -> None:
    problem = check_json_values(value, strict=False)
    assert problem is not None and problem.code == code
