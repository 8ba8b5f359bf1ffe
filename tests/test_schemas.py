"""The committed JSON Schemas equal what the Structs generate (STYLE R7: generated, not edited)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from worker.messages import schemas

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "schemas" / "messages"


def test_committed_schemas_match_structs() -> None:
    assert schemas.differences(COMMITTED) == []


def test_generator_is_deterministic(tmp_path: Path) -> None:
    # Run in a subprocess with another hash seed: dict/set order must not leak into the files.
    for seed in ("0", "12345"):
        out = tmp_path / seed
        subprocess.run(
            [sys.executable, "-m", "worker.messages.schemas", str(out)],
            check=True,
            capture_output=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            cwd=ROOT,
        )
    first = {p.name: p.read_bytes() for p in (tmp_path / "0").iterdir()}
    second = {p.name: p.read_bytes() for p in (tmp_path / "12345").iterdir()}
    assert first == second
    assert set(first) == {f"{stem}.json" for stem in schemas.SCHEMAS}


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    assert schemas.main(["--check", str(tmp_path)]) == 0
    (tmp_path / "input_reply.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "stray.json").write_text("{}\n", encoding="utf-8")
    problems = schemas.differences(tmp_path)
    assert problems == [
        "input_reply.json: differs from the Struct (run `make schemas`)",
        "stray.json: no Struct generates it",
    ]
