"""``rheo-nb demo``: the whole job against the bundled local server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rheo_nb import testing
from rheo_nb.demo import sample_files


def test_demo_runs_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "rheo_nb", "demo", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "missing.bin fails on purpose" in proc.stdout
    assert len(list((out / "small").iterdir())) == 120
    assert (out / "flaky.bin").stat().st_size == 2 << 20
    assert not (out / "missing.bin").exists()
    assert not list(out.rglob("*.part"))


def test_demo_files_cover_the_interesting_cases() -> None:
    with testing.LocalServer() as server:
        files = sample_files(server)
    assert any(f.hash for f in files)
    assert any("fail=1" in f.url for f in files)
    assert any("status=404" in f.url for f in files)
    paths = [str(f.path) for f in files if f.path is not None]
    assert len(paths) == len(set(paths))
