"""`/metrics`, `/healthz` and `/readyz` on asyncio's own TCP server: no web framework.

The server speaks just enough HTTP/1.1 for Prometheus, load balancers and `curl`: GET or
HEAD, one request per connection. `/healthz` answers 200 while the event loop runs.
`/readyz` runs the named readiness checks it was given (NATS connected, PostgreSQL reachable,
migrations applied) and answers 200, or 503 with a JSON body naming what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

# A check returns None when fine, or a short reason when not; raising counts as failing.
ReadinessCheck = Callable[[], Awaitable[str | None]]

_MAX_HEADER_BYTES = 16 * 1024
_READ_TIMEOUT = 10.0
_CHECK_TIMEOUT = 2.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """The `/readyz` body: overall verdict and each check's result ("ok" or the reason)."""

    ready: bool
    checks: dict[str, str]


async def _run_check(check: ReadinessCheck) -> str:
    try:
        reason = await asyncio.wait_for(check(), _CHECK_TIMEOUT)
    except TimeoutError:
        return f"no answer within {_CHECK_TIMEOUT:g}s"
    except Exception as exc:  # a failing check is a verdict, not a crash of the server
        return f"{type(exc).__name__}: {exc}"
    return "ok" if reason is None else reason


async def readiness(checks: Mapping[str, ReadinessCheck]) -> Readiness:
    """Run every check concurrently; ready only when all say ok."""
    names = sorted(checks)
    results = await asyncio.gather(*(_run_check(checks[n]) for n in names))
    verdicts = dict(zip(names, results, strict=True))
    return Readiness(ready=all(r == "ok" for r in results), checks=verdicts)


class HealthServer:
    """The HTTP endpoint of one worker. `port=0` binds a free port, read back from `.port`."""

    def __init__(
        self,
        host: str,
        port: int,
        checks: Mapping[str, ReadinessCheck],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._host = host
        self._port = port
        self._checks = dict(checks)
        self._registry = registry
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=_MAX_HEADER_BYTES
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Connections are one request long; wait_closed would otherwise wait for idle ones.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body, head = await asyncio.wait_for(
                self._respond(reader), _READ_TIMEOUT
            )
            headers = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(headers.encode("latin-1") + (b"" if head else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEADER_BYTES:
            return 400, "text/plain", b"request too large\n", False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400, "text/plain", b"bad request line\n", False
        method, target, _version = parts
        is_head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n", False
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if path == "/metrics":
            encoder, ctype = choose_encoder(headers.get("accept", ""))
            return 200, ctype, encoder(self._registry), is_head
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n", is_head
        if path == "/readyz":
            verdict = await readiness(self._checks)
            body = msgspec.json.encode(verdict) + b"\n"
            return (200 if verdict.ready else 503), "application/json", body, is_head
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n", is_head


__all__ = ["HealthServer", "Readiness", "ReadinessCheck", "readiness"]
