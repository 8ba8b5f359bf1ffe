"""The start's stream provisioning waits out a JetStream that does not answer yet (a cluster
electing its leader after a node restart), for a bounded time, and fails at once on a refusal
that waiting cannot change."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest
from nats.js.errors import APIError, ServiceUnavailableError

from worker import app, connections
from worker.config import load_settings


def _worker(monkeypatch: pytest.MonkeyPatch, failures: list[Exception]) -> tuple[Any, list[int]]:
    calls: list[int] = []

    async def ensure_streams(js: object, subjects: object, limits: object) -> dict[str, Any]:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return {"created": ["INPUT", "OUTPUT", "DEADLETTER"]}

    monkeypatch.setattr(connections, "ensure_streams", ensure_streams)
    monkeypatch.setattr(connections, "_PROVISION_FIRST_DELAY", 0.01)
    worker = app.Worker(load_settings({
        "NATS_URL": "nats://127.0.0.1:4222",
        "DATABASE_URL": "postgresql://rs@127.0.0.1/rs",
        "STREAM_REPLICAS": "1",
    }))
    worker.nc = SimpleNamespace(jetstream=lambda: None)  # type: ignore[assignment]
    return worker, calls


async def test_an_unanswering_jetstream_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    worker, calls = _worker(monkeypatch, [
        nats.errors.TimeoutError(), nats.errors.NoRespondersError(),
        ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable"),
    ])
    await worker._provision()
    assert len(calls) == 4


async def test_a_refusal_fails_the_start_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    worker, calls = _worker(monkeypatch, [
        APIError(code=400, err_code=10058, description="stream name already in use"),
    ])
    with pytest.raises(app.StartupError, match="cannot provision the streams"):
        await worker._provision()
    assert len(calls) == 1


async def test_waiting_ends_after_its_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    worker, calls = _worker(monkeypatch, [nats.errors.TimeoutError() for _ in range(1000)])
    monkeypatch.setattr(connections, "_PROVISION_PATIENCE", 0.2)
    with pytest.raises(app.StartupError, match="TimeoutError"):
        await worker._provision()
    assert 2 <= len(calls) < 10
