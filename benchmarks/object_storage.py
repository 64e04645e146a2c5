"""Streaming into S3: obstore against fsspec (s3fs) against rheo_nb's own multipart sink.

Every case runs in a fresh child process against one local S3 server (SeaweedFS, started
here unless ``--endpoint`` names another), and reports wall time and the child's peak RSS
(and its RSS before the transfer: the libraries' own weight).

* ``big``: a body of ``--size`` bytes (1 GiB), generated in memory and handed over in
  chunks of 128 KiB to 1 MiB (as an HTTP body arrives), streamed into one multipart
  upload of ``--part`` byte parts with ``--inflight`` parts uploading at once.
* ``small``: ``--count`` objects (2,000) of ``--small`` bytes (32 KiB), 16 at a time.

Writers:

* ``obstore``: ``obstore.put_async`` from an async iterator (``chunk_size``=part,
  ``max_concurrency``=inflight); small objects with ``store.put_async``.
* ``s3fs-file``: the fsspec way: ``fs.open(path, "wb", block_size=part)`` and ``write``;
  small objects with ``fs.pipe`` (s3fs puts them concurrently).
* ``rheo_nb``: :class:`rheo_nb.objstore.MultipartUpload` (aiobotocore, through the client
  s3fs builds from ``storage_options``); small objects through the same client.

Run with ``pip install -e '.[s3,test]' obstore``::

    .venv/bin/python benchmarks/object_storage.py            # about 3 minutes
    .venv/bin/python benchmarks/object_storage.py --quick    # 128 MiB and 200 objects
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

MiB = 1 << 20
WRITERS = ("obstore", "s3fs-file", "rheo_nb")
SMALL_CONCURRENCY = 16


def rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MiB


# --- the body ----------------------------------------------------------------------------


def chunk_sizes(total: int, seed: int = 7) -> Iterator[int]:
    rng = random.Random(seed)
    left = total
    while left:
        n = min(left, rng.randint(128 << 10, MiB))
        yield n
        left -= n


# Made in blocks: one randbytes(8 MiB) would briefly need three times that.
_POOL = b"".join(random.Random(i).randbytes(64 << 10) for i in range(128))


def chunks(total: int) -> Iterator[bytes]:
    """Fresh bytes objects, as an HTTP client hands them over."""
    pos = 0
    for n in chunk_sizes(total):
        start = pos % (len(_POOL) - MiB)
        yield _POOL[start : start + n]
        pos += n


async def achunks(total: int) -> AsyncIterator[bytes]:
    for c in chunks(total):
        yield c
        await asyncio.sleep(0)  # a network read gives the loop a turn


# --- the writers (run in the child) -----------------------------------------------------


def obstore_store(opts: dict[str, Any], bucket: str) -> Any:
    from obstore.store import S3Store

    return S3Store(
        bucket,
        endpoint=opts["endpoint_url"],
        access_key_id=opts["key"],
        secret_access_key=opts["secret"],
        region=opts["client_kwargs"]["region_name"],
        client_options={"allow_http": True},
    )


async def big_obstore(opts: dict[str, Any], bucket: str, key: str, a: argparse.Namespace) -> None:
    import obstore

    store = obstore_store(opts, bucket)
    await obstore.put_async(
        store, key, achunks(a.size), chunk_size=a.part, max_concurrency=a.inflight
    )


async def big_s3fs(opts: dict[str, Any], bucket: str, key: str, a: argparse.Namespace) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)

    def write() -> None:
        with fs.open(f"{bucket}/{key}", "wb", block_size=a.part) as f:
            for c in chunks(a.size):
                f.write(c)

    await asyncio.to_thread(write)


async def big_rheo(opts: dict[str, Any], bucket: str, key: str, a: argparse.Namespace) -> None:
    from rheo_nb import objstore

    async with objstore.Bucket(f"s3://{bucket}/", opts, part_size=a.part) as b:
        up = await b.upload(key, url="bench://big", parts_in_flight=a.inflight, resume=False)
        await up.start('"v1"', a.size, continuing=False)
        try:
            batch: list[bytes] = []
            n = 0
            for c in chunks(a.size):  # the transfer hands over ~1 MiB write batches
                batch.append(c)
                n += len(c)
                if n >= MiB:
                    await up.append(batch)
                    batch, n = [], 0
                await asyncio.sleep(0)
            await up.append(batch)
            await up.commit()
        except BaseException:
            await up.abort()
            raise


async def small_obstore(opts: dict[str, Any], bucket: str, a: argparse.Namespace) -> None:
    store = obstore_store(opts, bucket)
    sem = asyncio.Semaphore(SMALL_CONCURRENCY)
    body = _POOL[: a.small]

    async def one(i: int) -> None:
        async with sem:
            await store.put_async(f"small/{i}.bin", body)

    await asyncio.gather(*(one(i) for i in range(a.count)))


async def small_s3fs(opts: dict[str, Any], bucket: str, a: argparse.Namespace) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, asynchronous=True, **opts)
    await fs.set_session()
    body = _POOL[: a.small]
    await fs._pipe(
        {f"{bucket}/small/{i}.bin": body for i in range(a.count)}, batch_size=SMALL_CONCURRENCY
    )


async def small_rheo(opts: dict[str, Any], bucket: str, a: argparse.Namespace) -> None:
    from rheo_nb import objstore

    sem = asyncio.Semaphore(SMALL_CONCURRENCY)
    body = _POOL[: a.small]
    async with objstore.Bucket(f"s3://{bucket}/", opts) as b:

        async def one(i: int) -> None:
            async with sem:
                await b.put(f"small/{i}.bin", body)

        await asyncio.gather(*(one(i) for i in range(a.count)))


BIG = {"obstore": big_obstore, "s3fs-file": big_s3fs, "rheo_nb": big_rheo}
SMALL = {"obstore": small_obstore, "s3fs-file": small_s3fs, "rheo_nb": small_rheo}


def child(a: argparse.Namespace) -> None:
    opts = json.loads(a.child_opts)
    # Import the writer's libraries before measuring the baseline.
    for module in {"obstore": ["obstore"], "s3fs-file": ["s3fs"]}.get(
        a.writer, ["s3fs", "rheo_nb.objstore"]
    ):
        importlib.import_module(module)
    base = current_rss_mib()
    run: Any = asyncio.run
    if a.uvloop:
        import uvloop

        run = uvloop.run
    t0 = time.perf_counter()
    if a.scenario == "big":
        run(BIG[a.writer](opts, a.bucket, "big.bin", a))
    else:
        run(SMALL[a.writer](opts, a.bucket, a))
    print(json.dumps({"seconds": time.perf_counter() - t0, "rss": rss_mib(), "base": base}))


# --- the parent ------------------------------------------------------------------------------


def run_case(
    a: argparse.Namespace, opts: dict[str, Any], writer: str, scenario: str
) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", writer, scenario, "--child-opts", json.dumps(opts)]
    argv += ["--bucket", a.bucket, "--size", str(a.size), "--part", str(a.part)]
    argv += ["--inflight", str(a.inflight), "--count", str(a.count), "--small", str(a.small)]
    argv += ["--uvloop"] if a.uvloop else []
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
    lines = out.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise SystemExit(f"{writer} {scenario} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = dict(json.loads(lines[-1]))
    # The transfer is over and measured; a crash on the way out is reported, not hidden
    # (obstore 0.12 aborts at interpreter exit after some large uploads).
    result["exit"] = out.returncode
    return result


def check_and_empty(client: Any, bucket: str, scenario: str, a: argparse.Namespace) -> None:
    """The objects are all there, whole; then the bucket is emptied for the next case."""
    if scenario == "big":
        head = client.head_object(Bucket=bucket, Key="big.bin")
        assert head["ContentLength"] == a.size, head["ContentLength"]
        client.delete_object(Bucket=bucket, Key="big.bin")
    else:
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Size"] == a.small]
        assert len([k for k in keys if k.startswith("small/")]) == a.count, len(keys)
        for i in range(0, len(keys), 1000):
            client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]}
            )
    pending = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert not pending, f"{len(pending)} multipart uploads left behind"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("WRITER", "SCENARIO"))
    ap.add_argument("--child-opts", default="{}")
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--size", type=int, default=1024 * MiB)
    ap.add_argument("--part", type=int, default=8 * MiB)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--small", type=int, default=32 << 10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--writers", default=",".join(WRITERS))
    ap.add_argument("--quick", action="store_true", help="128 MiB and 200 objects, 1 run")
    ap.add_argument("--uvloop", action="store_true", help="run the writers on uvloop")
    a = ap.parse_args()
    if a.child:
        a.writer, a.scenario = a.child
        child(a)
        return
    if a.quick:
        a.size, a.count, a.reps = 128 * MiB, 200, 1
    from rheo_nb.testing import S3Server

    with S3Server() as server:
        server.create_bucket(a.bucket)
        client = server.client()
        opts = server.storage_options
        print(
            f"# {a.size / MiB:.0f} MiB in parts of {a.part / MiB:.0f} MiB, {a.inflight} in "
            f"flight; {a.count} x {a.small >> 10} KiB, {SMALL_CONCURRENCY} at once; "
            f"median of {a.reps}"
        )
        print("| writer | scenario | seconds | MB/s or objects/s | peak RSS MiB | RSS before MiB |")
        print("|---|---|---|---|---|---|")
        for scenario in ("big", "small"):
            for writer in a.writers.split(","):
                runs = []
                for _ in range(a.reps):
                    runs.append(run_case(a, opts, writer, scenario))
                    check_and_empty(client, a.bucket, scenario, a)
                secs = statistics.median(r["seconds"] for r in runs)
                rate = (
                    f"{a.size / secs / 1e6:.0f} MB/s"
                    if scenario == "big"
                    else f"{a.count / secs:.0f}/s"
                )
                rss = max(r["rss"] for r in runs)
                base = max(r["base"] for r in runs)
                exits = sorted({r["exit"] for r in runs} - {0})
                note = f" (exit {exits} after the transfer)" if exits else ""
                print(
                    f"| {writer} | {scenario} | {secs:.2f} | {rate} | {rss:.0f} | {base:.0f} |"
                    + note,
                    flush=True,
                )


if __name__ == "__main__":
    main()
