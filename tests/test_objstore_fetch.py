"""Downloads into a bucket through the public API (``fetch``, ``fetch_sync``, ``start``,
``DownloadManager``), against a real S3 server on 127.0.0.1, checked through the S3 API:
the objects and their metadata, the multipart uploads left open, what the source saw."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from faults import child, closed_port, stream, wait_for
from s3 import S3Proxy, body, keys, pending
from server import FAST, Server, Spec, run_manager, send

import rheo_nb
from rheo_nb import (
    Completed,
    DestinationError,
    ObjectPath,
    OptionError,
    Restarted,
    Skipped,
    Started,
    Status,
    TextProgress,
)
from rheo_nb.objstore import PART_SIZE
from rheo_nb.testing import S3Server

MiB = 1 << 20
BIG = 2 * PART_SIZE + 12345  # three parts of a multipart upload


def where(bucket: str, prefix: str = "data") -> str:
    return f"s3://{bucket}/{prefix}"


def opts(s3_server: S3Server, **more: Any) -> dict[str, Any]:
    """``fetch`` options for the test server's buckets."""
    return {**FAST, "storage_options": s3_server.storage_options, **more}


def engine(s3_server: S3Server, **more: Any) -> dict[str, Any]:
    """The same for a ``DownloadManager`` (no display)."""
    return {k: v for k, v in opts(s3_server, **more).items() if k != "progress"}


def stored(s3: Any, bucket: str, key: str) -> dict[int, int]:
    """Part number → size of the parts stored in the open uploads of ``key``."""
    found: dict[int, int] = {}
    for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        if u["Key"] == key:
            listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=u["UploadId"])
            found |= {p["PartNumber"]: p["Size"] for p in listed.get("Parts", [])}
    return found


def stored_parts(s3: Any, bucket: str, key: str) -> int:
    """Bytes stored in the open upload of ``key`` (0 when there is none)."""
    return sum(stored(s3, bucket, key).values())


def a_part_stored(s3: Any, bucket: str, key: str) -> Callable[[], bool]:
    return lambda: stored_parts(s3, bucket, key) >= PART_SIZE


async def cancel_when(
    items: Any, s3_server: S3Server, bucket: str, ready: Callable[[], bool]
) -> None:
    """Run ``fetch`` into ``bucket`` and cancel it, as a kernel interrupt would, once
    ``ready()`` (a look at the bucket) says so."""
    task = asyncio.create_task(rheo_nb.fetch(items, where(bucket), **opts(s3_server)))
    try:
        await asyncio.to_thread(wait_for, ready, 30)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def cancel_job_when(url: str, s3_server: S3Server, bucket: str, ready: Callable[[], bool]) -> None:
    """The same with ``start()`` and ``job.cancel()``, one connection per file."""
    job = rheo_nb.start([url], where(bucket), **opts(s3_server, segments=1))
    try:
        wait_for(ready, 30)
    finally:
        job.cancel()
    with pytest.raises(asyncio.CancelledError):
        job.result(timeout=30)
    assert job.results_so_far[0].status is Status.CANCELLED


def parts_sent(proxy: S3Proxy) -> list[int]:
    """Numbers of the parts uploaded through ``proxy``, in order."""
    sent = [q for m, q in proxy.requests if m == "PUT" and "partNumber=" in q]
    return [int(q.split("partNumber=")[1].split("&")[0]) for q in sent]


def ranges(server: Server, name: str) -> list[str | None]:
    return [r.headers.get("Range") for r in server.requests(name)]


# --- the contract ------------------------------------------------------------------------------


async def test_fetch_streams_into_objects_under_the_prefix_and_reports_their_urls(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    small, big = server.url("a.csv", 1000), server.url("b.bin", BIG)
    items: list[str | rheo_nb.File] = [
        small,
        rheo_nb.File(big, "raw/2024/b.bin", hash=server.hash("b.bin", BIG)),
    ]
    res, seen = await run_manager(where(s3_bucket), items, **engine(s3_server))
    assert [o.status for o in res] == [Status.COMPLETED] * 2, res
    assert res.paths == [
        f"s3://{s3_bucket}/data/a.csv",
        f"s3://{s3_bucket}/data/raw/2024/b.bin",
    ]
    assert all(isinstance(p, ObjectPath) for p in res.paths)
    assert body(s3, s3_bucket, "data/a.csv") == server.content("a.csv", 1000)
    assert body(s3, s3_bucket, "data/raw/2024/b.bin") == server.content("b.bin", BIG)
    head = s3.head_object(Bucket=s3_bucket, Key="data/raw/2024/b.bin")
    assert head["Metadata"]["sha256"] == server.hash("b.bin", BIG).split(":")[1]
    # Nothing else: no upload left open, no resume record, nothing under a mangled name.
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/a.csv", "data/raw/2024/b.bin"]
    done = [e.path for e in seen if isinstance(e, Completed)]
    assert sorted(done) == sorted(res.paths)
    assert "raw/2024/b.bin" in res.table()
    assert "s3:/" not in res.table().replace("s3://", "")


async def test_a_rerun_skips_the_objects_without_asking_the_source(
    s3_server: S3Server, s3_bucket: str, server: Server
) -> None:
    items = {server.url("a.bin", BIG): server.hash("a.bin", BIG), server.url("b.bin"): None}
    first = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server))
    assert [o.status for o in first] == [Status.COMPLETED] * 2
    asked = server.count()
    again = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server))
    assert [o.status for o in again] == [Status.SKIPPED] * 2
    assert server.count() == asked  # verified by the object's metadata, not by a GET
    assert again.paths == first.paths
    assert [o.bytes for o in again] == [BIG, 100_000]


async def test_a_hash_mismatch_aborts_the_upload_and_leaves_nothing_at_the_key(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    wrong = server.hash("other.bin", BIG)
    items = {server.url("bad.bin", BIG): wrong, server.url("small.bin", 999): wrong}
    res = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server))
    assert [o.status for o in res] == [Status.FAILED] * 2
    assert all("sha256 mismatch" in (o.error or "") for o in res)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == []


async def test_a_stream_cut_midway_is_resumed_after_the_parts_stored(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # Inside the last part (a cut past the end would cut nothing: the second request was
    # then the split's probe, and under load a third range came too). One stream, as
    # the ranges of a split have tests of their own.
    cut = 2 * PART_SIZE + 6_000
    url = server.route_url("truncate", "cut.bin", BIG, cut=cut, times=1)
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server, segments=1))
    assert res[0].status is Status.COMPLETED, res[0].error
    # The retry asked only for what was not stored yet: from the part it was filling (or
    # from the cut, that part's bytes still in memory), never the stored parts again.
    first, retry = ranges(server, "cut.bin")
    assert first is None
    assert retry in (f"bytes={2 * PART_SIZE}-", f"bytes={cut}-"), retry
    assert body(s3, s3_bucket, "data/cut.bin") == server.content("cut.bin", BIG)
    assert pending(s3, s3_bucket) == []


async def test_retries_exhausted_abort_the_upload_so_nothing_is_billed(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = server.route_url("truncate", "gone.bin", BIG, cut=PART_SIZE + 10)
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server, retries=1))
    assert res[0].status is Status.FAILED
    assert "connection lost" in (res[0].error or "")
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == []


@pytest.mark.slow
def test_a_killed_run_is_resumed_by_the_next_one_asking_only_for_the_rest(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = server.route_url("slowstart", "killed.bin", BIG, rate=6 * MiB)
    options = {"storage_options": s3_server.storage_options, "segments": 1}
    proc = child(url, where(s3_bucket), **options)  # type: ignore[arg-type]
    try:
        wait_for(lambda: stored_parts(s3, s3_bucket, "data/killed.bin") >= PART_SIZE, 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    stored = stored_parts(s3, s3_bucket, "data/killed.bin")
    assert stored % PART_SIZE == 0
    assert 0 < stored < BIG
    assert "data/killed.bin" not in keys(s3, s3_bucket)
    res = rheo_nb.fetch_sync([url], where(s3_bucket), **opts(s3_server))
    assert res[0].status is Status.COMPLETED, res[0].error
    assert ranges(server, "killed.bin")[-1] == f"bytes={stored}-"
    assert body(s3, s3_bucket, "data/killed.bin") == server.content("killed.bin", BIG)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/killed.bin"]


def test_start_then_cancel_keeps_the_upload_and_a_rerun_resumes_it(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = server.route_url("slowstart", "job.bin", BIG, rate=6 * MiB)
    cancel_job_when(url, s3_server, s3_bucket, a_part_stored(s3, s3_bucket, "data/job.bin"))
    assert pending(s3, s3_bucket) == ["data/job.bin"]  # kept for the rerun
    stored = stored_parts(s3, s3_bucket, "data/job.bin")
    res = rheo_nb.fetch_sync([url], where(s3_bucket), **opts(s3_server))
    assert res[0].status is Status.COMPLETED, res[0].error
    assert ranges(server, "job.bin")[-1] == f"bytes={stored}-"
    assert body(s3, s3_bucket, "data/job.bin") == server.content("job.bin", BIG)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/job.bin"]


async def test_a_cancelled_download_with_a_hash_rereads_the_start_but_uploads_only_the_rest(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # The hash must see every byte, and S3 cannot read back an unfinished upload: the
    # rerun asks for the file from byte 0 (If-Range), and the parts already stored are
    # checked by their MD5 rather than sent again.
    url = server.route_url("slowstart", "h.bin", BIG, rate=6 * MiB)
    digest, key = server.hash("h.bin", BIG), "data/h.bin"
    await cancel_when(
        {url: digest}, s3_server, s3_bucket, a_part_stored(s3, s3_bucket, "data/h.bin")
    )
    stored = stored_parts(s3, s3_bucket, key)
    with S3Proxy(s3_server.endpoint_url) as proxy:
        options = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        res, seen = await run_manager(
            where(s3_bucket), {url: digest}, **engine(s3_server, storage_options=options)
        )
    assert res[0].status is Status.COMPLETED, res[0].error
    rerun = server.requests("h.bin")[-1]
    assert (rerun.headers.get("Range"), rerun.status) == ("bytes=0-", 206)
    assert rerun.headers.get("If-Range") == server.etag("h.bin", BIG)
    assert sorted(parts_sent(proxy)) == list(range(stored // PART_SIZE + 1, 4))  # the rest
    assert not [e for e in seen if isinstance(e, Restarted)]
    assert body(s3, s3_bucket, "data/h.bin") == server.content("h.bin", BIG)
    assert pending(s3, s3_bucket) == []


async def test_a_cancelled_split_is_finished_without_sending_its_stored_parts_again(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 4 * PART_SIZE + 99
    url = server.route_url("slowstart", "split.bin", size, rate=6 * MiB)

    def gap() -> bool:  # the ranges split off (at full speed) stored a part past a hole
        numbers = stored(s3, s3_bucket, "data/split.bin")
        return any(n - 1 not in numbers for n in numbers if n > 1)

    await cancel_when([url], s3_server, s3_bucket, gap)
    first_run = len(ranges(server, "split.bin"))
    assert first_run > 1  # it was split
    kept = stored(s3, s3_bucket, "data/split.bin")
    with S3Proxy(s3_server.endpoint_url) as proxy:
        options = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        again = opts(s3_server, storage_options=options)
        res = await rheo_nb.fetch([url], where(s3_bucket), **again)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert sorted([*kept, *parts_sent(proxy)]) == [1, 2, 3, 4, 5]  # each part sent once
    # Only the parts missing were asked for: no range of the rerun covers a part stored.
    for asked in ranges(server, "split.bin")[first_run:]:
        first, last = str(asked).removeprefix("bytes=").split("-")
        covered = range(int(first) // PART_SIZE + 1, int(last or size - 1) // PART_SIZE + 2)
        assert not set(covered) & set(kept), (asked, kept)
    assert body(s3, s3_bucket, "data/split.bin") == server.content("split.bin", size)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/split.bin"]


async def test_a_source_changed_since_the_cancel_starts_over_and_says_so(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    async def versions(request: web.Request, spec: Spec) -> web.StreamResponse:
        if spec.seen == 1:  # version 1, cut off after one part and a bit
            return await send(request, spec, headers={"ETag": '"v1"'}, cut=PART_SIZE + 100)
        v2 = Spec(spec.tag, spec.name + "-v2", spec.query, spec.seen)
        return await send(request, v2, headers={"ETag": '"v2"'})  # If-Range fails: 200

    url = server.handle("changing.bin", versions) + f"?size={BIG}"
    res, seen = await run_manager(where(s3_bucket), [url], **engine(s3_server))
    assert res[0].status is Status.COMPLETED, res[0].error
    [restarted] = [e for e in seen if isinstance(e, Restarted)]
    assert restarted.reason == "the file changed on the server"
    assert restarted.discarded >= PART_SIZE
    assert body(s3, s3_bucket, "data/changing.bin") == server.content("changing.bin-v2", BIG)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/changing.bin"]


async def test_a_hash_resume_of_a_source_changed_since_starts_over_and_says_so(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # The rerun asks from byte 0 (the hash must see every byte) with If-Range: a Range
    # from 0 is a resume like any other, and a 200 to it drops the upload kept. The new
    # version then fails the hash given: nothing is left, at the key or pending.
    async def versions(request: web.Request, spec: Spec) -> web.StreamResponse:
        if spec.seen == 1:  # version 1, slowly: the call is cancelled mid-way
            return await stream(request, spec.key, BIG, headers={"ETag": '"v1"'}, rate=6 * MiB)
        return await stream(request, f"{spec.key}-v2", BIG, headers={"ETag": '"v2"'})

    url = server.handle("moving.bin", versions) + f"?size={BIG}"
    items = {url: server.hash("moving.bin", BIG)}
    await cancel_when(items, s3_server, s3_bucket, a_part_stored(s3, s3_bucket, "data/moving.bin"))
    res, seen = await run_manager(where(s3_bucket), items, **engine(s3_server))
    rerun = server.requests("moving.bin")[1]
    assert (rerun.headers.get("Range"), rerun.headers.get("If-Range")) == ("bytes=0-", '"v1"')
    [restarted] = [e for e in seen if isinstance(e, Restarted)]
    assert restarted.reason == "the file changed on the server"
    assert restarted.discarded >= PART_SIZE
    assert res[0].status is Status.FAILED
    assert "sha256 mismatch" in (res[0].error or "")
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == []


async def test_two_calls_writing_one_key_end_with_one_whole_object_and_say_so(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # The first request holds its last bytes until both uploads exist; the second holds
    # the rest of its body until the first call's object is there. The first completes,
    # which aborts the second's upload of the same source: the second finds the object
    # whole and says so, instead of failing or claiming it wrote it.
    key = "data/same.bin"

    async def racing(request: web.Request, spec: Spec) -> web.StreamResponse:
        first = spec.seen == 1
        data = server.content("same.bin", BIG)
        resp = web.StreamResponse(headers={"ETag": '"same"', "Content-Length": str(BIG)})
        await resp.prepare(request)
        # Enough for a part to be handed over (writes are batched by the MiB).
        held = BIG - 100 if first else PART_SIZE + 2 * MiB
        await resp.write(data[:held])
        if first:
            both = lambda: len([k for k in pending(s3, s3_bucket) if k == key]) == 2  # noqa: E731
            await asyncio.to_thread(wait_for, both, 30)
        else:
            await asyncio.to_thread(wait_for, lambda: key in keys(s3, s3_bucket), 30)
        await resp.write(data[held:])
        await resp.write_eof()
        return resp

    url = server.handle("same.bin", racing)
    both = await asyncio.gather(
        run_manager(where(s3_bucket), [url], **engine(s3_server)),
        run_manager(where(s3_bucket), [url], **engine(s3_server)),
    )
    statuses = sorted(res[0].status for res, _ in both)
    assert statuses == [Status.COMPLETED, Status.SKIPPED], both
    skipped = [e for _, seen in both for e in seen if isinstance(e, Skipped)]
    assert [e.reason for e in skipped] == ["completed by another writer at the same time"]
    assert body(s3, s3_bucket, key) == server.content("same.bin", BIG)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == [key]


async def test_segments_start_on_part_boundaries(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 4 * PART_SIZE + 777
    url = server.url("seg.bin", size, rate=30 * MiB)
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server))
    assert res[0].status is Status.COMPLETED, res[0].error
    asked = [r for r in ranges(server, "seg.bin") if r is not None]
    assert asked, "the file was not split"
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in asked]
    assert all(start % PART_SIZE == 0 for start in starts), starts
    assert body(s3, s3_bucket, "data/seg.bin") == server.content("seg.bin", size)
    assert pending(s3, s3_bucket) == []


async def test_a_file_with_a_hash_stays_on_one_stream_so_its_hash_sees_every_byte(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 4 * PART_SIZE + 777
    url = server.url("one.bin", size, rate=30 * MiB)
    res = await rheo_nb.fetch(
        {url: server.hash("one.bin", size)}, where(s3_bucket), **opts(s3_server)
    )
    assert res[0].status is Status.COMPLETED, res[0].error
    assert ranges(server, "one.bin") == [None]
    assert body(s3, s3_bucket, "data/one.bin") == server.content("one.bin", size)


async def test_a_body_of_unknown_length_is_stored_whole(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    async def chunked(request: web.Request, spec: Spec) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        data = server.content(spec.name, spec.size)
        for start in range(0, len(data), MiB):
            await resp.write(data[start : start + MiB])
        await resp.write_eof()
        return resp

    big, small = BIG, 300_000
    urls = [
        server.handle("big.bin", chunked) + f"?size={big}",
        server.handle("small.bin", chunked) + f"?size={small}",
    ]
    res = await rheo_nb.fetch(urls, where(s3_bucket), **opts(s3_server))
    assert [o.status for o in res] == [Status.COMPLETED] * 2, res
    assert [o.bytes for o in res] == [big, small]
    assert body(s3, s3_bucket, "data/big.bin") == server.content("big.bin", big)
    assert body(s3, s3_bucket, "data/small.bin") == server.content("small.bin", small)
    assert pending(s3, s3_bucket) == []


async def test_names_from_content_disposition_become_keys_under_the_prefix(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    async def named(request: web.Request, spec: Spec) -> web.StreamResponse:
        disposition = 'attachment; filename="../report 2024.csv"'
        return await send(request, spec, headers={"Content-Disposition": disposition})

    url = server.handle("download", named) + "?size=5000"
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server, content_disposition=True))
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res.paths == [f"s3://{s3_bucket}/data/report 2024.csv"]
    assert keys(s3, s3_bucket) == ["data/report 2024.csv"]
    again = await rheo_nb.fetch(
        [url], where(s3_bucket), **opts(s3_server, content_disposition=True)
    )
    assert again[0].status is Status.SKIPPED
    assert again.paths == res.paths


# --- refusals, before any download -----------------------------------------------------------


async def test_a_bucket_that_does_not_exist_fails_the_call_before_any_request(
    s3_server: S3Server, server: Server
) -> None:
    with pytest.raises(DestinationError, match="bucket 'no-such-bucket' does not exist"):
        await rheo_nb.fetch([server.url("x.bin")], "s3://no-such-bucket/x", **opts(s3_server))
    assert server.count() == 0


async def test_wrong_credentials_fail_after_one_request_and_no_secret_is_shown(
    s3_server: S3Server, s3_bucket: str, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-secret-9a8b7c6d5e4f"
    with S3Proxy(s3_server.endpoint_url) as proxy:
        options = {
            **s3_server.storage_options,
            "secret": secret,
            "endpoint_url": proxy.endpoint_url,
        }
        manager = rheo_nb.DownloadManager(where(s3_bucket), storage_options=options)
        assert secret not in repr(manager) + repr(manager.options)
        with pytest.raises(DestinationError, match="S3 refused the credentials") as info:
            await rheo_nb.fetch(
                [server.url("x.bin")], where(s3_bucket), **opts(s3_server, storage_options=options)
            )
    assert len(proxy.requests) == 1
    assert server.count() == 0
    for text in (str(info.value), repr(info.value), caplog.text):
        assert secret not in text


@pytest.mark.timeout(180)  # botocore's DEBUG log of every part is slow to capture under load
async def test_no_secret_reaches_events_results_displays_or_logs(
    s3_server: S3Server, s3_bucket: str, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = s3_server.secret_key
    out = io.StringIO()
    urls = [server.url("a.bin", BIG), server.url("gone.bin", status=404)]
    res, seen = await run_manager(where(s3_bucket), urls, **engine(s3_server))
    res2 = await rheo_nb.fetch(
        urls, where(s3_bucket), **opts(s3_server, progress=TextProgress(out))
    )
    shown = [repr(e) for e in seen] + [repr(res), res.table(), res._repr_html_()]
    shown += [repr(res2), out.getvalue(), caplog.text, repr(res.paths)]
    assert all(secret not in text for text in shown)
    assert "s3:/t" not in out.getvalue()  # no object URL made into a local path


async def test_storage_options_need_a_bucket_and_other_urls_are_refused(
    s3_server: S3Server, server: Server, tmp_path: Path
) -> None:
    with pytest.raises(OptionError, match="storage_options are for s3:// destinations"):
        await rheo_nb.fetch([server.url("x")], tmp_path, **opts(s3_server))
    with pytest.raises(OptionError, match="not an s3:// destination: 'gs://b/x'"):
        await rheo_nb.fetch([server.url("x")], "gs://b/x", **FAST)
    with pytest.raises(OptionError, match="no query, fragment or credentials"):
        await rheo_nb.fetch([server.url("x")], "s3://key:hush@b/x", **FAST)
    assert server.count() == 0
    assert not await asyncio.to_thread(os.listdir, tmp_path)


async def test_credentials_come_from_the_environment_without_storage_options_secrets(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    res = await rheo_nb.fetch(
        [server.url("env.bin")],
        where(s3_bucket),
        **FAST,
        storage_options={"endpoint_url": s3_server.endpoint_url},
    )
    assert res[0].status is Status.COMPLETED, res[0].error
    assert keys(s3, s3_bucket) == ["data/env.bin"]


# --- clean -----------------------------------------------------------------------------------


def test_clean_aborts_what_cancelled_downloads_kept(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = server.route_url("slowstart", "left.bin", BIG, rate=6 * MiB)
    cancel_job_when(url, s3_server, s3_bucket, a_part_stored(s3, s3_bucket, "data/left.bin"))
    s3.create_multipart_upload(Bucket=s3_bucket, Key="data/foreign.bin")  # not ours
    cleaned = rheo_nb.clean(where(s3_bucket), storage_options=s3_server.storage_options)
    assert cleaned == [f"s3://{s3_bucket}/data/left.bin"]
    assert pending(s3, s3_bucket) == ["data/foreign.bin"]
    assert keys(s3, s3_bucket) == []
    with pytest.raises(OptionError, match="clean takes an s3:// destination"):
        rheo_nb.clean("data")


# --- what a display shows ----------------------------------------------------------------------


def test_displays_name_objects_by_their_key_under_the_prefix() -> None:
    from rheo_nb.format import shown_path

    dest = ObjectPath.of("s3://b/data/")
    path = dest.joinpath("raw", "2024", "a.csv")
    assert path == "s3://b/data/raw/2024/a.csv"
    assert (path.bucket, path.key, path.name) == ("b", "data/raw/2024/a.csv", "a.csv")
    assert shown_path(path, dest, "https://x/a.csv") == "raw/2024/a.csv"
    assert shown_path(path, None, "https://x/a.csv") == "a.csv"
    assert shown_path(dest, dest, "https://x/a.csv") == "https://x/a.csv"  # refused item
    assert path.with_name("b.csv") == "s3://b/data/raw/2024/b.csv"
    assert ObjectPath.of("s3://b").joinpath("k") == "s3://b/k"


async def test_events_carry_the_object_url_from_the_first(
    s3_server: S3Server, s3_bucket: str, server: Server
) -> None:
    _, seen = await run_manager(where(s3_bucket), [server.url("e.bin")], **engine(s3_server))
    [started] = [e for e in seen if isinstance(e, Started)]
    assert started.path == f"s3://{s3_bucket}/data/e.bin"
    assert {type(e.path) for e in seen if hasattr(e, "path")} == {ObjectPath}


async def test_a_store_out_of_reach_is_a_destination_error(server: Server) -> None:
    options = {
        "key": "k",
        "secret": "never-shown-1234",
        "endpoint_url": f"http://127.0.0.1:{closed_port()}",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    with pytest.raises(DestinationError, match="cannot reach S3") as info:
        await rheo_nb.fetch([server.url("x")], "s3://bucket/x", **FAST, storage_options=options)
    assert "never-shown-1234" not in str(info.value)
    assert server.count() == 0
