#!/usr/bin/env python3
"""How close to the cap the rate stays, measured at the server, for ``max_rate``.

    python benchmarks/traffic.py                          # the full table, about 6 minutes
    python benchmarks/traffic.py --connections 1,32 --rates 8M --reps 1
    python benchmarks/traffic.py --fetch                  # through rheo_nb.fetch

Runs the rig of the test suite (``tests/traffic_rig.py``): plain aiohttp streams that
take tokens from one shared bucket before each read, or with ``--fetch`` rheo_nb.fetch
itself (``concurrency`` = the connections, files enough to keep them all busy),
downloading from a local server in its own thread, which records the bytes the client
acknowledged and when (``TIOCOUTQ``, so Linux only). For every connection count, file
size and cap it reports, over the 3 s windows after the first second (stepping by
0.25 s): the worst window's error against the cap (median and worst of the repetitions),
the mean error, and how much more than the cap reached the client in the first second,
per connection (kernel and aiohttp buffers filling). Then the cost of a grant on the hot
path. The machine is shared and noisy: compare figures within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from server import SharedServer
from traffic_rig import Measurement, measure, measure_fetch

from rheo_nb.options import parse_rate
from rheo_nb.traffic import TokenBucket


def sizes(text: str) -> list[int]:
    return [parse_rate(part) for part in text.split(",")]


def label(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


async def table(args: argparse.Namespace) -> None:
    print(
        f"| connections | file size | cap | worst window (median / worst of {args.reps}) "
        "| mean | ahead of the cap in the first second, per connection |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    with SharedServer() as shared:
        for rate in sizes(args.rates):
            for size in sizes(args.sizes):
                for connections in [int(c) for c in args.connections.split(",")]:
                    runs = [
                        await one(shared, args, connections, size, rate) for _ in range(args.reps)
                    ]
                    worst = [r.worst for r in runs]
                    mean = statistics.median(r.mean for r in runs)
                    ahead = statistics.median(r.first - rate for r in runs) / connections
                    print(
                        f"| {connections} | {label(size)} | {label(rate)}/s "
                        f"| {statistics.median(worst):+.1%} / {max(worst, key=abs):+.1%} "
                        f"| {mean:+.1%} | {label(max(0, int(ahead)))} |",
                        flush=True,
                    )


async def one(
    shared: SharedServer, args: argparse.Namespace, connections: int, size: int, rate: int
) -> Measurement:
    if not args.fetch:
        [seen] = await measure(
            [shared.view()],
            connections=connections,
            size=size,
            max_rate=rate,
            seconds=args.seconds,
            kernel_buffers=args.kernel_buffers,
        )
        return seen
    # Enough files for every connection to stream until the end of the run.
    files = connections + int(rate * (args.seconds + 1) / size) + 1
    with tempfile.TemporaryDirectory(prefix="rheo_nb-traffic-") as dest:
        [seen] = await measure_fetch(
            [shared.view()],
            Path(dest),
            connections=connections,
            size=size,
            files=files,
            max_rate=rate,
            seconds=args.seconds,
        )
    return seen


async def grant_cost(n: int = 200_000) -> float:
    """Seconds per ``take`` that need not wait (the common case with a generous cap)."""
    bucket = TokenBucket(1e15)
    start = time.perf_counter()
    for _ in range(n):
        await bucket.take(1 << 17)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1,4,16,32,64")
    parser.add_argument("--sizes", default="64M,256k", help="file sizes, as rates are written")
    parser.add_argument("--rates", default="8M,32M", help="caps, e.g. 8M (MiB/s) or 10MB/s")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.5)
    parser.add_argument(
        "--fetch",
        action="store_true",
        help="download with rheo_nb.fetch (concurrency = connections) instead of the rig",
    )
    parser.add_argument(
        "--kernel-buffers",
        action="store_true",
        help="leave receive buffers to the kernel's autotuning (no capped_socket)",
    )
    args = parser.parse_args()
    print(
        f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    asyncio.run(table(args))
    cost = asyncio.run(grant_cost())
    print(f"\nA grant that need not wait: {cost * 1e9:.0f} ns per take()")


if __name__ == "__main__":
    main()
