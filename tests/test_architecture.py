"""The layering rule of DESIGN §8: `worker.core` imports no I/O library and no outer layer.

The rule is an import-linter contract in pyproject.toml. The first test runs it on the real
code. The others check that the contract can fail: a copy of it, pointed at a throwaway
package whose core imports asyncio, asyncpg, nats, structlog, prometheus_client and an outer
layer, must report each one. (Without `include_external_packages`, import-linter would
silently ignore the third-party and standard-library names.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
FAKE = "fakeworker"


def _lint(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def test_import_contracts_hold_for_the_worker() -> None:
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and "0 broken" in done.stdout


def _toml_value(value: Any) -> str:
    # Strings, booleans and lists of strings are all the contract uses; JSON spells them alike.
    return json.dumps(value)


def _fake_project(root: Path, core_imports: list[str]) -> None:
    """A package shaped like `worker`, with the real contract renamed onto it."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]"]
    for key, value in config.items():
        if key == "contracts":
            continue
        lines.append(f"{key} = {_toml_value(FAKE if key == 'root_package' else value)}")
    modules: set[str] = set()
    for contract in config["contracts"]:
        lines.append("\n[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            if isinstance(value, list):
                value = [v.replace("worker", FAKE, 1) if v.startswith("worker") else v
                         for v in value]
                modules.update(v for v in value if v.startswith(FAKE))
            lines.append(f"{key} = {_toml_value(value)}")
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")
    pkg = root / FAKE
    for module in sorted(modules):
        parts = module.split(".")
        path = root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        (path / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "rules.py").write_text("\n".join(core_imports) + "\n")


def test_a_clean_core_passes(tmp_path: Path) -> None:
    _fake_project(tmp_path, ["import json", "import msgspec", f"from {FAKE}.core import rules"])
    done = _lint(tmp_path, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_contract_catches_io_libraries_and_outer_layers(tmp_path: Path) -> None:
    bad = [
        "import asyncio",
        "import asyncpg",
        "from nats.aio.client import Client",
        "import structlog",
        "from prometheus_client import Counter",
        f"from {FAKE} import storage",
        f"import {FAKE}.config",
    ]
    _fake_project(tmp_path, bad)
    done = _lint(tmp_path, tmp_path)
    assert done.returncode != 0
    for name in ("asyncio", "asyncpg", "nats", "structlog", "prometheus_client",
                 f"{FAKE}.storage", f"{FAKE}.config"):
        assert f"{FAKE}.core is not allowed to import {name}:" in done.stdout, done.stdout
