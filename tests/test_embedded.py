"""Embedded servers: a live owner's server is shared, a dead owner's server is recovered."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.embedded import EmbeddedNats, EmbeddedPostgres


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to root, and PostgreSQL runs as another
    # user when the tests run as root.
    with tempfile.TemporaryDirectory(prefix="roomserver-embedded-") as d:
        yield Path(d)


@pytest.mark.parametrize("kind", ["nats", "postgres"])
def test_a_second_process_attaches_to_a_live_owners_server(data_dir: Path, kind: str) -> None:
    make = (lambda: EmbeddedNats(data_dir / kind)) if kind == "nats" else (
        lambda: EmbeddedPostgres(data_dir / kind, fsync=False)
    )
    owner, other = make(), make()
    owner.start()
    try:
        # `migrate` or a CLI command beside a running worker: same data directory.
        other.start()
        assert other.attached and other.port == owner.port
        other.stop()
        assert _answers(owner.port), "the owner's server must survive the other's stop"
    finally:
        owner.stop()
    assert not _answers(owner.port)


def test_a_dead_owners_server_is_recovered(data_dir: Path) -> None:
    first = EmbeddedNats(data_dir / "nats")
    first.start()
    assert first.process is not None
    leftover = first.process
    # The owner dies without stopping its server (SIGKILL): the kernel frees its lock.
    first._owner.release()
    second = EmbeddedNats(data_dir / "nats")
    second.start()
    try:
        assert not second.attached
        assert leftover.wait(10) is not None, "the leftover server must have been stopped"
        assert _answers(second.port)
    finally:
        second.stop()
