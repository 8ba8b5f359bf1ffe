"""The layering rules of DESIGN §8: `worker.core` imports no I/O library and no outer layer,
and each layer imports only the layers below it.

The rules are import-linter contracts in pyproject.toml. The first test runs them on the real
code. The others check that the contracts can fail: a copy of it, pointed at a throwaway
package whose core imports asyncio, asyncpg, nats, structlog, prometheus_client and an outer
layer, must report each one; modules importing up the layers must be reported too. (Without
`include_external_packages`, import-linter would silently ignore the third-party and
standard-library names.)
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


def _fake_project(
    root: Path, core_imports: list[str], more: dict[str, list[str]] | None = None
) -> None:
    """A package shaped like `worker`, with the real contracts renamed onto it; `more`:
    further modules (by dotted name under the package) and their imports."""
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
            if key == "layers":
                # Layers are named relative to the containers; optional ones may be absent.
                for layer in value:
                    for tail in layer.replace(":", "|").split("|"):
                        if not tail.strip().startswith("("):
                            modules.add(f"{FAKE}.{tail.strip()}")
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
    for name, imports in (more or {}).items():
        (pkg.joinpath(*name.split(".")).with_suffix(".py")).write_text("\n".join(imports) + "\n")


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


def test_the_layers_contract_catches_an_import_up_the_layers(tmp_path: Path) -> None:
    _fake_project(
        tmp_path,
        ["import json"],
        {
            "query.service": [f"from {FAKE}.storage import reads"],
            "storage.reads": [f"from {FAKE}.query import service", f"import {FAKE}.app"],
            "bus.outbox": [f"from {FAKE}.storage import reads"],
            "pipeline.steps": [f"from {FAKE}.query import service"],
        },
    )
    done = _lint(tmp_path, tmp_path)
    assert done.returncode != 0
    for importer, imported in [
        ("query", "storage"), ("storage", "app"), ("bus", "storage"), ("pipeline", "query"),
    ]:
        assert f"{FAKE}.{importer} is not allowed to import {FAKE}.{imported}:" in done.stdout, (
            done.stdout
        )
