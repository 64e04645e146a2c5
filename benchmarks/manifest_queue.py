#!/usr/bin/env python3
"""Time and peak memory to read a large Parquet manifest and queue it for download.

Writes a Parquet table of N rows (url, path, sha256; default one million), then measures,
each in a fresh process so that one step's memory does not hide in another's peak:

* ``read``: ``read_manifest`` (which checks every row) and one pass over the rows;
* ``queue``: ``read_manifest``, then ``DownloadManager.add`` of the lazy sequence (which
  the manager reads as its downloads go, a batch at a time): the rows counted in the
  totals at once, then cancelled;
* ``queue-list``: the same from a ``list`` of the rows (every row planned up front);
* ``offline``: every row through the manager to its outcome, with ``offline=True`` (the
  claim of each file, no request): what a whole run holds, one outcome per row included.

The URLs point at a socket on 127.0.0.1 that listens but never answers, so queueing is
measured, not downloading.

    python benchmarks/manifest_queue.py [--rows 1000000] [--keep data.parquet]

Needs pyarrow (``pip install 'rheo_nb[parquet]'``) and Linux (``/proc``). Peak RSS is the
process's high-water mark (``VmHWM``), interpreter and imports included; the baseline
after ``import rheo_nb`` is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mib(field: str = "VmHWM") -> float:
    """Peak (``VmHWM``) or current (``VmRSS``) resident memory of this process. Not
    ``ru_maxrss``: on Linux it carries the parent's peak across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def write_table(path: Path, rows: int, port: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    step = 100_000
    for start in range(0, rows, step):
        ids = range(start, min(rows, start + step))
        batch = pa.table(
            {
                "url": [f"http://127.0.0.1:{port}/images/{i:08d}.jpg" for i in ids],
                "path": [f"images/{i % 1000:03d}/{i:08d}.jpg" for i in ids],
                "hash": [f"sha256:{i:064x}" for i in ids],
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(path, batch.schema)
        writer.write_table(batch)
    assert writer is not None
    writer.close()


def measure(step: str, path: Path) -> dict[str, float]:
    """One step, in this process."""
    import rheo_nb

    base = rss_mib("VmRSS")
    t0 = time.perf_counter()
    files = rheo_nb.read_manifest(path)
    checked = time.perf_counter() - t0
    if step == "read":
        count = sum(1 for _ in files)
    else:
        items = list(files) if step == "queue-list" else files

        async def queue() -> int:
            with tempfile.TemporaryDirectory() as dest:
                offline = step == "offline"
                async with rheo_nb.DownloadManager(dest, concurrency=8, offline=offline) as m:
                    await m.add(items)
                    queued = m.stats.files
                    if offline:
                        return len(await m.wait())
                    await m.cancel_all()
                    return queued

        count = asyncio.run(queue())
    return {
        "rows": count,
        "read_s": checked,
        "total_s": time.perf_counter() - t0,
        "base_mib": base,
        "peak_mib": rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="write the table here and keep it")
    parser.add_argument("--steps", default="read,queue,queue-list")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.table)))
        return

    # A listener that never accepts: connections wait in its backlog, nothing is served.
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = silent.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        table = args.keep or Path(tmp, "manifest.parquet")
        t0 = time.perf_counter()
        write_table(table, args.rows, port)
        size = table.stat().st_size / 2**20
        print(
            f"{args.rows:,} rows, {size:.1f} MiB of Parquet, written in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        print(
            f"{'step':<11} {'rows':>10} {'read+check':>11} {'total':>8} {'baseline':>9} "
            f"{'peak RSS':>9}"
        )
        for step in args.steps.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--measure", step, "--table", str(table)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{step:<11} {int(r['rows']):>10,} {r['read_s']:>10.1f}s {r['total_s']:>7.1f}s "
                f"{r['base_mib']:>6.0f} MiB {r['peak_mib']:>5.0f} MiB"
            )
    silent.close()


if __name__ == "__main__":
    main()
