"""Soak: a few thousand files from a server that injects faults at random.

Afterwards every file at a final path matches its source byte for byte, every failure is
reported with its URL and cause, nothing is left on disk but finished files and
resumable partials, and memory stayed flat. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from faults import CHAOS, MISSING, Chaos, RssSampler, leftovers, read_partial, working_files
from server import FAST, Server

import rheo_nb
from rheo_nb import File, Status, files
from rheo_nb.segments import MIN_SEGMENT

FILES = 4_000
MISSING_FILES = 10
SEGMENTED_FILES = 3  # large enough to be split over several connections
FAULT_RATE = 0.04


def soak_items(server: Server) -> tuple[list[File], dict[str, int]]:
    rnd = random.Random(20_240_601)
    items: list[File] = []
    sizes: dict[str, int] = {}
    for i in range(FILES):
        name = f"{MISSING}-{i}.bin" if i < MISSING_FILES else f"f{i:04d}.bin"
        if MISSING_FILES <= i < MISSING_FILES + SEGMENTED_FILES:
            size = 2 * MIN_SEGMENT + rnd.randint(0, MIN_SEGMENT)
        elif rnd.random() < 0.1:
            size = rnd.randint(100_000, 600_000)
        else:
            size = rnd.randint(0, 40_000)
        sizes[name] = size
        hashed = i % 2 == 0
        url = server.route_url("chaos", name, size, h=1 if hashed else None)
        items.append(File(url, hash=server.hash(name, size) if hashed else None))
    return items, sizes


def cause(error: str) -> str:
    for pattern, label in [
        (r"HTTP 404", "HTTP 404 (missing on the server)"),
        (r"sha256 mismatch", "sha256 mismatch (garbage body)"),
        (r"length mismatch", "length mismatch"),
        (r"after \d+ attempts", "transient faults beyond the retries"),
    ]:
        if re.search(pattern, error):
            return label
    return "other"


@pytest.mark.slow
async def test_soak_thousands_of_files_under_random_faults(server: Server, dest: Path) -> None:
    chaos = CHAOS[server.tag] = Chaos(rate=FAULT_RATE, seed=7, stall=2.0)
    items, sizes = soak_items(server)
    t0 = time.monotonic()
    with RssSampler() as memory:
        res = await rheo_nb.fetch(
            items,
            dest,
            **{**FAST, "concurrency": 8, "retries": 3, "timeout": 0.5, "chunk_size": 16_384},
        )
    elapsed = time.monotonic() - t0

    # Every file at a final path is its source, byte for byte.
    finals = [dest / n for n in leftovers(dest) if not n.endswith((".part", ".part.json"))]
    corrupt = [p.name for p in finals if p.read_bytes() != server.content(p.name, sizes[p.name])]
    assert corrupt == []
    by_status = Counter(o.status for o in res)
    assert len(res) == FILES
    assert by_status[Status.COMPLETED] == len(finals)
    assert {o.path.name for o in res if o.status is Status.COMPLETED} == {p.name for p in finals}

    # Every failure says which URL and why; the missing files are among them.
    failed = [o for o in res if o.status is Status.FAILED]
    assert all(o.error and o.error.startswith(o.url + ": ") for o in failed)
    causes = Counter(cause(o.error or "") for o in failed)
    assert causes["other"] == 0, [o.error for o in failed]
    assert causes["HTTP 404 (missing on the server)"] == MISSING_FILES
    assert by_status[Status.COMPLETED] + len(failed) == FILES

    # Nothing left but finished files and resumable partials (each with its record).
    left = leftovers(dest)
    work = working_files(dest)
    parts = {p.stem for p in work if p.suffix == ".part"}
    assert parts == {p.stem for p in work if p.suffix == ".json"}
    kept = [Path(o.path) for o in failed if read_partial(Path(o.path)) is not None]
    assert {files.working_path(path, ".part").stem for path in kept} == parts
    assert all(getattr(read_partial(path), "record", None) for path in kept)
    assert len([n for n in left if files.WORKDIR not in n]) == len(finals)

    # Memory stayed flat: a few MiB of buffers per connection at most, whatever the total.
    assert memory.growth < 150 << 20
    quarter = len(memory.samples) // 4
    if quarter:  # no climb from the first quarter of the run to the last
        assert max(memory.samples[-quarter:]) - max(memory.samples[:quarter]) < 32 << 20

    print(
        f"\nsoak: {FILES} files, {sum(sizes.values()) / 1e6:.1f} MB in {elapsed:.1f} s; "
        f"faults injected {sum(chaos.injected.values())} {dict(sorted(chaos.injected.items()))}; "
        f"completed {by_status[Status.COMPLETED]}, failed {len(failed)} {dict(causes)}; "
        f"resumable partials left {len(parts)}; corrupt files found {len(corrupt)}; "
        f"RSS growth {memory.growth / 2**20:.1f} MiB"
    )
