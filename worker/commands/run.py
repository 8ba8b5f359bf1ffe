"""`python -m worker run`: the worker, until SIGTERM or SIGINT (see worker.app)."""

from __future__ import annotations

import argparse
import asyncio
import gc
from collections.abc import Callable

from worker.config import EXIT_CONFIG, load_or_report
from worker.observability.logging import configure_logging

HELP = "run the worker: embedded servers if needed, migrate, provision streams, consume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format", choices=("auto", "json", "console"), default="auto",
        help="log rendering (auto: console on a terminal, JSON lines otherwise)",
    )


def run(args: argparse.Namespace) -> int:
    settings = load_or_report()
    if settings is None:
        return EXIT_CONFIG
    json = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(settings.log_level, json=json)
    # Imported after logging is configured so module-level loggers see the configuration.
    from worker.app import serve

    _tune_gc()
    with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
        return runner.run(serve(settings))


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for EVENT_LOOP: uvloop's when it is installed (it is a dependency
    except on Windows), else None, Python's own."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            return None
        return uvloop.new_event_loop
    return None


def _tune_gc() -> None:
    """Fewer, and smaller, cyclic garbage collections.

    Each event allocates a few thousand short-lived objects (JSON, views, coroutines), and
    with the default gen-0 threshold (700) the collector runs every event or two; its older
    generations then rescan the worker's caches (events, snapshot layers: millions of
    objects in a big room). Nearly all the worker's garbage is freed by reference counting,
    so collecting rarely loses nothing, and saves the worker CPU on every event. The modules
    imported so far are never garbage: `freeze` keeps them out of every collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
