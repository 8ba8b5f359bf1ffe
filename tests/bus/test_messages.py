"""Wire types: round trips, the output envelope's one-payload rule, schema evolution."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.outcomes import Outcome
from worker.messages import (
    DeadLetter,
    HandleResult,
    InputReply,
    InputRoomEvent,
    NewRoomEvent,
    OutputEvent,
    PurgeRoom,
    RedactedEvent,
    TransactionId,
    body_b64,
    decode_deadletter,
    decode_input,
    decode_output,
    decode_reply,
    encode_deadletter,
    encode_input,
    encode_output,
    encode_reply,
    wrap,
)

PDU = b'{"type":"m.room.message","room_id":"!r:x","content":{"body":"\\u00e9"}}'


def test_input_keeps_event_bytes_exactly() -> None:
    body = b'{"kind":"new","event":' + PDU + b',"origin":"x"}'
    msg = decode_input(body)
    assert bytes(msg.event) == PDU
    assert msg.room_version is None and msg.state_event_ids is None
    assert msg.send_as_server == "" and msg.transaction_id is None


def test_input_round_trip() -> None:
    msg = InputRoomEvent(
        kind="old",
        event=msgspec.Raw(PDU),
        room_version="10",
        origin="remote.example",
        state_event_ids=("$a", "$b"),
        send_as_server="local.example",
        transaction_id=TransactionId(session_id=7, id="txn1"),
    )
    again = decode_input(encode_input(msg))
    assert again.kind == "old"
    assert again.state_event_ids == ("$a", "$b")
    assert again.transaction_id == TransactionId(session_id=7, id="txn1")
    assert bytes(again.event) == PDU


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "malformed"),
        (b'{"kind":"sideways","event":{}}', "kind"),
        (b'{"event":{}}', "kind"),
        (b'{"kind":"new","event":{},"state_event_ids":"x"}', "state_event_ids"),
    ],
)
def test_input_errors_name_the_problem(body: bytes, fragment: str) -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        decode_input(body)
    assert fragment in str(info.value).lower()


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    msg = decode_input(b'{"kind":"outlier","event":{},"a_future_field":[1,2]}')
    assert msg.kind == "outlier"


def test_output_envelope_has_one_payload_named_like_its_type() -> None:
    out = wrap(NewRoomEvent(event=msgspec.Raw(PDU), latest_event_ids=("$e",)))
    raw = msgspec.json.decode(encode_output(out))
    assert set(raw) == {"type", "new_room_event"}
    assert raw["type"] == "new_room_event"
    assert raw["new_room_event"]["latest_event_ids"] == ["$e"]
    assert raw["new_room_event"]["history_visibility"] == "shared"
    back = decode_output(encode_output(out))
    assert isinstance(back.payload, NewRoomEvent)
    assert bytes(back.payload.event) == PDU


def test_output_envelope_rejects_a_mismatched_payload() -> None:
    with pytest.raises(ValueError, match="exactly that payload"):
        OutputEvent(type="purge_room")
    with pytest.raises(msgspec.ValidationError, match="exactly that payload"):
        decode_output(b'{"type":"purge_room","redacted_event":{"redacted_event_id":"$x","redacted_because":{}}}')


@settings(max_examples=50)
@given(room_id=st.text(min_size=1, max_size=40), event_id=st.text(max_size=40))
def test_output_round_trip(room_id: str, event_id: str) -> None:
    for payload in (
        PurgeRoom(room_id=room_id),
        RedactedEvent(redacted_event_id=event_id, redacted_because=msgspec.Raw(b"{}")),
    ):
        back = decode_output(encode_output(payload))
        assert back.type == wrap(payload).type
        assert encode_output(back) == encode_output(payload)


def test_handle_result_to_reply() -> None:
    result = HandleResult(
        event_id="$e", outcome=Outcome.SOFT_FAILED, reason_code="not_allowed", reason="no"
    )
    reply = decode_reply(encode_reply(result.reply()))
    assert reply == InputReply(
        event_id="$e", outcome="soft_failed", reason_code="not_allowed", reason="no"
    )
    for outcome in Outcome:
        assert HandleResult(event_id="$e", outcome=outcome).reply().outcome == outcome.value


def test_dead_letter_keeps_the_original_bytes() -> None:
    original = b"\xff\x00 not utf-8"
    letter = DeadLetter(
        subject="rs.input.abc",
        headers={"Room-ID": "!r:x"},
        body=body_b64(original),
        reason_code="undecodable",
        reason="malformed JSON",
        delivery_count=1,
        time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    back = decode_deadletter(encode_deadletter(letter))
    assert back == letter
    assert back.original_body() == original
