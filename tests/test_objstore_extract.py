"""Extraction into a bucket (``fetch(..., extract=True)`` with an ``s3://`` destination),
against the real S3 server: archives built here, served by the test server, downloaded
into the bucket and unpacked into keys under the target prefix, checked through the S3
API (the objects, the record, the multipart uploads left open)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import signal
import zipfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from faults import child, wait_for
from s3 import S3Proxy, body, keys, pending
from server import FAST, Server, Spec, run_manager
from test_extract import d, f, hard, make_zip, special, sym, tar_bomb, tar_bytes

import rheo_nb
from rheo_nb import Extracting, ObjectPath, Status
from rheo_nb.objstore import PART_SIZE
from rheo_nb.testing import S3Server, content

MiB = 1 << 20


def where(bucket: str) -> str:
    return f"s3://{bucket}/data"


def opts(s3_server: S3Server, **more: Any) -> dict[str, Any]:
    return {**FAST, "storage_options": s3_server.storage_options, "extract": True, **more}


def engine(s3_server: S3Server, **more: Any) -> dict[str, Any]:
    return {k: v for k, v in opts(s3_server, **more).items() if k != "progress"}


def serve(server: Server, name: str, data: bytes, etag: str = '"v1"') -> str:
    """Serve ``data`` as ``name`` (a plain 200 with a strong ETag)."""

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        return web.Response(body=data, headers={"ETag": etag})

    return server.handle(name, handler)


def record(s3: Any, bucket: str) -> dict[str, Any]:
    """The one extraction record in the bucket."""
    [key] = [k for k in keys(s3, bucket) if "/.rheo_nb/extract-" in k]
    found: dict[str, Any] = json.loads(body(s3, bucket, key))
    return found


def under(s3: Any, bucket: str, prefix: str) -> list[str]:
    return [k for k in keys(s3, bucket) if k.startswith(prefix)]


BIG = content("big", PART_SIZE + 3 * MiB)  # a member larger than a part: a multipart upload
MEMBERS = [
    d("docs"),
    f("docs/readme.txt", b"read me"),
    f("docs/empty.txt", b""),
    f("big.bin", BIG),
    hard("docs/again.txt", "docs/readme.txt"),
    sym("latest.txt", "docs/readme.txt"),
    sym("chain.txt", "latest.txt"),
    sym("docs/up", ".."),  # a folder: object storage has no links, so it is left out
    sym("nowhere", "missing.txt"),
]
EXTRACTED = {
    "data/set/big.bin": BIG,
    "data/set/chain.txt": b"read me",
    "data/set/docs/again.txt": b"read me",
    "data/set/docs/empty.txt": b"",
    "data/set/docs/readme.txt": b"read me",
    "data/set/latest.txt": b"read me",
}


# --- the contract ------------------------------------------------------------------------------


async def test_an_archive_is_extracted_member_by_member_into_keys_under_the_prefix(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    archive = gzip.compress(tar_bytes(MEMBERS), mtime=0)
    url = serve(server, "set.tar.gz", archive)
    res, seen = await run_manager(where(s3_bucket), [url], **engine(s3_server))
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].extracted == f"s3://{s3_bucket}/data/set"
    assert isinstance(res[0].extracted, ObjectPath)
    assert sorted(under(s3, s3_bucket, "data/set/")) == sorted(EXTRACTED)
    for key, data in EXTRACTED.items():
        assert body(s3, s3_bucket, key) == data, key
    assert body(s3, s3_bucket, "data/set.tar.gz") == archive  # the archive is kept
    assert pending(s3, s3_bucket) == []
    done = record(s3, s3_bucket)
    assert (done["state"], done["archive"], done["size"]) == (
        "done",
        "data/set.tar.gz",
        len(archive),
    )
    assert done["etag"] == s3.head_object(Bucket=s3_bucket, Key="data/set.tar.gz")["ETag"]
    assert done["members"] == len(MEMBERS)
    extracting = [e for e in seen if isinstance(e, Extracting)]
    assert extracting, "no Extracting event"
    assert [e.members for e in extracting] == sorted(e.members for e in extracting)
    assert all(e.total is None for e in extracting)  # a tar is read once, front to back


async def test_a_zip_goes_into_the_folder_a_file_names_and_tells_its_total(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server, tmp_path: Path
) -> None:
    archive = make_zip(tmp_path / "m.zip", [f("w/a.txt", b"A" * 1000), f("b.txt", b"B")])
    url = serve(server, "m.zip", archive.read_bytes())
    item = rheo_nb.File(url, extract="models/bert")
    res, seen = await run_manager(where(s3_bucket), [item], **engine(s3_server, extract=False))
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].extracted == f"s3://{s3_bucket}/data/models/bert"
    assert under(s3, s3_bucket, "data/models/bert/") == [
        "data/models/bert/b.txt",
        "data/models/bert/w/a.txt",
    ]
    assert body(s3, s3_bucket, "data/models/bert/w/a.txt") == b"A" * 1000
    assert {e.total for e in seen if isinstance(e, Extracting)} == {2}


async def test_one_compressed_file_becomes_one_object_without_its_suffix(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    raw = content("table", 300_000)
    url = serve(server, "table.csv.gz", gzip.compress(raw, mtime=0))
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server))
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].extracted == f"s3://{s3_bucket}/data/table.csv"
    assert body(s3, s3_bucket, "data/table.csv") == raw
    again = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server))
    assert (again[0].status, again[0].extracted) == (Status.SKIPPED, res[0].extracted)


async def test_a_file_that_is_no_archive_is_left_as_it_is_unless_asked_by_name(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    plain, named = server.url("plain.csv", 5000), server.url("named.csv", 5000)
    items: list[str | rheo_nb.File] = [plain, rheo_nb.File(named, extract=True)]
    res = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server))
    assert (res[0].status, res[0].extracted) == (Status.COMPLETED, None)
    assert res[1].status is Status.FAILED
    assert "not an archive" in (res[1].error or "")
    assert keys(s3, s3_bucket) == ["data/named.csv", "data/plain.csv"]


# --- a rerun, extract_remove ---------------------------------------------------------------------


async def test_a_rerun_skips_a_completed_extraction_without_writing_a_member(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = serve(server, "set.tar.gz", gzip.compress(tar_bytes(MEMBERS), mtime=0))
    first = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server))
    assert first[0].status is Status.COMPLETED, first[0].error
    asked = server.count()
    with S3Proxy(s3_server.endpoint_url) as proxy:
        options = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        again = await rheo_nb.fetch(
            [url], where(s3_bucket), **opts(s3_server, storage_options=options)
        )
    assert (again[0].status, again[0].extracted) == (Status.SKIPPED, first[0].extracted)
    assert server.count() == asked
    writes = [(m, q) for m, q in proxy.requests if m in ("PUT", "POST", "DELETE")]
    assert writes == []
    assert sorted(under(s3, s3_bucket, "data/set/")) == sorted(EXTRACTED)


async def test_extract_remove_deletes_the_archive_and_a_rerun_still_skips(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    data = gzip.compress(tar_bytes([f("x.txt", b"x")]), mtime=0)
    url = serve(server, "r.tar.gz", data)
    items = {url: "sha256:" + hashlib.sha256(data).hexdigest()}
    res = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server, extract_remove=True))
    assert res[0].status is Status.COMPLETED, res[0].error
    assert "data/r.tar.gz" not in keys(s3, s3_bucket)
    assert body(s3, s3_bucket, "data/r/x.txt") == b"x"
    asked = server.count()
    again = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server, extract_remove=True))
    assert (again[0].status, again[0].extracted) == (Status.SKIPPED, res[0].extracted)
    assert server.count() == asked  # the record said so: nothing downloaded
    # Without the extraction in place, the archive is downloaded and extracted again.
    s3.delete_object(Bucket=s3_bucket, Key="data/r/x.txt")
    third = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server, extract_remove=True))
    assert third[0].status is Status.COMPLETED, third[0].error
    assert body(s3, s3_bucket, "data/r/x.txt") == b"x"


async def test_a_changed_archive_replaces_the_earlier_extraction(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    v1 = serve(server, "v.tar.gz", gzip.compress(tar_bytes([f("old.txt", b"1"), f("k.txt", b"1")])))
    await rheo_nb.fetch([v1], where(s3_bucket), **opts(s3_server))
    assert under(s3, s3_bucket, "data/v/") == ["data/v/k.txt", "data/v/old.txt"]
    v2 = serve(server, "v.tar.gz", gzip.compress(tar_bytes([f("k.txt", b"2")])), etag='"v2"')
    res = await rheo_nb.fetch([v2], where(s3_bucket), **opts(s3_server, overwrite=True))
    assert res[0].status is Status.COMPLETED, res[0].error
    assert under(s3, s3_bucket, "data/v/") == ["data/v/k.txt"]
    assert body(s3, s3_bucket, "data/v/k.txt") == b"2"


async def test_a_prefix_that_holds_objects_of_another_origin_is_never_written(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    s3.put_object(Bucket=s3_bucket, Key="data/mine/notes.txt", Body=b"keep me")
    url = serve(server, "mine.tar.gz", gzip.compress(tar_bytes([f("notes.txt", b"theirs")])))
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server))
    assert res[0].status is Status.FAILED
    assert "holds objects that were not extracted by rheo_nb" in (res[0].error or "")
    assert body(s3, s3_bucket, "data/mine/notes.txt") == b"keep me"
    assert keys(s3, s3_bucket) == ["data/mine.tar.gz", "data/mine/notes.txt"]


# --- hostile archives -----------------------------------------------------------------------

HOSTILE = [
    pytest.param(
        [f("ok.txt", b"1"), f("../evil", b"x")], "../evil", "outside the target", id="dotdot"
    ),
    pytest.param([f("/etc/evil", b"x")], "/etc/evil", "absolute", id="absolute"),
    pytest.param([f("ok.txt", b"1"), sym("link", "../../x")], "link", "outside", id="symlink-up"),
    pytest.param([sym("a", "."), sym("b", "a/..")], "b", "outside the target", id="link-chain"),
    pytest.param([sym("a", "."), f("a/x", b"1")], "a/x", "inside the symbolic link", id="via-link"),
    pytest.param([f("ok.txt", b"1"), hard("h", "../x")], "h", "hard link", id="hardlink-up"),
    pytest.param([hard("h", "missing")], "h", "not a file extracted before it", id="hardlink-nx"),
    pytest.param([special("chr", "tty")], "tty", "device", id="device"),
    pytest.param([f("x", b"1"), d("x")], "x", "both a folder and another member", id="file-dir"),
]


@pytest.mark.parametrize(("members", "member", "words"), HOSTILE)
async def test_a_hostile_archive_fails_with_the_member_and_leaves_nothing_under_the_prefix(
    s3_server: S3Server,
    s3_bucket: str,
    s3: Any,
    server: Server,
    members: list[Any],
    member: str,
    words: str,
) -> None:
    url = serve(server, "evil.tar.gz", gzip.compress(tar_bytes(members), mtime=0))
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server))
    assert res[0].status is Status.FAILED
    assert f"member {member!r}" in (res[0].error or "")
    assert words in (res[0].error or "")
    assert res[0].extracted is None
    assert keys(s3, s3_bucket) == ["data/evil.tar.gz"]  # no member, no record
    assert pending(s3, s3_bucket) == []


async def test_a_bomb_stops_at_the_cap_and_leaves_nothing(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server, tmp_path: Path
) -> None:
    archive = tar_bomb(tmp_path / "bomb.tar.gz", 200 * MiB).read_bytes()
    assert 200 * MiB / len(archive) > 900  # a 1000:1 bomb
    url = serve(server, "bomb.tar.gz", archive)
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server, max_extract_size=12 * MiB))
    assert res[0].status is Status.FAILED
    assert "member 'zeros.bin'" in (res[0].error or "")
    assert "max_extract_size" in (res[0].error or "")
    assert keys(s3, s3_bucket) == ["data/bomb.tar.gz"]
    assert pending(s3, s3_bucket) == []  # the member's multipart upload was aborted


# --- interrupted ---------------------------------------------------------------------------------

MANY = [f(f"m/{i:03}.bin", content(f"m{i}", 200_000)) for i in range(120)]  # 24 MB


async def test_a_cancel_during_extraction_leaves_nothing_and_a_rerun_extracts(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = serve(server, "many.tar", tar_bytes(MANY))
    task = asyncio.create_task(rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server)))
    try:
        await asyncio.to_thread(wait_for, lambda: len(under(s3, s3_bucket, "data/many/")) >= 5, 60)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert keys(s3, s3_bucket) == ["data/many.tar"]  # the archive, whole; nothing of it
    assert pending(s3, s3_bucket) == []
    res = await rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server))
    assert res[0].status is Status.SKIPPED  # the archive was complete
    assert len(under(s3, s3_bucket, "data/many/")) == len(MANY)
    assert record(s3, s3_bucket)["state"] == "done"


async def test_a_cancel_while_a_large_member_goes_up_aborts_its_upload(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = serve(server, "huge.tar", tar_bytes([f("big.bin", content("huge", 40 * MiB))]))
    task = asyncio.create_task(rheo_nb.fetch([url], where(s3_bucket), **opts(s3_server)))
    try:
        going_up = lambda: "data/huge/big.bin" in pending(s3, s3_bucket)  # noqa: E731
        await asyncio.to_thread(wait_for, going_up, 60)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert keys(s3, s3_bucket) == ["data/huge.tar"]
    assert pending(s3, s3_bucket) == []


@pytest.mark.slow
def test_an_extraction_killed_midway_is_redone_from_scratch(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = serve(server, "many.tar", tar_bytes(MANY))
    options = {"storage_options": s3_server.storage_options, "extract": True}
    proc = child(url, where(s3_bucket), **options)  # type: ignore[arg-type]
    try:
        wait_for(lambda: len(under(s3, s3_bucket, "data/many/")) >= 5, 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    left = under(s3, s3_bucket, "data/many/")
    assert 0 < len(left) < len(MANY)
    assert record(s3, s3_bucket)["state"] == "extracting"  # never taken as done
    s3.put_object(Bucket=s3_bucket, Key="data/many/stray.bin", Body=b"half-written run")
    res = rheo_nb.fetch_sync([url], where(s3_bucket), **opts(s3_server))
    assert res[0].status is Status.SKIPPED, res[0].error
    assert res[0].extracted == f"s3://{s3_bucket}/data/many"
    assert under(s3, s3_bucket, "data/many/") == [f"data/many/m/{i:03}.bin" for i in range(120)]
    assert body(s3, s3_bucket, "data/many/m/119.bin") == content("m119", 200_000)
    assert record(s3, s3_bucket)["state"] == "done"
    assert pending(s3, s3_bucket) == []


async def test_a_zip_read_back_by_ranges_is_read_about_once(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # A zip is read where its directory says: small reads for the directory and each
    # member's header, whole blocks (and the next one ahead) for the members' bytes.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(4):
            zf.writestr(f"p{i}.bin", content(f"p{i}", 6 * MiB))
    size = len(buf.getvalue())
    url = serve(server, "parts.zip", buf.getvalue())
    with S3Proxy(s3_server.endpoint_url) as proxy:
        options = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        res = await rheo_nb.fetch(
            [url], where(s3_bucket), **opts(s3_server, storage_options=options)
        )
    assert res[0].status is Status.COMPLETED, res[0].error
    for i in range(4):
        assert body(s3, s3_bucket, f"data/parts/p{i}.bin") == content(f"p{i}", 6 * MiB)
    read = 0
    for (method, path), asked in zip(proxy.requests, proxy.ranges, strict=True):
        if method == "GET" and path.startswith(f"/{s3_bucket}/data/parts.zip"):
            assert asked is not None  # never the whole archive at once
            first, last = asked.removeprefix("bytes=").split("-")
            read += int(last) - int(first) + 1
    assert size <= read <= size * 1.1, (read, size)


@pytest.mark.parametrize("algorithm", ["md5", "sha512"])
async def test_an_archive_removed_after_extraction_is_skipped_whatever_its_hash(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server, algorithm: str
) -> None:
    data = gzip.compress(tar_bytes([f("x.txt", b"x")]), mtime=0)
    url = serve(server, "h.tar.gz", data)
    items = {url: f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest()}
    res = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server, extract_remove=True))
    assert res[0].status is Status.COMPLETED, res[0].error
    asked = server.count()
    again = await rheo_nb.fetch(items, where(s3_bucket), **opts(s3_server, extract_remove=True))
    assert (again[0].status, again[0].extracted) == (Status.SKIPPED, res[0].extracted)
    assert server.count() == asked
    # Another hash of the same algorithm is another file: not taken for this extraction.
    other = {url: f"{algorithm}:" + hashlib.new(algorithm, b"other").hexdigest()}
    third = await rheo_nb.fetch(other, where(s3_bucket), **opts(s3_server, extract_remove=True))
    assert third[0].status is Status.FAILED
    assert server.count() > asked


async def test_an_archive_named_by_the_server_is_extracted_and_skipped_once_removed(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    data = gzip.compress(tar_bytes([f("x.txt", b"x")]), mtime=0)

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        headers = {"ETag": '"v1"', "Content-Disposition": 'attachment; filename="n.tar.gz"'}
        return web.Response(body=data, headers=headers)

    url = server.handle("get", handler)
    named = {**opts(s3_server), "content_disposition": True}
    # In the bucket from a run without extract: a run with extract keeps it and extracts it.
    await rheo_nb.fetch([url], where(s3_bucket), **{**named, "extract": False})
    res = await rheo_nb.fetch([url], where(s3_bucket), **named)
    assert res[0].status is Status.SKIPPED, res[0].error
    assert res[0].extracted == ObjectPath(f"s3://{s3_bucket}/data/n")
    assert body(s3, s3_bucket, "data/n/x.txt") == b"x"
    removed = await rheo_nb.fetch([url], where(s3_bucket), **named, extract_remove=True)
    assert removed[0].ok, removed[0].error
    assert "data/n.tar.gz" not in keys(s3, s3_bucket)
    again = await rheo_nb.fetch([url], where(s3_bucket), **named, extract_remove=True)
    assert (again[0].status, again[0].extracted) == (Status.SKIPPED, res[0].extracted)


async def test_extract_remove_lists_the_prefix_and_overwrite_downloads_the_archive_again(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url = serve(server, "o.tar.gz", gzip.compress(tar_bytes([f("x.txt", b"x")]), mtime=0))
    options = opts(s3_server, extract_remove=True)
    res = await rheo_nb.fetch([url], where(s3_bucket), **options)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res.paths == [ObjectPath(f"s3://{s3_bucket}/data/o")]  # the archive is gone
    again = await rheo_nb.fetch([url], where(s3_bucket), **options)
    assert (again[0].status, again.paths) == (Status.SKIPPED, res.paths)
    asked = server.count()
    fresh = await rheo_nb.fetch([url], where(s3_bucket), **options, overwrite=True)
    assert fresh[0].status is Status.COMPLETED, fresh[0].error
    assert server.count() == asked + 1
    assert body(s3, s3_bucket, "data/o/x.txt") == b"x"


async def test_two_archives_that_extract_under_one_prefix_are_refused_per_item(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    tar = serve(server, "p.tar.gz", gzip.compress(tar_bytes([f("t.txt", b"t")]), mtime=0))
    zip_ = serve(server, "p.zip", make_zip_bytes({"z.txt": b"z"}))
    res = await rheo_nb.fetch([tar, zip_], where(s3_bucket), **opts(s3_server))
    assert [o.status for o in res] == [Status.COMPLETED, Status.FAILED], res
    assert res[1].error is not None
    assert "is already where" in res[1].error
    assert under(s3, s3_bucket, "data/p/") == ["data/p/t.txt"]


def make_zip_bytes(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return raw.getvalue()
