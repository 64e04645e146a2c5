"""``rheo-nb demo``: the whole job against the bundled local server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rheo_nb import testing
from rheo_nb.demo import sample_files


def demo(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "rheo_nb", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_demo_runs_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = demo("-o", str(out), cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "missing.bin fails on purpose" in proc.stdout
    assert len(list((out / "small").iterdir())) == 120
    assert (out / "flaky.bin").stat().st_size == 2 << 20
    assert not (out / "missing.bin").exists()
    # The retry it promises is on screen, as it happens and at the end.
    assert "retrying flaky.bin now (attempt 2 of 4): HTTP 503 Service Unavailable" in proc.stderr
    assert "flaky.bin answered 503 at first: it was retried, and completed." in proc.stdout
    assert not (tmp_path / "cache").exists()  # -o given: nothing goes to the cache


def test_demo_reuses_its_folder_and_a_rerun_skips(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = demo(cache=cache)
    assert first.returncode == 0, first.stdout + first.stderr
    folder = cache / "rheo_nb" / "demo"
    assert f"saving to {folder}" in first.stdout
    assert "run the demo again to see a re-run skip them" in first.stdout
    assert f"rm -r {folder}" in first.stdout
    assert len(list((folder / "small").iterdir())) == 120
    again = demo(cache=cache)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "125 files: 124 skipped, 1 failed" in again.stderr
    assert "124 files were already complete from an earlier run and were skipped" in again.stdout
    assert "retrying" not in again.stderr


def test_demo_files_cover_the_interesting_cases() -> None:
    with testing.LocalServer() as server:
        files = sample_files(server)
    assert any(f.hash for f in files)
    assert any("fail=1" in f.url for f in files)
    assert any("status=404" in f.url for f in files)
    paths = [str(f.path) for f in files if f.path is not None]
    assert len(paths) == len(set(paths))
