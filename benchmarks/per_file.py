#!/usr/bin/env python3
"""rheo_nb's own cost per small file, in one process, after warm-up.

    python benchmarks/per_file.py                  # 20,000 x 32 KiB, 3 runs
    python benchmarks/per_file.py --files 5000 --runs 5 --profile out.prof

Starts the nginx of ``bench.py`` (Debian's ``nginx``), then calls ``rheo_nb.fetch`` from
a running loop, as a notebook cell does, on the same files each run (into an emptied
folder, so every file is downloaded). A run of the naive aiohttp client (one session, a
semaphore, a plain ``open().write()``) in the same process gives the HTTP work alone;
the difference is rheo_nb's own bookkeeping. Prints milliseconds per file (wall time of
the whole call divided by the files) and the CPU time of the process.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
import bench  # noqa: E402

import rheo_nb  # noqa: E402

KiB = 1 << 10


async def naive(urls: list[str], out: Path, conc: int) -> None:
    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession() as session:

        async def one(url: str) -> None:
            async with sem, session.get(url) as resp:
                resp.raise_for_status()
                data = await resp.read()
            with open(out / url.rsplit("/", 1)[1], "wb") as f:
                f.write(data)

        await asyncio.gather(*(one(u) for u in urls))


async def rheo(urls: list[str], out: Path, conc: int) -> None:
    results = await rheo_nb.fetch(urls, out, concurrency=conc, progress=False)
    assert len(results.ok) == len(urls), results


async def timed(kind: str, urls: list[str], out: Path, conc: int) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    wall, cpu = time.perf_counter(), time.process_time()
    await (rheo if kind == "rheo_nb" else naive)(urls, out, conc)
    return time.perf_counter() - wall, time.process_time() - cpu


async def main(args: argparse.Namespace, base: str, out: Path) -> None:
    names = [f"A/f{i:05d}.bin" for i in range(args.files)]
    urls = [f"{base}/{n}" for n in names]
    warm = urls[: min(500, len(urls))]
    await timed("rheo_nb", warm, out, args.conc)
    await timed("naive", warm, out, args.conc)
    results: dict[str, list[tuple[float, float]]] = {"rheo_nb": [], "naive": []}
    for _ in range(args.runs):
        for kind in results:
            results[kind].append(await timed(kind, urls, out, args.conc))
    n = len(urls)
    print(
        f"\n{n} x {args.size // KiB} KiB, concurrency {args.conc}, median of {args.runs} runs, "
        f"load average {os.getloadavg()[0]:.2f}, {sys.implementation.name} "
        f"{sys.version.split()[0]}, loop {type(asyncio.get_running_loop()).__module__}\n"
    )
    print("| client | ms per file (wall) | min-max | CPU ms per file |")
    print("|---|---|---|---|")
    for kind, runs in results.items():
        walls = [w / n * 1000 for w, _ in runs]
        cpus = [c / n * 1000 for _, c in runs]
        print(
            f"| {kind} | {statistics.median(walls):.3f} | {min(walls):.3f}-{max(walls):.3f} | "
            f"{statistics.median(cpus):.3f} |"
        )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        await timed("rheo_nb", urls, out, args.conc)
        profiler.disable()
        profiler.dump_stats(args.profile)
        print(f"\nprofile of one rheo_nb run: {args.profile}")


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=32 * KiB)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--profile", metavar="FILE", help="also profile one rheo_nb run")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (the speed extra)")
    parser.add_argument("--tmp", default=os.environ.get("RHEO_BENCH_TMP", "/dev/shm/rheo_nb-bench"))
    args = parser.parse_args()
    tmp = Path(args.tmp)
    data, state = tmp / "data", Path(tempfile.mkdtemp(prefix="rheo_nb-perfile-"))
    bench.make_data(data, [(f"A/f{i:05d}.bin", args.size) for i in range(args.files)])
    nginx, ports = bench.start_nginx(state, data)
    try:
        runner = rheo_nb.runner.new_event_loop if args.uvloop else asyncio.new_event_loop
        with asyncio.Runner(loop_factory=runner) as loop:
            loop.run(main(args, f"http://127.0.0.1:{ports['plain']}", tmp / "out" / "per_file"))
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        shutil.rmtree(tmp / "out" / "per_file", ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
