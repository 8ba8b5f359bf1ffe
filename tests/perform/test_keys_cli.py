"""The signing key file at start-up, and the perform commands of the CLI."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from tests.perform.conftest import SERVER, Api, user
from worker.cli import main
from worker.config import load_settings
from worker.perform.keys import SigningKeyError, load_signing_key


def test_the_default_key_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "signing.key"
    first = load_signing_key(path, SERVER, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_signing_key(path, SERVER, create=True)
    assert again.key_id == first.key_id and bytes(again.key) == bytes(first.key)
    assert path.read_text().startswith("ed25519 a_")


def test_a_named_key_file_is_never_made(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match=r"missing\.key does not exist"):
        load_signing_key(tmp_path / "missing.key", SERVER, create=False)


def test_a_malformed_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("ed25519 a_x notbase64!\n")
    with pytest.raises(SigningKeyError, match=r"bad\.key is malformed: line 1"):
        load_signing_key(path, SERVER, create=False)


async def test_the_worker_refuses_to_start_with_a_malformed_key(
    tmp_path: Path, nats_url: str, database_dsn: str, prefix: str
) -> None:
    from structlog.testing import capture_logs

    from worker.app import serve

    path = tmp_path / "bad.key"
    path.write_text("garbage\n")
    settings = load_settings({
        "SIGNING_KEY_FILE": str(path), "DATA_DIR": str(tmp_path), "NATS_URL": nats_url,
        "DATABASE_URL": database_dsn, "ROOMSERVER_PREFIX": prefix, "METRICS_ADDR": "127.0.0.1:0",
    })
    with capture_logs() as logs:
        assert await serve(settings) == 1
    failed = [e for e in logs if e["event"] == "startup_failed"]
    assert failed and "bad.key is malformed" in failed[0]["error"]


async def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_walkthrough(
    api: Api, nats_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in (("NATS_URL", nats_url), ("ROOMSERVER_PREFIX", prefix),
                        ("SERVER_NAME", SERVER)):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CONFIG_FILE", raising=False)
    code, out, _ = await _cli(monkeypatch, capsys, "create-room", "--creator", "alice",
                              "--alias", "cli", "--public", "--version", "11")
    assert code == 0
    room_id = json.loads(out)["room_id"]
    code, out, _ = await _cli(monkeypatch, capsys, "join", "#cli:hs.test", "--user", "bob")
    assert code == 0 and json.loads(out)["room_id"] == room_id
    code, out, _ = await _cli(monkeypatch, capsys, "say", "#cli:hs.test", "hi", "--sender", "bob",
                              "--txn-id", "x")
    first = json.loads(out)["event_id"]
    code, out, _ = await _cli(monkeypatch, capsys, "say", room_id, "hi", "--sender", "bob",
                              "--txn-id", "x")
    assert code == 0 and json.loads(out)["event_id"] == first
    code, _, err = await _cli(monkeypatch, capsys, "say", room_id, "hi", "--sender", "mallory")
    assert code == 1 and "forbidden (not_in_room)" in err
    private = await api.perform("create_room", creator=user("alice"), preset="private_chat")
    code, _, _ = await _cli(monkeypatch, capsys, "invite", private["room_id"], "carol",
                            "--sender", "alice")
    assert code == 0
    code, out, _ = await _cli(monkeypatch, capsys, "upgrade", "#cli:hs.test", "--user", "alice",
                              "--version", "12")
    assert code == 0
    new = json.loads(out)["replacement_room_id"]
    code, out, _ = await _cli(monkeypatch, capsys, "query", "room_for_alias",
                              '{"alias": "#cli:hs.test"}')
    assert code == 0 and json.loads(out)["room_id"] == new
