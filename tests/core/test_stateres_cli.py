"""`python -m worker resolve FILE`: golden files through the CLI, and bad input exits 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from worker.commands import resolve as cmd

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _run(path: Path, capsys: pytest.CaptureFixture[str], stats: bool = False) -> tuple[int, str, str]:
    code = cmd.run(argparse.Namespace(file=str(path), stats=stats))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", ["ban_vs_pl", "msc4297_subgraph_v2_1", "v12_creators"])
def test_golden_file_through_cli(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = GOLDEN / f"{name}.json"
    code, out, err = _run(path, capsys, stats=True)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["state"] == json.loads(path.read_text())["expected_state"]
    assert doc["stats"]["conflicted"] > 0


def test_output_is_sorted_by_type_then_state_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(GOLDEN / "concurrent_joins.json", capsys)
    assert code == 0
    rows = json.loads(out)["state"]
    assert rows == sorted(rows, key=lambda r: (r[0], r[1]))


def _bad(tmp_path: Path, doc: object, capsys: pytest.CaptureFixture[str]) -> str:
    path = tmp_path / "in.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    code, out, err = _run(path, capsys)
    assert code == 2
    assert out == ""
    return err


def test_bad_inputs_exit_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = json.loads((GOLDEN / "ban_vs_pl.json").read_text())
    assert "not JSON" in _bad(tmp_path, "{nope", capsys)
    assert "must be a JSON object" in _bad(tmp_path, [], capsys)
    assert "unknown room version '99'" in _bad(tmp_path, {**good, "room_version": "99"}, capsys)
    assert '"events" must be a list' in _bad(tmp_path, {**good, "events": {}}, capsys)
    assert "not among the events" in _bad(
        tmp_path, {**good, "state_sets": [["$nowhere:test"]]}, capsys
    )
    assert "non-empty list" in _bad(tmp_path, {**good, "state_sets": []}, capsys)
    broken = [dict(e) for e in good["events"]]
    broken[1]["sender"] = 7
    assert "events[1] is invalid" in _bad(tmp_path, {**good, "events": broken}, capsys)
    msg = {**good["events"][-1], "event_id": "$msg:test", "type": "m.room.message"}
    msg.pop("state_key")
    msg["content"] = {"msgtype": "m.text", "body": "hi"}
    err = _bad(tmp_path, {**good, "events": [*good["events"], msg], "state_sets": [["$msg:test"]]}, capsys)
    assert "not a state event" in err
    missing = tmp_path / "missing.json"
    code, _, err = _run(missing, capsys)
    assert code == 2 and "cannot read" in err


def test_a_state_event_missing_from_the_events_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = json.loads((GOLDEN / "topic_reset.json").read_text())
    events = [e for e in good["events"] if e["event_id"] != "$t1:test"]
    err = _bad(tmp_path, {**good, "events": events}, capsys)
    assert "$t1:test" in err
