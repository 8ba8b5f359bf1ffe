"""`send`'s local part: reading lines, naming events and rooms, the progress bar and table."""

from __future__ import annotations

import io
import json

from tests.fixtures.builder import RoomBuilder
from worker.commands.send import Sent, _Progress, parse_lines, summary


def _pdu_lines(b: RoomBuilder) -> list[str]:
    out = []
    for pdu in b.events.values():
        pdu = dict(pdu)
        pdu.pop("event_id")  # v3+ PDUs carry no event ID: send derives it
        out.append(json.dumps(pdu))
    return out


def test_plain_pdus_get_their_derived_ids_and_v12_rooms_their_id() -> None:
    b = RoomBuilder("12", real_ids=True)
    b.create("alice"); b.join("alice"); b.message("alice")  # noqa: E702
    items = parse_lines(["", "# comment", *_pdu_lines(b)], "12", "new")
    assert [i.event_id for i in items] == list(b.events)
    assert {i.room_id for i in items} == {b.room_id}  # the create event names no room
    assert [i.line for i in items] == [3, 4, 5]
    assert all(i.message is not None and i.message.room_version == "12" for i in items)


def test_inputs_learn_the_version_from_the_create_event() -> None:
    b = RoomBuilder("10", real_ids=True)
    b.create("alice"); b.join("alice")  # noqa: E702
    lines = [json.dumps({"kind": "new", "event": json.loads(p)}) for p in _pdu_lines(b)]
    items = parse_lines([*lines, '{"kind": "sideways", "event": {}}', "[1]"], None, "new")
    assert [i.event_id for i in items[:2]] == list(b.events)
    assert items[1].message is not None and items[1].message.room_version is None
    assert [i.error.split(":")[0] for i in items[2:]] == ["not an input", "not an input"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_the_table() -> None:
    tty, pipe = _Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = _Progress(4, stream)
        bar.show(1, "accepted")
        bar.show(4, "rejected")
        bar.close()
    assert pipe.getvalue() == ""
    assert tty.getvalue().split("\r")[1:] == [
        "[#######.......................] 1/4 accepted                      ",
        "[##############################] 4/4 rejected                      \n",
    ]
    table = summary([Sent(1, "$a", "m.room.create", "accepted"),
                     Sent(2, "$b", "m.room.topic", "rejected", "insufficient_power", "no")], False)
    assert table.splitlines() == [
        "2 inputs: 1 accepted, 1 rejected",
        "line  event  type          outcome   reason",
        "2     $b     m.room.topic  rejected  insufficient_power: no",
    ]
