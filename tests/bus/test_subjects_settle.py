"""Pure parts of the bus: room tokens, names, and the message-fate table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.bus import settle
from worker.bus.subjects import SubjectError, Subjects, room_id_from_token, room_token
from worker.core.outcomes import Outcome
from worker.errors import InvariantViolation, MissingEventsError, PermanentError, RetryableError
from worker.messages.reply import HandleResult


@settings(max_examples=200)
@given(st.text(min_size=1))
def test_room_token_is_lossless_and_subject_safe(room_id: str) -> None:
    try:
        room_id.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates are not room IDs
        return
    token = room_token(room_id)
    assert token and all(c.isascii() and (c.isalnum() or c in "-_") for c in token)
    assert room_id_from_token(token) == room_id


@pytest.mark.parametrize("token", ["", "a", "a.b", "a*", "IQ=", "IR", "_w"])
def test_bad_room_tokens_are_refused(token: str) -> None:
    with pytest.raises(SubjectError) as info:
        room_id_from_token(token)
    assert info.value.code == "bad_room_token"


def test_names_from_prefix() -> None:
    s = Subjects("roomserver")
    assert (s.input_stream, s.output_stream, s.deadletter_stream) == (
        "ROOMSERVER_INPUT",
        "ROOMSERVER_OUTPUT",
        "ROOMSERVER_DEADLETTER",
    )
    assert s.input("!a:b") == "roomserver.input.IWE6Yg"
    assert s.output("!a:b") == "roomserver.output.IWE6Yg"
    assert s.deadletter == "roomserver.deadletter"
    assert s.input_shard_transform(8) == "roomserver.input.{{partition(8,1)}}.{{wildcard(1)}}"
    assert s.parse_stored_input("roomserver.input.3.IWE6Yg") == (3, "IWE6Yg")
    assert s.parse_stored_input("roomserver.input.IWE6Yg") == (None, "IWE6Yg")
    for bad in ("roomserver.output.x", "roomserver.input.a.b", "roomserver.input.1.a.b"):
        with pytest.raises(SubjectError):
            s.parse_stored_input(bad)
    for prefix in ("", "a.b", "a b", "a>"):
        with pytest.raises(SubjectError):
            Subjects(prefix)


POLICY = settle.RetryPolicy(max_deliveries=3, base_delay=1.0, max_delay=3.0)


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.INVALID])
def test_final_outcomes_are_acked_and_replied(outcome: Outcome) -> None:
    fate = settle.of_result(HandleResult(event_id="$e", outcome=outcome))
    assert fate.action is settle.AckAction.ACK and not fate.dead_letter
    assert fate.reply is not None and fate.reply.outcome == outcome.value


def test_invalid_is_acked_and_copied_to_dead_letters() -> None:
    fate = settle.of_result(
        HandleResult(event_id="$e", outcome=Outcome.INVALID, reason_code="bad_hash", reason="x")
    )
    assert fate.action is settle.AckAction.ACK and fate.dead_letter
    assert fate.reason_code == "bad_hash"


def test_retryable_errors_retry_here_with_back_off_until_the_limit() -> None:
    err = RetryableError("db down")
    delays = [settle.of_error(err, event_id="$e", delivery=n, policy=POLICY) for n in (1, 2)]
    assert [f.action for f in delays] == [settle.AckAction.RETRY_HERE] * 2
    assert [f.delay for f in delays] == [1.0, 2.0]
    assert all(f.reply is None and not f.dead_letter for f in delays)
    assert settle.of_error(
        RetryableError("x", delay=9.0), event_id="$e", delivery=1, policy=POLICY
    ).delay == 3.0  # capped
    missing = settle.of_error(MissingEventsError("gap", ["$p"], delay=0.5), event_id="$e", delivery=1, policy=POLICY)
    assert missing.action is settle.AckAction.RETRY_HERE and missing.delay == 0.5
    last = settle.of_error(err, event_id="$e", delivery=3, policy=POLICY)
    assert last.situation is settle.Situation.RETRIES_EXHAUSTED
    assert last.action is settle.AckAction.TERM and last.dead_letter
    assert last.reply is not None and last.reply.outcome == "failed"
    assert "3 deliveries" in last.reason


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (PermanentError("no"), "permanent_failure"),
        (InvariantViolation("broken"), "invariant_violation"),
        (KeyError("bug"), "invariant_violation"),
    ],
)
def test_permanent_errors_and_bugs_are_terminated(exc: Exception, code: str) -> None:
    fate = settle.of_error(exc, event_id="$e", delivery=1, policy=POLICY)
    assert fate.action is settle.AckAction.TERM and fate.dead_letter
    assert fate.reason_code == code


def test_undecodable_delivery_limit_and_shutdown() -> None:
    bad = settle.of_undecodable(event_id="", reason_code="undecodable", reason="not JSON")
    assert bad.action is settle.AckAction.TERM and bad.dead_letter
    assert bad.reply is not None and bad.reply.outcome == "invalid"
    limit = settle.of_delivery_limit(event_id="$e", delivery=4, policy=POLICY)
    assert limit.action is settle.AckAction.TERM and limit.reason_code == "delivery_limit"
    stop = settle.of_shutdown()
    assert stop.action is settle.AckAction.NAK and stop.reply is None and not stop.dead_letter


def test_a_dead_letter_that_could_not_be_written_is_nakked_with_back_off() -> None:
    fate = settle.of_deadletter_failure(delivery=2, policy=POLICY)
    assert fate.action is settle.AckAction.NAK and fate.delay == 2.0
    assert fate.reply is None and not fate.dead_letter


def test_every_situation_has_a_row() -> None:
    assert set(settle.FATE_TABLE) == set(settle.Situation)


def test_the_docstring_table_is_the_fate_table() -> None:
    """The table a reader sees is the one the code uses: one docstring row per situation,
    with its action, dead letter and reply columns as `FATE_TABLE` says."""
    doc = settle.__doc__ or ""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in doc.splitlines()
        if line.startswith("|") and "---" not in line and "Situation" not in line
    ]
    rows = [r for r in rows if len(r) == 4]
    assert len(rows) == len(settle.FATE_TABLE)
    words = {settle.AckAction.RETRY_HERE: "retry here"}
    for (action, dead_letter, replies), row in zip(
        settle.FATE_TABLE.values(), rows, strict=True
    ):
        assert row[1].startswith(words.get(action, action.value)), row
        assert (row[2] != "no") == dead_letter, row
        assert (not row[3].startswith("none")) == replies, row
