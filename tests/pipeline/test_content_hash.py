"""Content hashes (DESIGN §1; spec, "Checks performed on receipt of a PDU", step 3).

An event whose `hashes.sha256` does not match its content is processed, stored and published
in its redacted form, and its reply says so (`content_hash_mismatch`); an event without a
content hash, or with one that is not a base64 string, is invalid. What counts as each is
what Synapse's `check_event_content_hash` decides, asked here for every case: it raises for
the events it refuses outright and answers False for those it redacts.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synapse.api.errors import SynapseError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import check_event_content_hash
from synapse.events import make_event_from_dict

from tests.e2e.conftest import Client, WorkerRun, client, event_id_of, worker
from tests.fixtures.builder import RoomBuilder
from tests.pipeline.conftest import Harness, started
from worker.core.hashes import check_content_hash, compute_event_id
from worker.core.outcomes import Outcome, Rejection
from worker.core.redaction import redact

__all__ = ["client", "worker"]  # the end-to-end fixtures, used by the last test

MISMATCH = "content_hash_mismatch"


def _synapse(pdu: dict[str, Any], version: str) -> str:
    """Synapse's verdict on the PDU's content hash: "ok", "redact" or "refuse"."""
    data = copy.deepcopy(pdu)
    data.pop("event_id", None)
    try:
        event = make_event_from_dict(data, KNOWN_ROOM_VERSIONS[version])
        return "ok" if check_event_content_hash(event) else "redact"
    except SynapseError:
        return "refuse"


def _edited(b: RoomBuilder, eid: str, **content: Any) -> None:
    """Change the content after the hash was computed, as a forger or a broken server would.
    The ID stays: from v3 it covers only the redacted event (whose content is gone)."""
    b.events[eid]["content"] = {**b.events[eid]["content"], **content}
    b.edit(eid)
    assert compute_event_id(b.events[eid], b.rules) == eid


def _hash_of(b: RoomBuilder, eid: str, value: Any) -> str:
    """Replace the event's `hashes`; returns its new ID (the reference hash covers them)."""
    pdu = b.events.pop(eid)
    if value is _ABSENT:
        pdu.pop("hashes")
    else:
        pdu["hashes"] = value
    new_id = compute_event_id(pdu, b.rules)
    pdu["event_id"] = new_id
    b.events[new_id] = pdu
    return new_id


_ABSENT = object()


async def _room(harness: Harness) -> RoomBuilder:
    b = started("10")
    for eid in list(b.events):
        assert (await harness.send(b, eid)).outcome is Outcome.ACCEPTED
    return b


async def test_edited_content_is_processed_redacted_and_said_so(harness: Harness) -> None:
    b = await _room(harness)
    msg = b.message("bob", "the original")
    _edited(b, msg, body="not what was hashed")
    assert _synapse(b.events[msg], "10") == "redact"
    assert check_content_hash(b.events[msg]) is False

    result = await harness.send(b, msg)

    assert (result.outcome, result.reason_code) == (Outcome.ACCEPTED, MISMATCH)
    assert "redacted form" in result.reason
    stored = harness.store.stored[msg]
    assert stored.event.content == {} and stored.reason_code == MISMATCH
    out = harness.outputs("new_room_event")[-1].new_room_event
    assert out is not None
    published = msgspec.json.decode(out.event)
    assert published["event_id"] == msg and published["content"] == {}
    # A redelivery answers the same, as a duplicate.
    again = await harness.send(b, msg)
    assert (again.duplicate, again.reason_code) == (True, MISMATCH)


async def test_a_redacted_state_event_enters_state_redacted(harness: Harness) -> None:
    b = await _room(harness)
    topic = b.topic("alice", "hashed topic")
    _edited(b, topic, topic="forged topic")

    result = await harness.send(b, topic)

    assert (result.outcome, result.reason_code) == (Outcome.ACCEPTED, MISMATCH)
    assert harness.state(b.room_id)[("m.room.topic", "")] == topic
    assert harness.store.stored[topic].event.content == {}


async def test_an_edited_event_the_rules_refuse_gets_their_reason(harness: Harness) -> None:
    b = await _room(harness)
    msg = b.message("mallory", "never joined")
    _edited(b, msg, body="edited")

    result = await harness.send(b, msg)

    assert (result.outcome, result.reason_code) == (Outcome.REJECTED, "not_in_room")
    assert harness.store.stored[msg].event.content == {}


# (case, the hashes field, what we do: "redact" or the invalid reason code)
CASES: list[tuple[str, Any, str]] = [
    ("empty hash", {"sha256": ""}, "redact"),
    ("a number", {"sha256": 5}, "malformed_content_hash"),
    ("another event's hash", "other", "redact"),
    ("not base64", {"sha256": "A"}, "malformed_content_hash"),
    ("not ASCII", {"sha256": "é"}, "malformed_content_hash"),
    ("no sha256", {"sha512": "AAAA"}, "missing_content_hash"),
    ("no hashes", _ABSENT, "missing_content_hash"),
]


@pytest.mark.parametrize(("case", "hashes", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_hash_cases_agree_with_synapse(
    harness: Harness, case: str, hashes: Any, expected: str
) -> None:
    b = await _room(harness)
    if hashes == "other":
        other = b.events[b.state[("m.room.join_rules", "")]]
        hashes = {"sha256": other["hashes"]["sha256"]}
    msg = b.message("bob", case)
    original = copy.deepcopy(b.events[msg])
    msg = _hash_of(b, msg, hashes)
    assert _synapse(b.events[msg], "10") == ("redact" if expected == "redact" else "refuse")

    result = await harness.send(b, msg)

    if expected == "redact":
        assert (result.outcome, result.reason_code) == (Outcome.ACCEPTED, MISMATCH)
        redacted = redact(b.events[msg], b.rules)
        redacted.pop("event_id")
        assert harness.store.stored[msg].event.pdu == redacted
    else:
        assert (result.outcome, result.reason_code) == (Outcome.INVALID, expected)
        assert result.reason and msg not in harness.store.stored
    # The event as built, before its hashes were spoilt, is fine by both.
    original.pop("event_id")
    assert check_content_hash(original) is True
    assert _synapse(original, "10") == "ok"


_BUILT = started("10")
_PDU = {k: v for k, v in _BUILT.events[_BUILT.message("bob", "x")].items() if k != "event_id"}


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet="ABCDEFGHabcdefgh0123456789+/-_=", max_size=60),
        st.sampled_from([_PDU["hashes"]["sha256"], _PDU["hashes"]["sha256"] + "="]),
    )
)
def test_what_counts_as_a_content_hash_is_what_synapse_decodes(digest: str) -> None:
    pdu = {**_PDU, "hashes": {"sha256": digest}}
    ours = check_content_hash(pdu)
    theirs = _synapse(pdu, "10")
    if isinstance(ours, Rejection):
        assert theirs == "refuse", (digest, ours)
    else:
        assert theirs == ("ok" if ours else "redact"), (digest, ours)


async def test_end_to_end_the_output_carries_the_redacted_event(
    worker: WorkerRun, client: Client
) -> None:
    b = RoomBuilder("10", real_ids=True)
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "public")
    b.join("bob")
    setup = list(b.events)
    msg = b.message("bob", "as hashed")
    _edited(b, msg, body="as forged", extra="field")
    for eid in setup:
        assert (await client.send(b, eid)).outcome == "accepted"

    reply = await client.send(b, msg)

    assert (reply.outcome, reply.reason_code) == ("accepted", MISMATCH)
    outs = await client.outputs(at_least=len(setup) + 1)
    mine = [o for o in outs if o.new_room_event is not None and event_id_of(o) == msg]
    assert len(mine) == 1
    assert mine[0].new_room_event is not None
    published = msgspec.json.decode(mine[0].new_room_event.event)
    assert published["content"] == {}
    assert published == {**redact(b.events[msg], b.rules), "event_id": msg}
