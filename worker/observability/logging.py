"""structlog set-up: JSON lines for machines, coloured console lines on a terminal.

Configured the way structlog's performance guide suggests: a filtering bound logger (calls
below the level cost one method lookup), loggers cached on first use, and JSON rendered
straight to bytes by msgspec. Standard-library loggers (asyncpg, nats) go through the same
renderer so a log stream is one format.

`room_id` and `event_id` are bound in contextvars at the consumer edge with `bind_event`;
every log line emitted while a message is being handled carries them. Each asyncio task has
its own copy of the context, so concurrent rooms never see each other's IDs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import msgspec
import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")

_encoder = msgspec.json.Encoder(enc_hook=repr)
# Tracebacks as structured frames, without local variables: those could hold secrets.
_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _serialize(obj: Any, **_kw: Any) -> bytes:
    # JSONRenderer passes json.dumps-style keywords (default=...); msgspec has its enc_hook.
    return _encoder.encode(obj)


def _serialize_str(obj: Any, **_kw: Any) -> str:
    return _encoder.encode(obj).decode()


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    json: bool | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog and the standard library once, at start-up.

    `json=None` picks console rendering when `stream` is a terminal and JSON lines otherwise.
    `cache=False` is for tests that reconfigure: a cached logger keeps its first stream.
    """
    out = sys.stderr if stream is None else stream
    use_json = not out.isatty() if json is None else json
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared = _shared_processors()
    processors: list[Any] = list(shared)
    factory: Any
    if use_json:
        processors.append(_TRACEBACKS)
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            processors.append(structlog.processors.JSONRenderer(serializer=_serialize))
            factory = structlog.BytesLoggerFactory(file=buffer)
        else:
            processors.append(structlog.processors.JSONRenderer(serializer=_serialize_str))
            factory = structlog.PrintLoggerFactory(file=out)
    else:
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.PrintLoggerFactory(file=out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=cache,
    )
    _configure_stdlib(numeric, out, shared, use_json)


def _configure_stdlib(level: int, out: TextIO, shared: list[Any], use_json: bool) -> None:
    """Route standard-library records through structlog's renderer, one format for all."""
    final: Any = (
        structlog.processors.JSONRenderer(serializer=_serialize_str)
        if use_json
        else structlog.dev.ConsoleRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([_TRACEBACKS] if use_json else []),
            final,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_roomserver", False):
            root.removeHandler(old)
    handler._roomserver = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # Libraries are chatty at info; their warnings and errors are what an operator needs.
    root.setLevel(max(level, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    """A structlog logger; `name` becomes the `logger` key of each line."""
    if name is None:
        return structlog.get_logger()
    return structlog.get_logger().bind(logger=name)


@contextmanager
def bind_event(room_id: str, event_id: str) -> Iterator[None]:
    """Bind `room_id` and `event_id` to every log line inside the block (contextvars)."""
    with structlog.contextvars.bound_contextvars(room_id=room_id, event_id=event_id):
        yield


__all__ = ["LEVELS", "bind_event", "configure_logging", "get_logger"]
