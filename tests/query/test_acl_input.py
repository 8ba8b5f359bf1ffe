"""Server ACLs on input, through the pipeline over the in-memory store: which inputs are
checked (kind `new` from another server) and which are not (outliers, `old` events, inputs
without an origin or from this server), and that a refusal leaves nothing behind."""

from __future__ import annotations

import pytest

from tests.pipeline.conftest import Harness, started
from worker.pipeline import Pipeline

ACL = {"allow": ["*"], "deny": ["evil.test", "*.evil.test"], "allow_ip_literals": False}


@pytest.fixture
def local() -> Harness:
    h = Harness()
    # As worker.app wires it: the pipeline knows this server's name.
    h.pipeline = Pipeline(h.store, h.relay, server_name="evil.test")
    return h


async def test_denied_origins_are_refused_and_nothing_is_stored() -> None:
    h = Harness()
    b = started()
    b.state_event("m.room.server_acl", "", ACL, "alice")
    assert {r.outcome.value for r in await h.send_all(b)} == {"accepted"}
    for origin in ["evil.test", "EVIL.TEST:8448", "a.evil.test", "1.2.3.4", "[::1]:8448"]:
        before = list(b.latest)
        msg = b.message("bob", origin)
        result = await h.send(b, msg, origin=origin)
        assert (result.outcome.value, result.reason_code) == ("rejected", "server_acl_denied"), origin
        assert msg not in h.store.stored
        b.latest = before  # the next event builds on what was stored
    outputs = len(h.outputs())
    fine = b.message("bob", "fine")
    assert (await h.send(b, fine, origin="good.test:8448")).outcome.value == "accepted"
    assert len(h.outputs()) == outputs + 1


async def test_only_new_inputs_from_other_servers_are_checked(local: Harness) -> None:
    b = started()
    b.state_event("m.room.server_acl", "", {"allow": ["good.test"]}, "alice")
    assert {r.outcome.value for r in await local.send_all(b)} == {"accepted"}
    # This server is never checked against the ACL, nor is an input without origin.
    assert (await local.send(b, b.message("alice", "own"), origin="evil.test")).outcome.value == (
        "accepted"
    )
    assert (await local.send(b, b.message("alice", "none"))).outcome.value == "accepted"
    # An outlier is our own request's answer, not a push: not checked.
    outlier = b.message("bob", "fetched", apply=False)
    result = await local.send(b, outlier, kind="outlier", origin="other.test")
    assert result.outcome.value == "outlier"


async def test_the_check_follows_the_current_acl() -> None:
    h = Harness()
    b = started()
    assert {r.outcome.value for r in await h.send_all(b)} == {"accepted"}
    # No ACL: everyone.
    assert (await h.send(b, b.message("bob", "1"), origin="evil.test")).outcome.value == "accepted"
    acl = b.state_event("m.room.server_acl", "", ACL, "alice")
    assert (await h.send(b, acl)).outcome.value == "accepted"
    before = list(b.latest)
    denied = b.message("bob", "2")
    assert (await h.send(b, denied, origin="evil.test")).reason_code == "server_acl_denied"
    b.latest = before
    opened = b.state_event("m.room.server_acl", "", {"allow": ["*"]}, "alice")
    assert (await h.send(b, opened)).outcome.value == "accepted"
    assert (await h.send(b, b.message("bob", "3"), origin="evil.test")).outcome.value == "accepted"
