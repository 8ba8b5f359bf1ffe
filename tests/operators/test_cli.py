"""`send`, `tail`, `inspect` and `graph` against a running worker, on the walkthrough room."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from tests.e2e.conftest import WorkerRun
from tests.operators.conftest import Cli
from worker.messages import decode_output

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROOM = "!walkthrough:example.org"
SVG = "{http://www.w3.org/2000/svg}"

# Lines of examples/room.jsonl (see examples/make_examples.py).
CREATE, PL, JOIN_CAROL, BOB_MSG, BAN, DEMOTE, MERGE = 1, 3, 9, 12, 13, 14, 15
STALE_TOPIC, BOB_TOPIC, MALLORY, LAST = 16, 17, 18, 23


async def _send_walkthrough(roomserver: Cli) -> dict[int, dict[str, Any]]:
    sent = await roomserver("send", str(EXAMPLES / "room.jsonl"), "--json")
    assert sent.code == 0, sent.err
    replies = [json.loads(line) for line in sent.out.splitlines()]
    return {r["line"]: r for r in replies}


async def test_send_reports_every_outcome_with_reasons(worker: WorkerRun, roomserver: Cli) -> None:
    by_line = await _send_walkthrough(roomserver)
    assert len(by_line) == 23
    assert Counter(r["outcome"] for r in by_line.values()) == {
        "accepted": 20, "rejected": 2, "soft_failed": 1,
    }
    assert by_line[STALE_TOPIC]["outcome"] == "soft_failed"
    assert by_line[STALE_TOPIC]["reason_code"] == "soft_failed_insufficient_power"
    assert by_line[BOB_TOPIC]["reason_code"] == "insufficient_power"
    assert by_line[MALLORY]["reason_code"] == "not_in_room"
    assert all(r["event_id"].startswith("$") for r in by_line.values())

    # Again: JetStream drops every message as a duplicate, and send says so instead of
    # waiting for replies that cannot come.
    again = await roomserver("send", str(EXAMPLES / "room.jsonl"))
    assert again.code == 0, again.err
    assert again.out.splitlines()[0] == "23 inputs: 23 not_resent (23 seen before)"


async def test_send_plain_pdus_and_a_bad_line(
    worker: WorkerRun, roomserver: Cli, tmp_path: Path
) -> None:
    lines = (EXAMPLES / "linear.pdus.jsonl").read_text().splitlines()
    path = tmp_path / "pdus.jsonl"
    path.write_text("\n".join(["# a comment", *lines[:4], "{not json", *lines[4:]]) + "\n")
    sent = await roomserver("send", "--room-version", "11", str(path))
    assert sent.code == 1  # one line could not be sent
    out = sent.out.splitlines()
    assert out[0] == "8 inputs: 7 accepted, 1 not_sent"
    assert out[1].split() == ["line", "event", "type", "outcome", "reason"]
    assert out[2].split()[:5] == ["6", "-", "-", "not_sent", "bad_line:"]
    assert len(out) == 3  # accepted events are not listed without --all

    listed = await roomserver("send", "--room-version", "11", "--all", str(path))
    assert "not_resent" in listed.out and len(listed.out.splitlines()) == 2 + 8


async def test_send_without_a_server(roomserver: Cli) -> None:
    result = await roomserver("send", str(EXAMPLES / "linear.pdus.jsonl"), "--room-version",
                              "11", env_extra={"NATS_URL": "nats://127.0.0.1:9"})
    assert result.code == 3
    assert "cannot connect to NATS" in result.err


async def test_tail_follows_the_output_stream(worker: WorkerRun, roomserver: Cli) -> None:
    by_line = await _send_walkthrough(roomserver)
    raw = await roomserver("tail", "--all", "--json", "--count", "3")
    assert raw.code == 0, raw.err
    envelopes = [decode_output(line.encode()) for line in raw.out.splitlines()]
    assert [e.type for e in envelopes] == ["new_room_event"] * 3

    # 20 accepted events and 2 redactions applied: 22 outputs for the room.
    pretty = await roomserver("tail", "--room", ROOM, "--last", "22", "--count", "22")
    lines = pretty.out.splitlines()
    assert len(lines) == 22
    assert lines[0].split()[1:4] == ["new_room_event", ROOM, by_line[CREATE]["event_id"]]
    assert sum("redacted_event" in line for line in lines) == 2
    assert any(f"{by_line[BAN]['event_id']}  m.room.member  ban @carol" in line for line in lines)
    assert any("(rewrites state)" in line for line in lines)  # the federated join


async def test_inspect_shows_the_room(worker: WorkerRun, roomserver: Cli) -> None:
    by_line = await _send_walkthrough(roomserver)
    ids = {n: r["event_id"] for n, r in by_line.items()}

    listed = await roomserver("inspect")
    assert listed.code == 0 and listed.out.split() == [ROOM]

    result = await roomserver("inspect", ROOM, "--json")
    assert result.code == 0, result.err
    room = json.loads(result.out)
    assert room["room_version"] == "10"
    assert room["events"] == 23
    assert room["outcomes"] == {"accepted": 20, "rejected": 2, "soft_failed": 1}
    assert room["members"] == {"join": sorted(
        ["@alice:example.org", "@bob:example.org", "@carol:example.org", "@dave:remote.example"]
    )}
    assert room["current_state"]["m.room.member"] == 4
    assert room["extremities"] == [ids[LAST]]
    assert room["forks"] == [ids[BOB_MSG], ids[BAN]]
    [merge] = room["merges"]
    assert merge["event_id"] == ids[MERGE]
    conflicts = {(c["type"], c["state_key"]): c for c in merge["conflicts"]}
    carol = conflicts[("m.room.member", "@carol:example.org")]
    assert sorted(carol["candidates"]) == sorted([ids[BAN], ids[JOIN_CAROL]])
    assert carol["winner"] == ids[JOIN_CAROL]  # the ban lost to the demotion
    assert conflicts[("m.room.power_levels", "")]["winner"] == ids[DEMOTE]
    assert merge["state_resets"] == []
    assert [(r["event_id"], r["outcome"], r["reason_code"]) for r in room["refused"]] == [
        (ids[STALE_TOPIC], "soft_failed", "soft_failed_insufficient_power"),
        (ids[BOB_TOPIC], "rejected", "insufficient_power"),
        (ids[MALLORY], "rejected", "not_in_room"),
    ]

    text = await roomserver("inspect", ROOM)
    assert text.code == 0
    assert "version     10" in text.out
    assert "forks: 2" in text.out and "merges (state resolution): 1" in text.out
    assert "ban @carol (" in text.out and "-> kept join @carol (self)" in text.out
    assert "not_in_room: @mallory:evil.example is not joined to the room." in text.out


async def test_graph_draws_one_node_per_event(
    worker: WorkerRun, roomserver: Cli, tmp_path: Path
) -> None:
    by_line = await _send_walkthrough(roomserver)
    out = tmp_path / "room.svg"
    result = await roomserver("graph", ROOM, "-o", str(out))
    assert result.code == 0, result.err
    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg"
    nodes = [g for g in root.iter(f"{SVG}g") if g.get("class", "").startswith("event ")]
    drawn = [g.get("data-event-id") for g in nodes]
    assert sorted(drawn) == sorted(r["event_id"] for r in by_line.values())
    classes = Counter(g.get("class") for g in nodes)
    assert classes == {"event accepted": 20, "event rejected": 2, "event soft_failed": 1}
    notes = [g.get("data-event-id") for g in root.iter(f"{SVG}g") if g.get("class") == "note"]
    assert notes == [by_line[MERGE]["event_id"]]
    # Edges: one per prev reference between drawn events (the create event has none).
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    assert len(edges) == 22 + 1  # a chain of 22 links, plus the merge's second prev

    to_stdout = await roomserver("graph", ROOM)
    assert to_stdout.out == out.read_text()  # deterministic


async def test_unknown_room(worker: WorkerRun, roomserver: Cli) -> None:
    for command in ("inspect", "graph"):
        result = await roomserver(command, "!nope:example.org")
        assert result.code == 1
        assert "roomserver: not_found: the roomserver does not know !nope:example.org" in result.err


async def test_unreachable_database(roomserver: Cli) -> None:
    for command in ("inspect", "graph"):
        result = await roomserver(command, ROOM, "--database-url",
                                  "postgresql://nobody@127.0.0.1:9/nothing")
        assert result.code == 3
        assert "cannot read the database" in result.err
