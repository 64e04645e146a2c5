"""``rheo-nb demo``: the whole job on a bundled local server, no internet needed.

The files go to a folder in the user's cache that the next run reuses, so a second run
shows what a re-run does: every complete file is skipped (the large ones checked against
their hash first), and only the file that fails on purpose is tried again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .api import fetch_sync
from .display import ProgressArg
from .items import File
from .results import Results
from .testing import LocalServer

MiB = 1 << 20
#: The one file that fails on purpose: the server answers 404.
MISSING = "missing.bin"
#: The file whose first request fails (503): the display shows the retry.
FLAKY = "flaky.bin"


def default_dest() -> Path:
    """``$XDG_CACHE_HOME/rheo_nb/demo``, else ``~/.cache/rheo_nb/demo``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "rheo_nb" / "demo"


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
    files.append(File(server.url(FLAKY, 2 * MiB, fail=1)))
    files.append(File(server.url(MISSING, status=404)))
    return files


def as_expected(results: Results) -> bool:
    """True when the only failure is the one on purpose."""
    return all(MISSING in o.url for o in results.failed)


def run(dest: str | Path | None = None, *, progress: ProgressArg = "auto") -> Results:
    """Serve the sample files, download them into ``dest`` and print what happened.

    :raises DestinationError: ``dest`` cannot be created or written.
    """
    folder = Path(dest) if dest is not None else default_dest()
    with LocalServer() as server:
        print(f"rheo_nb demo: serving sample files on {server.base_url}, saving to {folder}")
        sys.stdout.flush()  # before the progress on stderr starts
        results = fetch_sync(
            sample_files(server), folder, concurrency=8, progress=progress, backoff=0.2
        )
        flaky_requests = server.requests[FLAKY]
    print()
    print(results.table(max_rows=12, summary=False))
    print()
    counts = results.counts()
    if counts.get("skipped"):
        print(
            f"{counts['skipped']} files were already complete from an earlier run and were "
            "skipped (the large ones after checking their sha256)."
        )
    if flaky_requests > 1:
        print(f"{FLAKY} answered 503 at first: it was retried, and completed.")
    print(
        f"{MISSING} fails on purpose (the server answers 404), and the batch goes on.\n"
        f"All {len(results.ok)} other files are in {folder}"
        + (
            ": run the demo again to see a re-run skip them."
            if dest is None and not counts.get("skipped")
            else "."
        )
    )
    if dest is None:
        print(f"The demo keeps about 85 MB there; remove the folder when done: rm -r {folder}")
    return results
