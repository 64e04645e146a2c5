"""Extraction into a bucket: members streamed from the archive object by rheo_nb, against
"download the archive to disk, extract it there, upload the folder".

The archive is put into a local S3 server (SeaweedFS, :class:`rheo_nb.testing.S3Server`)
first; every case then runs in a fresh child process that reports its wall time, its
peak RSS and the local disk it needed:

* ``stream``: :func:`rheo_nb.objextract.extract_object`, what ``fetch(..., extract=True)``
  runs once an archive is in the bucket: ranged GETs of the archive, each member streamed
  into its own object, no local disk.
* ``disk+upload``: s3fs ``get`` of the archive into a temporary folder,
  :func:`rheo_nb.extract.extract` there (the same checks), s3fs ``put`` of the folder.

Scenarios: ``many`` (a tar.gz of 2,000 members of 32 KiB), ``large`` (a tar of 4 members
of 64 MiB). Random bytes, so compression does not shrink them.

Run with ``pip install -e '.[s3,test]'``::

    .venv/bin/python benchmarks/extract_to_bucket.py            # about 2 minutes
    .venv/bin/python benchmarks/extract_to_bucket.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

KiB, MiB = 1 << 10, 1 << 20
BUCKET = "bench-extract"


def members_of(scenario: str, quick: bool) -> list[tuple[str, int]]:
    if scenario == "many":
        return [(f"m/{i:04d}.bin", 32 * KiB) for i in range(200 if quick else 2000)]
    return [(f"l/{i}.bin", (16 if quick else 64) * MiB) for i in range(4)]


def archive(scenario: str, members: list[tuple[str, int]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(os.urandom(size)))
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=1) if scenario == "many" else data


# --- one case, in a child process -----------------------------------------------------------


def child(method: str) -> None:
    spec = json.loads(sys.stdin.read())
    options: dict[str, Any] = spec["storage_options"]
    key, prefix = spec["key"], spec["prefix"]
    disk = 0
    t0 = time.perf_counter()
    if method == "stream":
        from rheo_nb.destination import Unpacking
        from rheo_nb.objextract import extract_object
        from rheo_nb.objstore import Bucket

        async def run() -> None:
            async with Bucket(f"s3://{BUCKET}/", options) as bucket:
                how = Unpacking(False, False, None, 1_000_000, lambda m, t: None, key)
                folder = bucket.key(prefix)
                await extract_object(bucket, bucket.url(key), folder, how, parts_in_flight=4)

        asyncio.run(run())
    else:
        import s3fs

        from rheo_nb.extract import extract

        fs = s3fs.S3FileSystem(**options)
        with tempfile.TemporaryDirectory(dir=spec["disk"]) as folder:
            local = Path(folder) / Path(key).name
            fs.get(f"{BUCKET}/{key}", str(local))
            out = extract(local, Path(folder) / "out")
            disk = local.stat().st_size + out.bytes
            fs.put(str(out.target) + "/", f"{BUCKET}/{prefix}/", recursive=True)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "rss": peak_rss() / MiB, "disk": disk / MiB}))


def peak_rss() -> int:
    """This process's peak RSS in bytes. ``VmHWM`` belongs to the program since its exec,
    where ``ru_maxrss`` also counts the parent it was forked from (here, one that holds
    the archive)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KiB


def run_case(method: str, spec: dict[str, Any]) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def check(client: Any, prefix: str, members: list[tuple[str, int]]) -> None:
    """Every member is there with its size; then the prefix is emptied for the next run."""
    listed: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        listed |= {o["Key"]: o["Size"] for o in page.get("Contents", [])}
    want = {f"{prefix}/{name}": size for name, size in members}
    if listed != want:
        raise SystemExit(f"{prefix}: {len(listed)} objects, not the {len(want)} expected")
    keys = list(listed)
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": batch})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child")
    a = parser.parse_args()
    if a.child:
        child(a.child)
        return
    from rheo_nb.testing import S3Server

    disk = Path(tempfile.mkdtemp(prefix="rheo-nb-extract-disk-"))
    rows = []
    with S3Server() as s3:
        s3.create_bucket(BUCKET)
        client = s3.client()
        for scenario in ("many", "large"):
            members = members_of(scenario, a.quick)
            data = archive(scenario, members)
            key = f"archives/{scenario}.tar" + (".gz" if scenario == "many" else "")
            client.put_object(Bucket=BUCKET, Key=key, Body=data)
            for method in ("stream", "disk+upload"):
                seen = []
                for i in range(a.runs):
                    prefix = f"out/{scenario}-{method.replace('+', '-')}-{i}"
                    spec = {
                        "storage_options": s3.storage_options,
                        "key": key,
                        "prefix": prefix,
                        "disk": str(disk),
                    }
                    seen.append(run_case(method, spec))
                    check(client, prefix, members)
                    client.delete_objects(  # the stream's extraction record
                        Bucket=BUCKET,
                        Delete={"Objects": [{"Key": k["Key"]} for k in client.list_objects_v2(
                            Bucket=BUCKET, Prefix="out/.rheo_nb/"
                        ).get("Contents", [])] or [{"Key": "none"}]},
                    )
                wall = statistics.median(r["wall"] for r in seen)
                rss = statistics.median(r["rss"] for r in seen)
                used = max(r["disk"] for r in seen)
                size = sum(n for _, n in members)
                rows.append((scenario, len(data), method, wall, size / wall / 1e6, rss, used))
                print(f"{scenario:6} {method:12} {wall:7.2f} s  {rss:6.0f} MiB", flush=True)
    print("\n| archive | method | seconds | MB/s written | peak RSS MiB | local disk MiB |")
    print("|---|---|---|---|---|---|")
    for scenario, nbytes, method, wall, rate, rss, used in rows:
        what = f"{scenario} ({nbytes / MiB:.0f} MiB)"
        print(f"| {what} | {method} | {wall:.2f} | {rate:.0f} | {rss:.0f} | {used:.0f} |")


if __name__ == "__main__":
    main()
