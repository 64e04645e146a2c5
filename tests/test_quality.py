"""The code stays lint-clean, formatted and strictly typed (tests included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def check(*args: str, timeout: float = 120) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"


def test_ruff_check() -> None:
    check("ruff", "check", "rheo_nb", "tests")


def test_ruff_format() -> None:
    check("ruff", "format", "--check", "rheo_nb", "tests")


@pytest.mark.timeout(300)
def test_mypy_strict() -> None:
    # Files and strictness come from pyproject.toml.
    check("mypy", timeout=280)
