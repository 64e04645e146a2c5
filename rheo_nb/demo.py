"""``rheo-nb demo``: the whole job on a bundled local server, no internet needed."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .api import fetch_sync
from .display import ProgressArg
from .items import File
from .results import Results
from .testing import LocalServer

MiB = 1 << 20


def sample_files(server: LocalServer) -> list[File]:
    """A few large files, many small ones, one that needs a retry and one that fails."""
    rate = 12 * MiB  # per connection, so the progress is there to see
    files = [
        File(
            server.url(f"large-{i}.bin", 24 * MiB, rate=rate),
            hash=server.hash(f"large-{i}.bin", 24 * MiB),
        )
        for i in range(3)
    ]
    files += [
        File(server.url(f"sample-{i:03d}.csv", 64 * 1024, rate=rate), f"small/sample-{i:03d}.csv")
        for i in range(120)
    ]
    files.append(File(server.url("flaky.bin", 2 * MiB, fail=1)))
    files.append(File(server.url("missing.bin", status=404)))
    return files


def run(dest: str | Path | None = None, *, progress: ProgressArg = "auto") -> Results:
    dest = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="rheo_nb-demo-"))
    with LocalServer() as server:
        print(f"rheo_nb demo: serving sample files on {server.base_url}, saving to {dest}")
        results = fetch_sync(
            sample_files(server), dest, concurrency=8, progress=progress, backoff=0.2
        )
    print()
    print(results.table(max_rows=12))
    expected_failures = [o for o in results.failed if "missing.bin" not in o.url]
    if expected_failures:
        raise SystemExit(f"demo: unexpected failures: {expected_failures}")
    print(
        f"\nAll {len(results.ok)} files are in {dest} "
        "(missing.bin fails on purpose: the server answers 404, and the batch goes on)."
    )
    return results
