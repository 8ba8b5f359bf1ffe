"""The event JSON queries return: the stored PDU with its event ID spliced in when missing."""

from __future__ import annotations

import msgspec

from worker.storage.query_reads import _with_event_id


def test_event_id_is_added_only_at_the_top_level() -> None:
    raw = b'{"content":{"event_id":"$inner"},"type":"m.room.message"}'
    out = msgspec.json.decode(_with_event_id(raw, "$outer"))
    assert out == {"event_id": "$outer", "content": {"event_id": "$inner"}, "type": "m.room.message"}


def test_an_event_id_already_carried_is_kept() -> None:
    raw = b'{"event_id":"$v1:hs","type":"m.room.message"}'
    assert _with_event_id(raw, "$other") is raw


def test_empty_object_and_whitespace() -> None:
    assert msgspec.json.decode(_with_event_id(b" { } ", "$e")) == {"event_id": "$e"}
    assert msgspec.json.decode(_with_event_id(b'{ "a": 1}', "$e")) == {"event_id": "$e", "a": 1}
