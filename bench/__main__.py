"""`python -m bench [NAME ...]`: run every `bench/<name>.py` that defines `main()`, in name order
(an `async def main()` is run with `asyncio.run`).

Engineers add a benchmark by dropping a module with a `main()` into `bench/`; nothing else to
register. Given names, only those modules run. A module that fails is reported and the rest
still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
import time
import traceback
from pathlib import Path


def _modules() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    names = argv or _modules()
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if not callable(entry):
            continue
        print(f"== bench.{name}", flush=True)
        start = time.perf_counter()
        try:
            result = entry()
            if inspect.isawaitable(result):
                asyncio.run(result)  # type: ignore[arg-type]
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"== bench.{name} done in {time.perf_counter() - start:.1f} s\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
