"""The code stays ruff- and mypy-clean (the settings are in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["export", "models", "benchmarks", "motion7"]


@pytest.mark.parametrize("tool,args", [("ruff", ["check", "."]), ("mypy", SOURCES)])
def test_clean(tool: str, args: list[str]) -> None:
    beside = Path(sys.executable).parent / tool  # this environment's own, before any other on PATH
    exe = str(beside) if beside.exists() else shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} is not installed (pip install -e '.[dev]')")
    res = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
