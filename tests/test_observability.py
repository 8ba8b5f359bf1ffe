"""Logging (bound IDs, JSON lines), metrics helpers and the HTTP endpoint, in-process."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from worker.observability import metrics
from worker.observability.http import HealthServer, readiness
from worker.observability.logging import bind_event, configure_logging, get_logger


@pytest.fixture
def restore_logging() -> object:
    yield None
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_roomserver", False):
            root.removeHandler(handler)


def test_bind_event_tags_lines_inside_only() -> None:
    log = get_logger("test")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with bind_event("!room:example.org", "$event"):
            log.info("inside")
        log.info("outside")
    assert logs[0]["event"] == "inside"
    assert logs[0]["room_id"] == "!room:example.org" and logs[0]["event_id"] == "$event"
    assert "room_id" not in logs[1]


async def test_bindings_do_not_leak_between_concurrent_rooms(restore_logging: object) -> None:
    out = io.StringIO()
    configure_logging("info", stream=out, json=True, cache=False)
    log = get_logger("rooms")

    async def handle(room: str) -> None:
        with bind_event(room, f"$in-{room}"):
            await asyncio.sleep(0)
            log.info("handled", room=room)

    await asyncio.gather(*(handle(f"!r{i}:x") for i in range(5)))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 5
    for line in lines:
        assert line["room_id"] == line["room"] and line["event_id"] == f"$in-{line['room']}"
        assert line["level"] == "info" and line["logger"] == "rooms" and "timestamp" in line


def test_json_lines_filter_by_level_and_route_stdlib(restore_logging: object) -> None:
    out = io.StringIO()
    configure_logging("warning", stream=out, json=True, cache=False)
    get_logger("x").info("dropped")
    get_logger("x").warning("kept", n=1, thing=object())
    logging.getLogger("asyncpg.pool").warning("library says %s", "hi")
    try:
        raise ValueError("bad")
    except ValueError:
        get_logger("x").exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["kept", "library says hi", "failed"]
    assert lines[0]["n"] == 1 and lines[0]["thing"].startswith("<object")
    assert lines[1]["logger"] == "asyncpg.pool"
    frames = lines[2]["exception"][0]
    assert frames["exc_type"] == "ValueError"
    assert "locals" not in frames["frames"][0]


def _stage_count(stage: str) -> float:
    for family in metrics.STAGE_DURATION.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("stage") == stage:
                return sample.value
    return 0.0


def test_measure_observes_even_on_error() -> None:
    before = _stage_count("persist")
    with pytest.raises(RuntimeError), metrics.measure("persist"):
        raise RuntimeError("boom")
    with metrics.measure("persist"):
        pass
    assert _stage_count("persist") == before + 2


async def test_readiness_reports_each_check() -> None:
    async def ok() -> str | None:
        return None

    async def down() -> str | None:
        return "not connected"

    async def broken() -> str | None:
        raise ConnectionError("refused")

    verdict = await readiness({"a": ok, "b": down, "c": broken})
    assert not verdict.ready
    assert verdict.checks == {
        "a": "ok", "b": "not connected", "c": "ConnectionError: refused"
    }
    assert (await readiness({"a": ok})).ready


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_http_endpoints() -> None:
    registry = CollectorRegistry()
    Counter("demo_things_total", "Things.", registry=registry).inc(3)
    state = {"up": False}

    async def nats() -> str | None:
        return None if state["up"] else "not connected"

    server = HealthServer("127.0.0.1", 0, {"nats": nats}, registry=registry)
    await server.start()
    try:
        port = server.port
        assert server.url == f"http://127.0.0.1:{port}"
        status, _, body = await _request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (200, b"ok\n")

        status, headers, body = await _request(port, b"GET /readyz HTTP/1.1\r\n\r\n")
        assert status == 503 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"ready": False, "checks": {"nats": "not connected"}}
        state["up"] = True
        status, _, body = await _request(port, b"GET /readyz?verbose HTTP/1.1\r\n\r\n")
        assert status == 200 and json.loads(body)["ready"] is True

        status, headers, body = await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert b"demo_things_total 3.0" in body
        status, headers, body = await _request(
            port,
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
        )
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")

        status, headers, body = await _request(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert (status, body, headers["content-length"]) == (200, b"", "3")
        assert (await _request(port, b"POST /healthz HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await _request(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await _request(port, b"garbage\r\n\r\n"))[0] == 400
    finally:
        await server.stop()


@given(
    observations=st.lists(
        st.tuples(
            st.sampled_from(["validate", "persist", "total"]),
            st.one_of(
                st.floats(min_value=0, max_value=100, allow_nan=False),
                st.sampled_from([0.0005, 0.001, 0.5, 30.0, 30.000001]),
            ),
        ),
        max_size=40,
    )
)
def test_stage_histogram_exposes_what_a_prometheus_histogram_would(
    observations: list[tuple[str, float]],
) -> None:
    from prometheus_client import Histogram, generate_latest

    registry = CollectorRegistry()
    ours = metrics.StageHistogram("h", "h", metrics._LATENCY_BUCKETS, registry=registry)
    reference_registry = CollectorRegistry()
    reference = Histogram("h", "h", ["stage"], buckets=metrics._LATENCY_BUCKETS,
                          registry=reference_registry)
    for stage, value in observations:
        ours.observe(stage, value)
        reference.labels(stage).observe(value)

    def samples(r: CollectorRegistry) -> list[str]:
        return sorted(
            line for line in generate_latest(r).decode().splitlines()
            if not line.startswith("#") and "_created" not in line
        )

    assert samples(registry) == samples(reference_registry)
