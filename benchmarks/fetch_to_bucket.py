"""Downloads into a bucket: streamed by rheo_nb, against "download to disk, then upload".

From a local nginx (started here, as ``bench.py`` does, files on /dev/shm) to a local S3
server (SeaweedFS, :class:`rheo_nb.testing.S3Server`), every case in a fresh child
process that reports its wall time and peak RSS:

* ``stream``: ``rheo_nb.fetch_sync(urls, "s3://bench/…", storage_options=…)``: each
  body streams into a multipart upload (a large file over several connections, its
  ranges on part boundaries).
* ``stream+sha256``: the same with the file's hash given (checked while streaming, so
  one connection: see the object-storage docs).
* ``disk+upload``: ``rheo_nb.fetch_sync`` into a folder on the local disk, then the same
  S3 library (s3fs, over aiobotocore) uploads the folder (``fs.put(…, recursive=True)``).

Scenarios: ``big`` (one 1 GiB file), ``small`` (2,000 × 32 KiB), ``capped`` (one 256 MiB
file from a server that sends 25 MiB/s per connection, as many public servers do: what a
hash costs when it keeps the file on one connection).

Run with ``pip install -e '.[s3,test]'`` and Debian's nginx + libnginx-mod-http-echo::

    .venv/bin/python benchmarks/fetch_to_bucket.py               # about 6 minutes
    .venv/bin/python benchmarks/fetch_to_bucket.py --quick       # 128 MiB, 200 files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import start_nginx  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BUCKET = "bench"
METHODS = {
    "big": ("stream", "stream+sha256", "disk+upload"),
    "small": ("stream", "disk+upload"),
    "capped": ("stream", "stream+sha256"),
}


def files_of(scenario: str, quick: bool) -> list[tuple[str, int]]:
    if scenario == "small":
        return [(f"small/f{i:04d}.bin", 32 * KiB) for i in range(200 if quick else 2000)]
    if scenario == "capped":
        return [("capped/one.bin", (64 if quick else 256) * MiB)]
    return [("big/one.bin", (128 if quick else 1024) * MiB)]


def make_files(root: Path, files: list[tuple[str, int]]) -> dict[str, str]:
    """Write the files under ``root``; their sha256, by name."""
    hashes = {}
    for name, size in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        h = hashlib.sha256()
        with path.open("wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 8 * MiB))
                f.write(block)
                h.update(block)
                left -= len(block)
        hashes[name] = f"sha256:{h.hexdigest()}"
    return hashes


# --- one case, in a child process -----------------------------------------------------------


def child(a: argparse.Namespace) -> None:
    import rheo_nb

    spec = json.loads(sys.stdin.read())
    options: dict[str, Any] = spec["storage_options"]
    urls: list[str] = spec["urls"]
    dest = f"s3://{BUCKET}/{spec['prefix']}"
    common = {"progress": False, "concurrency": 16 if len(urls) > 1 else 8}
    t0 = time.perf_counter()
    if a.method == "disk+upload":
        import s3fs

        with tempfile.TemporaryDirectory(dir=spec["disk"]) as folder:
            res = rheo_nb.fetch_sync(urls, folder, **common)
            res.raise_for_errors()
            fs = s3fs.S3FileSystem(**options)
            fs.put(folder + "/", f"{BUCKET}/{spec['prefix']}/", recursive=True)
    else:
        items: Any = urls
        if a.method == "stream+sha256":
            items = dict(zip(urls, spec["hashes"], strict=True))
        res = rheo_nb.fetch_sync(items, dest, storage_options=options, **common)
        res.raise_for_errors()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall": wall, "rss": peak}))


def run_case(method: str, spec: dict[str, Any]) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method],
        input=json.dumps(spec),  # 2,000 URLs do not fit in an argument list
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def check(client: Any, prefix: str, files: list[tuple[str, int]]) -> None:
    """Every object is there with its size; then the prefix is emptied for the next run."""
    listed: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        listed |= {o["Key"]: o["Size"] for o in page.get("Contents", [])}
    want = {f"{prefix}/{Path(name).name}": size for name, size in files}
    if listed != want:
        raise SystemExit(f"{prefix}: {len(listed)} objects, not the {len(want)} expected")
    uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    if uploads:
        raise SystemExit(f"{prefix}: {len(uploads)} multipart uploads left open")
    keys = list(listed)
    for i in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": batch})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="big,small,capped")
    parser.add_argument("--methods", default="", help="only these, comma-separated")
    parser.add_argument("--child")
    parser.add_argument("--method")
    a = parser.parse_args()
    if a.child:
        a.method = a.child
        child(a)
        return
    from rheo_nb.testing import S3Server

    shm = Path(tempfile.mkdtemp(prefix="rheo-nb-bucket-bench-", dir="/dev/shm"))
    shm.chmod(0o755)  # nginx's workers read the files as another user
    disk = Path(tempfile.mkdtemp(prefix="rheo-nb-bucket-disk-"))
    nginx = None
    try:
        with S3Server() as s3:
            s3.create_bucket(BUCKET)
            client = s3.client()
            root = shm / "www"
            nginx, ports = start_nginx(shm / "nginx", root)
            rows = []
            for scenario in a.scenarios.split(","):
                files = files_of(scenario, a.quick)
                hashes = make_files(root, files)
                port = ports["capped" if scenario == "capped" else "plain"]
                urls = [f"http://127.0.0.1:{port}/{name}" for name, _ in files]
                runs = 1 if scenario == "capped" else a.runs
                chosen = [m for m in METHODS[scenario] if not a.methods or m in a.methods]
                for method in chosen:
                    seen = []
                    for i in range(runs):
                        prefix = f"{scenario}-{method.replace('+', '-')}-{i}"
                        spec = {
                            "storage_options": s3.storage_options,
                            "urls": urls,
                            "hashes": [hashes[n] for n, _ in files],
                            "prefix": prefix,
                            "disk": str(disk),
                        }
                        seen.append(run_case(method, spec))
                        check(client, prefix, files)
                    wall = statistics.median(r["wall"] for r in seen)
                    rss = statistics.median(r["rss"] for r in seen)
                    size = sum(n for _, n in files)
                    rows.append((scenario, method, wall, size / wall / 1e6, rss, runs))
                    print(f"{scenario:7} {method:14} {wall:7.2f} s  {rss:6.0f} MiB", flush=True)
                shutil.rmtree(root / scenario)
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    print("\n| scenario | method | seconds | MB/s | peak RSS MiB | runs |")
    print("|---|---|---|---|---|---|")
    for scenario, method, wall, rate, rss, runs in rows:
        print(f"| {scenario} | {method} | {wall:.2f} | {rate:.0f} | {rss:.0f} | {runs} |")


if __name__ == "__main__":
    main()
