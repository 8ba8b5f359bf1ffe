"""Server ACLs (worker.core.acl): the spec's examples, the edge cases Synapse settles, and a
differential property test against Synapse's own evaluator (installed as a dev dependency)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.acl import ServerAcl, glob_pattern, host_of, is_ip_literal, server_allowed

try:
    from synapse.synapse_rust.acl import ServerAclEvaluator
except ImportError:  # pragma: no cover - synapse is a dev dependency
    ServerAclEvaluator = None


def allowed(content: dict[str, Any], server: str) -> bool:
    return ServerAcl.from_content(content).allows(server)


@pytest.mark.parametrize(
    ("glob", "name", "match"),
    [
        ("*", "", True),
        ("*", "anything.example", True),
        ("example.org", "example.org", True),
        ("example.org", "EXAMPLE.org", True),
        ("EXAMPLE.ORG", "example.org", True),
        ("example.org", "sub.example.org", False),
        ("example.org", "example.org.evil", False),
        ("*.example.org", "example.org", False),
        ("*.example.org", "a.b.example.org", True),
        ("*example.org", "example.org", True),
        ("?.example.org", "a.example.org", True),
        ("?.example.org", "ab.example.org", False),
        ("?.example.org", ".example.org", False),
        ("??*", "a", False),
        ("??*", "ab", True),
        ("?*?*", "abcdef", True),
        # `.` is literal: no regex leaks through.
        ("example.org", "exampleXorg", False),
        ("a+b", "aab", False),
        ("a+b", "a+b", True),
        ("[a]", "a", False),
        ("[a]", "[A]", True),
        ("(x|y)", "x", False),
        ("\\d", "1", False),
        ("*", "line\nbreak", False),
    ],
)
def test_globs(glob: str, name: str, match: bool) -> None:
    assert bool(glob_pattern(glob).match(name)) is match


@pytest.mark.parametrize(
    ("name", "host"),
    [
        ("example.org", "example.org"),
        ("example.org:8448", "example.org"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]", "[::1]"),
        ("[::1]:8448", "[::1]"),
        ("[2001:db8::1]:1", "[2001:db8::1]"),
    ],
)
def test_ports_are_stripped(name: str, host: str) -> None:
    assert host_of(name) == host


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("1.2.3.4", True),
        ("255.255.255.255", True),
        ("[::1]", True),
        ("[not even an address]", True),
        ("1.2.3", False),
        ("01.2.3.4", False),
        ("256.1.1.1", False),
        ("1.2.3.4.example", False),
        ("::1", False),
        ("example.org", False),
    ],
)
def test_ip_literals(host: str, literal: bool) -> None:
    assert is_ip_literal(host) is literal


def test_the_specs_example() -> None:
    content = {"allow": ["*"], "deny": ["*.evil.com", "evil.com"], "allow_ip_literals": False}
    assert allowed(content, "good.org")
    assert allowed(content, "good.org:8448")
    assert not allowed(content, "evil.com")
    assert not allowed(content, "EVIL.com:443")
    assert not allowed(content, "a.evil.com")
    assert allowed(content, "notevil.com")
    assert not allowed(content, "1.2.3.4")
    assert not allowed(content, "1.2.3.4:8448")
    assert not allowed(content, "[::1]:8448")


def test_ip_literals_allowed_by_default() -> None:
    assert allowed({"allow": ["*"]}, "1.2.3.4")
    assert allowed({"allow": ["*"]}, "[::1]")
    # A deny glob still applies to a literal that is allowed as such.
    assert not allowed({"allow": ["*"], "deny": ["1.2.3.*"]}, "1.2.3.4")


def test_deny_wins_over_allow() -> None:
    assert not allowed({"allow": ["example.org"], "deny": ["example.org"]}, "example.org")


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"allow": []},
        {"allow": "*"},
        {"allow": {"*": True}},
        {"allow": [1, None, ["*"], {"*": 1}]},
        {"deny": ["*"], "allow": ["*"]},
    ],
)
def test_nothing_allowed(content: dict[str, Any]) -> None:
    assert not allowed(content, "example.org")


@pytest.mark.parametrize(
    "content",
    [
        {"allow": ["*"], "deny": "example.org"},
        {"allow": ["*"], "deny": [1, None, {"x": "example.org"}]},
        {"allow": [3, "*"], "deny": None},
        {"allow": ["*"], "allow_ip_literals": "false"},
    ],
)
def test_bad_entries_are_skipped(content: dict[str, Any]) -> None:
    assert allowed(content, "example.org")
    if "allow_ip_literals" in content:
        # A non-boolean flag counts as true.
        assert allowed(content, "1.2.3.4")


def test_no_acl_allows_everyone() -> None:
    assert server_allowed(None, "anything")
    assert not server_allowed({"allow": []}, "anything")


# --- differential: Synapse's own evaluator --------------------------------------------------

_ALPHABET = st.sampled_from([*"abAB.-:*?[]019", "é", "É", "ß", "\n", "+", "\\"])
_NAMES = st.one_of(
    st.text(_ALPHABET, max_size=12),
    st.sampled_from(
        ["1.2.3.4", "01.2.3.4", "1.2.3", "[::1]", "[::1]:8448", "a.b:80", "A.B", "ab.ab.ab"]
    ),
)
_GLOBS = st.lists(st.one_of(st.text(_ALPHABET, max_size=8), st.integers(), st.none()), max_size=4)
_FLAG = st.one_of(st.booleans(), st.none(), st.just("false"), st.just(0))


def _synapse_allows(content: dict[str, Any], server: str) -> bool:
    """Synapse's receive path: the content as `server_acl_evaluator_from_event` reads it,
    the name as `parse_server_name` splits it, then the Rust evaluator."""
    flag = content.get("allow_ip_literals", True)
    flag = flag if isinstance(flag, bool) else True
    lists = {}
    for key in ("allow", "deny"):
        value = content.get(key, [])
        lists[key] = [s for s in value if isinstance(s, str)] if isinstance(value, list) else []
    evaluator = ServerAclEvaluator(flag, lists["allow"], lists["deny"])
    host = server if server.endswith("]") else server.rsplit(":", 1)[0]
    return bool(evaluator.server_matches_acl_event(host))


@pytest.mark.skipif(ServerAclEvaluator is None, reason="synapse is not installed")
@settings(max_examples=600, deadline=None)
@given(allow=_GLOBS, deny=_GLOBS, flag=_FLAG, server=_NAMES)
def test_same_answers_as_synapse(allow: list[Any], deny: list[Any], flag: Any, server: str) -> None:
    content: dict[str, Any] = {"allow": allow, "deny": deny}
    if flag is not None:
        content["allow_ip_literals"] = flag
    assert allowed(content, server) is _synapse_allows(content, server)


@pytest.mark.skipif(ServerAclEvaluator is None, reason="synapse is not installed")
@settings(max_examples=300, deadline=None)
@given(glob=st.text(_ALPHABET, max_size=8), server=_NAMES)
def test_one_glob_like_synapse(glob: str, server: str) -> None:
    content = {"allow": [glob]}
    assert allowed(content, server) is _synapse_allows(content, server)
