#!/usr/bin/env python3
"""Why rheo_nb batches its file work into one thread hop per step instead of using aiofiles.

Writes N small files from 16 concurrent tasks, each file as a download does at its end:
create the part file, write the body, close, rename to the final name. Two ways:

* ``batched``: one ``asyncio.to_thread`` call does all four (what rheo_nb does);
* ``aiofiles``: ``aiofiles.open`` / ``write`` / ``close`` and ``aiofiles.os.replace``,
  one executor hop each (the library's natural use).

    python benchmarks/file_hops.py [--files 2000] [--size 32768] [--dir /dev/shm]

Needs ``aiofiles`` (``pip install aiofiles``); it is not a dependency of rheo_nb.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def write_batched(part: Path, final: Path, body: bytes) -> None:
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    os.replace(part, final)


async def batched(folder: Path, n: int, body: bytes, conc: int) -> None:
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            await asyncio.to_thread(write_batched, folder / f"{i}.part", folder / f"{i}.bin", body)

    await asyncio.gather(*(one(i) for i in range(n)))


async def with_aiofiles(folder: Path, n: int, body: bytes, conc: int) -> None:
    import aiofiles
    import aiofiles.os

    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            part = folder / f"{i}.part"
            async with aiofiles.open(part, "wb") as f:
                await f.write(body)
            await aiofiles.os.replace(part, folder / f"{i}.bin")

    await asyncio.gather(*(one(i) for i in range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32 * 1024)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    body = os.urandom(args.size)
    times: dict[str, list[float]] = {"batched": [], "aiofiles": []}
    for _ in range(args.runs):
        for name, fn in (("batched", batched), ("aiofiles", with_aiofiles)):
            folder = Path(tempfile.mkdtemp(dir=args.dir))
            t0 = time.perf_counter()
            asyncio.run(fn(folder, args.files, body, args.conc))
            times[name].append(time.perf_counter() - t0)
            shutil.rmtree(folder)
    print(f"{args.files} files x {args.size} B, {args.conc} tasks, median of {args.runs} runs:")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:9s} {med:.3f} s  ({med / args.files * 1e6:.0f} us per file)")


if __name__ == "__main__":
    main()
