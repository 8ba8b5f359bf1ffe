"""`python -m worker auth FILE`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.builder import RoomBuilder
from worker.cli import main


def _room() -> RoomBuilder:
    b = RoomBuilder("10")
    b.create("alice")
    b.join("alice")
    b.power_levels("alice", users={"alice": 100})
    b.join_rules("alice", "invite")
    return b


def _doc(b: RoomBuilder, event_id: str, state: list[str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "room_version": b.version,
        "events": list(b.events.values()),
        "event_id": event_id,
    }
    doc["state"] = sorted(b.state.values()) if state is None else state
    return doc


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: Any) -> tuple[int, Any, str]:
    path = tmp_path / "in.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    code = main(["auth", str(path)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out else None), err


def test_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = _room()
    state_before = sorted(b.state.values())
    eid = b.invite("alice", "bob")
    code, out, _ = _run(tmp_path, capsys, _doc(b, eid, state_before))
    assert code == 0
    assert out == {"outcome": "accepted", "reason_code": None, "reason": None, "rule": None}


def test_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = _room()
    state_before = sorted(b.state.values())
    eid = b.join("bob")
    code, out, _ = _run(tmp_path, capsys, _doc(b, eid, state_before))
    assert code == 0
    assert out["outcome"] == "rejected"
    assert out["reason_code"] == "join_rule_forbids"
    assert out["rule"] == "m.room.member/join/4"
    assert "invite" in out["reason"]


def test_rejected_by_state_not_own_auth_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = _room()
    b.invite("alice", "bob")
    fork = b.fork()
    join = fork.join("bob")  # authorised by its own auth events (the invite)...
    ban = b.ban("alice", "bob")  # ...but the state before it, per the caller, has the ban
    state = list(b.state.values())
    assert ban in state
    code, out, _ = _run(tmp_path, capsys, _doc(b, join, state))
    assert (code, out["reason_code"]) == (0, "banned")
    code, out, _ = _run(tmp_path, capsys, {k: v for k, v in _doc(b, join).items() if k != "state"})
    assert (code, out["outcome"]) == (0, "accepted")


def test_auth_list_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = _room()
    eid = b.message("alice", auth=["$create", "$create", "$join_alice"])
    code, out, _ = _run(tmp_path, capsys, _doc(b, eid))
    assert (code, out["reason_code"]) == (0, "duplicate_auth_event")


def test_v12_create_found_from_room_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = RoomBuilder("12", real_ids=True)
    b.create("alice")
    eid = b.join("alice")
    code, out, _ = _run(tmp_path, capsys, _doc(b, eid, []))
    assert (code, out["outcome"]) == (0, "accepted")


def test_computed_event_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = RoomBuilder("10", real_ids=True)
    b.create("alice")
    join = b.join("alice")
    doc = _doc(b, join, [])
    for pdu in doc["events"]:
        del pdu["event_id"]
    code, out, _ = _run(tmp_path, capsys, doc)
    assert (code, out["outcome"]) == (0, "accepted")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "not JSON"),
        ([], "JSON object"),
        ({"room_version": "99", "events": []}, "unknown room version"),
        ({"room_version": "10", "events": {}}, '"events"'),
        ({"room_version": "10", "events": [], "event_id": "$nope"}, "not among the events"),
        ({"room_version": "10", "events": [{"type": 1}], "event_id": "$x"}, "invalid"),
    ],
)
def test_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: Any, message: str
) -> None:
    code, out, err = _run(tmp_path, capsys, doc)
    assert code == 2 and out is None
    assert err.startswith("roomserver auth: ") and message in err


def test_bad_state_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = _room()
    eid = b.message("alice")
    code, _, err = _run(tmp_path, capsys, _doc(b, eid, [eid]))
    assert code == 2 and "not a state event" in err
    code, _, err = _run(tmp_path, capsys, _doc(b, eid, ["$pl", "$pl"]))
    assert code == 2 and "two events" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["auth", str(tmp_path / "absent.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_module_entry_point(tmp_path: Path) -> None:
    b = _room()
    eid = b.message("alice")
    path = tmp_path / "in.json"
    path.write_text(json.dumps(_doc(b, eid)))
    done = subprocess.run(
        [sys.executable, "-m", "worker", "auth", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "accepted"
