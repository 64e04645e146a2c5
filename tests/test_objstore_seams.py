"""Where downloads into a bucket meet the rest: ``s3_additional_kwargs`` on every request
(server-side encryption with the caller's key, SSE-C, which the server enforces on reads
too), mirrors, and a store out of reach on the command line. Against the real S3 server,
checked through the S3 API."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import pytest
from aiohttp import web
from faults import closed_port, stream, wait_for
from s3 import S3Proxy, body, keys, pending
from server import FAST, FAST_ENGINE, Server, Spec, run_manager, send
from test_cli import run
from test_extract import f, tar_bytes
from test_objstore_fetch import parts_sent, stored_parts

import rheo_nb
from rheo_nb import OptionError, Restarted, Status
from rheo_nb.cli import Exit
from rheo_nb.objstore import PART_SIZE
from rheo_nb.testing import LocalServer, S3Server

MiB = 1 << 20
BIG = 2 * PART_SIZE + 12345
SSE_KEY = "k3y-of-the-caller-0123456789abcd"  # 32 bytes: an AES-256 key
SSE_C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": SSE_KEY}


def where(bucket: str) -> str:
    return f"s3://{bucket}/data"


def encrypted(s3_server: S3Server, **more: Any) -> dict[str, Any]:
    storage = {**s3_server.storage_options, "s3_additional_kwargs": SSE_C}
    return {**FAST, "storage_options": storage, **more}


# --- s3_additional_kwargs ---------------------------------------------------------------------


async def test_additional_kwargs_reach_every_request_as_s3fs_applies_them(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # SSE-C: the server stores each object encrypted with the caller's key and refuses
    # to read it (HEAD, GET) without that key: the skip and the extraction read it back.
    small, big = server.url("a.csv", 1000), server.url("b.bin", BIG)
    items = {small: None, big: server.hash("b.bin", BIG)}
    res = await rheo_nb.fetch(items, where(s3_bucket), **encrypted(s3_server))
    assert [o.status for o in res] == [Status.COMPLETED] * 2, res
    for key, data in (("data/a.csv", server.content("a.csv", 1000)),):
        with pytest.raises(s3.exceptions.ClientError):  # not without the key
            s3.head_object(Bucket=s3_bucket, Key=key)
        head = s3.head_object(Bucket=s3_bucket, Key=key, **SSE_C)
        assert head["SSECustomerAlgorithm"] == "AES256"
        assert s3.get_object(Bucket=s3_bucket, Key=key, **SSE_C)["Body"].read() == data
    head = s3.head_object(Bucket=s3_bucket, Key="data/b.bin", **SSE_C)  # a multipart upload
    assert head["SSECustomerAlgorithm"] == "AES256"
    got = s3.get_object(Bucket=s3_bucket, Key="data/b.bin", **SSE_C)["Body"].read()
    assert got == server.content("b.bin", BIG)
    asked = server.count()
    again = await rheo_nb.fetch(items, where(s3_bucket), **encrypted(s3_server))
    assert [o.status for o in again] == [Status.SKIPPED] * 2
    assert server.count() == asked  # HEAD with the key saw the objects and their hash
    assert pending(s3, s3_bucket) == []
    shown = (
        repr(res)
        + res.table()
        + repr(
            rheo_nb.DownloadManager(
                where(s3_bucket),
                **{k: v for k, v in encrypted(s3_server).items() if k != "progress"},
            )
        )
    )
    assert SSE_KEY not in shown


async def test_an_archive_encrypted_with_the_callers_key_is_extracted_encrypted(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    data = gzip.compress(tar_bytes([f("x.txt", b"secret rows"), f("y.txt", b"more")]))

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        return web.Response(body=data, headers={"ETag": '"a1"'})

    url = server.handle("enc.tar.gz", handler)
    res = await rheo_nb.fetch([url], where(s3_bucket), **encrypted(s3_server, extract=True))
    assert res[0].status is Status.COMPLETED, res[0].error
    got = s3.get_object(Bucket=s3_bucket, Key="data/enc/x.txt", **SSE_C)["Body"].read()
    assert got == b"secret rows"
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_object(Bucket=s3_bucket, Key="data/enc/y.txt")


async def test_a_cancelled_encrypted_upload_is_resumed_with_the_key(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = server.route_url("slowstart", "r.bin", BIG, rate=6 * MiB)
    key = "data/r.bin"

    def a_part() -> bool:
        for u in s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []):
            listed = s3.list_parts(Bucket=s3_bucket, Key=key, UploadId=u["UploadId"], **SSE_C)
            if listed.get("Parts"):
                return True
        return False

    options = encrypted(s3_server, segments=1)
    task = asyncio.create_task(rheo_nb.fetch([url], where(s3_bucket), **options))
    try:
        await asyncio.to_thread(wait_for, a_part, 30)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    engine = {k: v for k, v in options.items() if k != "progress"}
    res, seen = await run_manager(where(s3_bucket), [url], **engine)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert not [e for e in seen if isinstance(e, Restarted)]
    assert server.requests("r.bin")[-1].headers.get("Range", "").startswith("bytes=")
    got = s3.get_object(Bucket=s3_bucket, Key=key, **SSE_C)["Body"].read()
    assert got == server.content("r.bin", BIG)
    assert pending(s3, s3_bucket) == []


async def test_an_additional_kwarg_no_request_takes_is_refused_before_any_download(
    s3_server: S3Server, s3_bucket: str, server: Server
) -> None:
    storage = {**s3_server.storage_options, "s3_additional_kwargs": {"ServerSideEncyption": "x"}}
    with pytest.raises(OptionError, match="did you mean 'ServerSideEncryption'"):
        await rheo_nb.fetch([server.url("x")], where(s3_bucket), **FAST, storage_options=storage)
    storage["s3_additional_kwargs"] = ["ServerSideEncryption"]
    with pytest.raises(OptionError, match="s3_additional_kwargs must be a mapping"):
        await rheo_nb.fetch([server.url("x")], where(s3_bucket), **FAST, storage_options=storage)
    assert server.count() == 0


# --- mirrors -----------------------------------------------------------------------------------


async def test_a_mirror_serves_the_file_into_the_bucket_when_the_first_source_is_gone(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    gone = server.url("m.bin", status=404)
    mirror = server.url("m.bin", BIG)
    item = rheo_nb.File(gone, mirrors=[mirror], hash=server.hash("m.bin", BIG))
    res = await rheo_nb.fetch(
        [item], where(s3_bucket), **FAST, storage_options=s3_server.storage_options
    )
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].source_url == mirror
    assert res.paths == [f"s3://{s3_bucket}/data/m.bin"]  # named after the first URL
    assert body(s3, s3_bucket, "data/m.bin") == server.content("m.bin", BIG)
    assert keys(s3, s3_bucket) == ["data/m.bin"]
    assert pending(s3, s3_bucket) == []


CUT = PART_SIZE + 300_000  # a part stored, and some bytes of the next


async def test_an_upload_cut_off_from_one_source_is_continued_from_a_mirror_with_its_etag(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # Both sources serve the same file with the same strong ETag: the mirror is asked
    # for the rest, with If-Range, and the upload goes on.
    first = server.route_url("truncate", "c.bin", BIG, cut=CUT)
    mirror = server.url("c.bin", BIG)
    item = rheo_nb.File(first, mirrors=[mirror])
    storage = s3_server.storage_options
    res, seen = await run_manager(
        where(s3_bucket), [item], **FAST_ENGINE, retries=0, segments=1, storage_options=storage
    )
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].source_url == mirror
    assert not [e for e in seen if isinstance(e, Restarted)]
    [asked] = server.requests("c.bin")[1:]
    start = int(asked.headers["Range"].removeprefix("bytes=").split("-")[0])
    assert start >= PART_SIZE
    assert asked.headers["If-Range"] == server.etag("c.bin", BIG)
    assert asked.status == 206
    assert body(s3, s3_bucket, "data/c.bin") == server.content("c.bin", BIG)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/c.bin"]


async def test_an_upload_validated_by_a_date_only_is_not_carried_to_a_mirror(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # Last-Modified is enough to resume from the same source, not to trust that another
    # one holds the same bytes: without a hash, the mirror starts the upload over.
    async def weak(request: web.Request, spec: Spec) -> web.StreamResponse:
        dated = {"Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT", "Accept-Ranges": "bytes"}
        return await send(request, spec, headers=dated, cut=CUT)

    first = server.handle("w.bin", weak) + f"?size={BIG}"
    mirror = server.url("w.bin", BIG)
    storage = s3_server.storage_options
    res, seen = await run_manager(
        where(s3_bucket),
        [rheo_nb.File(first, mirrors=[mirror])],
        **FAST_ENGINE,
        retries=0,
        segments=1,
        storage_options=storage,
    )
    assert res[0].status is Status.COMPLETED, res[0].error
    [restarted] = [e for e in seen if isinstance(e, Restarted)]
    assert restarted.reason == "the upload kept came from another source, without a strong ETag"
    assert restarted.discarded >= PART_SIZE
    [asked] = [r for r in server.requests("w.bin") if r.route == "gen"]
    assert asked.headers.get("Range") is None  # from zero
    assert body(s3, s3_bucket, "data/w.bin") == server.content("w.bin", BIG)
    assert pending(s3, s3_bucket) == []  # the first source's upload was aborted
    assert keys(s3, s3_bucket) == ["data/w.bin"]


async def test_with_a_hash_an_upload_is_carried_to_a_mirror_whatever_its_etag(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # The hash proves the result: the mirror (another ETag) is asked for the rest
    # without If-Range (the hash has seen the start, in this run), and the upload goes on.
    async def other(request: web.Request, spec: Spec) -> web.StreamResponse:
        named = Spec(spec.tag, "h.bin", spec.query, spec.seen)  # the same bytes
        return await send(request, named, headers={"ETag": '"elsewhere"'}, cut=CUT)

    first = server.handle("h-first.bin", other) + f"?size={BIG}"
    mirror = server.url("h.bin", BIG)
    item = rheo_nb.File(first, "h.bin", mirrors=[mirror], hash=server.hash("h.bin", BIG))
    with S3Proxy(s3_server.endpoint_url) as proxy:
        storage = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        res, seen = await run_manager(
            where(s3_bucket), [item], **FAST_ENGINE, retries=0, segments=1, storage_options=storage
        )
    assert res[0].status is Status.COMPLETED, res[0].error
    assert not [e for e in seen if isinstance(e, Restarted)]
    [asked] = server.requests("h.bin")
    assert (asked.headers.get("Range"), asked.headers.get("If-Range")) == (f"bytes={CUT}-", None)
    assert asked.status == 206
    assert parts_sent(proxy).count(1) == 1  # part 1 went up once, from the first source
    assert body(s3, s3_bucket, "data/h.bin") == server.content("h.bin", BIG)
    assert pending(s3, s3_bucket) == []


async def test_a_rerun_carries_a_kept_upload_to_a_mirror_when_the_first_source_is_gone(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # Run 1 is cancelled while the first source streams; by run 2 that source answers
    # 404. The mirror serves the same bytes under another ETag: with the hash, the upload
    # kept goes on (read from 0 for the hash; the parts stored are matched by MD5).
    key = f"{server.tag}/r.bin"

    async def first_then_gone(request: web.Request, spec: Spec) -> web.StreamResponse:
        if spec.seen > 1:
            return web.Response(status=404, text="moved\n")
        return await stream(request, key, BIG, headers={"ETag": '"first"'}, rate=6 * MiB)

    first = server.handle("r-first.bin", first_then_gone)
    mirror = server.url("r.bin", BIG)
    item = rheo_nb.File(first, "r.bin", mirrors=[mirror], hash=server.hash("r.bin", BIG))
    options = {**FAST, "storage_options": s3_server.storage_options, "segments": 1}
    task = asyncio.create_task(rheo_nb.fetch([item], where(s3_bucket), **options))
    try:
        await asyncio.to_thread(
            wait_for, lambda: stored_parts(s3, s3_bucket, "data/r.bin") >= PART_SIZE, 30
        )
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = stored_parts(s3, s3_bucket, "data/r.bin")
    with S3Proxy(s3_server.endpoint_url) as proxy:
        storage = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        res, seen = await run_manager(
            where(s3_bucket), [item], **FAST_ENGINE, segments=1, storage_options=storage
        )
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].source_url == mirror
    assert not [e for e in seen if isinstance(e, Restarted)]
    [asked] = server.requests("r.bin")
    assert (asked.headers.get("Range"), asked.status) == ("bytes=0-", 206)
    assert sorted(parts_sent(proxy)) == list(range(stored // PART_SIZE + 1, 4))  # only the rest
    assert body(s3, s3_bucket, "data/r.bin") == server.content("r.bin", BIG)
    assert pending(s3, s3_bucket) == []


# --- a store out of reach, on the command line -------------------------------------------------


def busy_store() -> tuple[LocalServer, list[str]]:
    """An endpoint that answers every request 503 (S3's "try again"): the requests it saw."""
    seen: list[str] = []

    async def unavailable(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.Response(status=503, text="<Error><Code>ServiceUnavailable</Code></Error>")

    return LocalServer(routes=[web.route("*", "/{tail:.*}", unavailable)]), seen


CLI_ENV = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "never-shown-5f4e"}


def test_a_store_that_refuses_connections_is_one_cli_line(server: Server) -> None:
    port = closed_port()
    flags = ["--storage-option", f"endpoint_url=http://127.0.0.1:{port}"]
    proc = run("get", server.url("x.bin"), "-o", "s3://bucket/data", *flags, env=CLI_ENV)
    assert (proc.returncode, proc.stderr.splitlines()) == (
        Exit.DESTINATION,
        [
            f"rheo-nb: -o s3://bucket/data/: cannot reach S3 at http://127.0.0.1:{port} "
            "(EndpointConnectionError on ListMultipartUploads)"
        ],
    )
    assert server.count() == 0


@pytest.mark.parametrize(
    ("flags", "requests"),
    [
        pytest.param([], 2, id="opening-retries-once"),
        pytest.param(
            ["--storage-option", "config_kwargs.retries.total_max_attempts=3"],
            3,
            id="as-configured",
        ),
    ],
)
def test_the_opening_request_retries_once_unless_config_kwargs_say(
    server: Server, flags: list[str], requests: int
) -> None:
    # botocore's default is five attempts with backoff (~9 s for a store out of reach):
    # the opening request makes two, so a wrong endpoint is said at once.
    store, seen = busy_store()
    with store:
        flags = ["--storage-option", f"endpoint_url={store.base_url}", *flags]
        proc = run("get", server.url("x.bin"), "-o", "s3://bucket/data", *flags, env=CLI_ENV)
    assert (proc.returncode, proc.stderr.splitlines()) == (
        Exit.DESTINATION,
        ["rheo-nb: -o s3://bucket/data/: S3 error ServiceUnavailable on ListMultipartUploads"],
    )
    assert len(seen) == requests, seen
    assert server.count() == 0
