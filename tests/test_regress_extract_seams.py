"""Seams of extraction with reruns, hashes, ``overwrite``, server-given names and the
other items of a call.

``completed`` and ``skipped`` mean the file is on disk with its own bytes, and for an
archive that its members are where ``extracted`` says; a rerun skips what is done,
whatever the hash's algorithm or the file's name; and two items that meet at one path,
an extraction's output included, are a conflict refused per item, never an outcome that
depends on which ran first.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from faults import leftovers
from server import FAST, Server, Spec, requested_range

import rheo_nb
from rheo_nb import File, Status


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await asyncio.wait_for(rheo_nb.fetch(items, dest, **{**FAST, **options}), 30)


def targz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return raw.getvalue()


def serving(body: bytes, disposition: str | None = None) -> Any:
    """A handler serving ``body`` with an ETag, ranges, and ``Content-Disposition``."""
    etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        if disposition is not None:
            headers["Content-Disposition"] = disposition
        rng = requested_range(request, len(body))
        if rng is None or request.headers.get("If-Range") not in (None, etag):
            return web.Response(body=body, headers=headers)
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
        return web.Response(status=206, body=body[start:end], headers=headers)

    return handler


ARCHIVE = targz({"a.txt": b"hello\n"})


# --- reruns of an archive removed after its extraction --------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha512"])
async def test_an_archive_removed_after_extraction_is_skipped_on_a_rerun_whatever_its_hash(
    server: Server, dest: Path, algorithm: str
) -> None:
    # With a sha256 the rerun skips; with any other algorithm it downloads the archive
    # again on every run (the extraction's record keeps only a sha256 to compare).
    url = server.handle("x.tar.gz", serving(ARCHIVE))
    digest = hashlib.new(algorithm, ARCHIVE).hexdigest()
    item = File(url, hash=f"{algorithm}:{digest}", extract=True, extract_remove=True)
    first = await fetch([item], dest)
    assert first[0].status is Status.COMPLETED, first[0].error
    again = await fetch([item], dest)
    assert again[0].status is Status.SKIPPED, (
        f"{again[0].status}: the archive was downloaded {server.count('x.tar.gz')} times"
    )
    assert (dest / "x" / "a.txt").read_bytes() == b"hello\n"


async def test_overwrite_downloads_an_archive_removed_after_extraction_again(
    server: Server, dest: Path
) -> None:
    # overwrite=True is the way to refresh files; for an archive removed after its
    # extraction it is ignored: "skipped, already downloaded and extracted", no request.
    url = server.handle("y.tar.gz", serving(ARCHIVE))
    await fetch([url], dest, extract=True, extract_remove=True)
    res = await fetch([url], dest, extract=True, extract_remove=True, overwrite=True)
    assert res[0].status is Status.COMPLETED, f"{res[0].status} with overwrite=True"
    assert server.count("y.tar.gz") == 2


async def test_results_paths_list_only_what_is_on_disk_after_extract_remove(
    server: Server, dest: Path
) -> None:
    # Results.paths: "paths of the files on disk". With extract_remove the archive is
    # gone, yet its path is listed (and its folder, outcome.extracted, is not).
    url = server.handle("z.tar.gz", serving(ARCHIVE))
    for _ in range(2):  # the run that extracts, and the rerun that skips
        res = await fetch([url], dest, extract=True, extract_remove=True)
        assert res[0].ok, res[0].error
        missing = [p for p in res.paths if isinstance(p, Path) and not p.exists()]
        assert not missing, f"results.paths lists files not on disk: {missing}"


# --- archives named by the server (content_disposition=True) --------------------------------------


async def test_an_archive_named_by_the_server_and_already_on_disk_is_extracted(
    server: Server, dest: Path
) -> None:
    # The archive is on disk from a run without extract; the rerun with extract=True
    # skips it, as it should, but never extracts it (it does for a URL-named archive).
    url = server.handle("get", serving(ARCHIVE, 'attachment; filename="data.tar.gz"'))
    await fetch([url], dest, content_disposition=True)
    assert (dest / "data.tar.gz").is_file()
    res = await fetch([url], dest, content_disposition=True, extract=True)
    assert res[0].ok, res[0].error
    assert res[0].extracted == dest / "data", f"extracted={res[0].extracted}"
    assert (dest / "data" / "a.txt").read_bytes() == b"hello\n"


async def test_an_archive_named_by_the_server_and_removed_after_extraction_is_skipped_on_a_rerun(
    server: Server, dest: Path
) -> None:
    # Every rerun downloads the whole archive again, extracts nothing new and removes it.
    url = server.handle("get", serving(ARCHIVE, 'attachment; filename="data.tar.gz"'))
    options = {"content_disposition": True, "extract": True, "extract_remove": True}
    first = await fetch([url], dest, **options)
    assert first[0].status is Status.COMPLETED, first[0].error
    again = await fetch([url], dest, **options)
    assert again[0].status is Status.SKIPPED, f"{again[0].status}: downloaded again"
    assert (dest / "data" / "a.txt").read_bytes() == b"hello\n"


# --- extraction output meeting another item's path ------------------------------------------------


@pytest.mark.parametrize("remove", [False, True], ids=["keep", "remove"])
async def test_two_archives_of_one_call_never_share_an_extraction_folder_silently(
    server: Server, dest: Path, remove: bool
) -> None:
    # x.tar.gz and x.zip both extract into x/. The second replaces the first's folder
    # (keep), or is reported skipped without ever being downloaded, because the first's
    # extraction is taken for its own (remove).
    tar = server.handle("x.tar.gz", serving(targz({"from_tar.txt": b"tar\n"})))
    zip_ = server.handle("x.zip", serving(zipped({"from_zip.txt": b"zip\n"})))
    res = await fetch([tar, zip_], dest, extract=True, extract_remove=remove, concurrency=1)
    lies = []
    for outcome, member in zip(res, ["from_tar.txt", "from_zip.txt"], strict=True):
        if not outcome.ok:
            assert outcome.error, outcome
        elif not isinstance(outcome.extracted, Path) or not (outcome.extracted / member).is_file():
            lies.append(f"{outcome.url} is {outcome.status}, but {member} is not extracted")
    assert not lies, f"{lies}; on disk: {leftovers(dest)}"


async def test_a_file_named_like_another_items_extraction_keeps_its_own_bytes(
    server: Server, dest: Path
) -> None:
    # data.csv.gz (extract=True) decompresses to data.csv, which another item of the call
    # downloads. One at a time, data.csv is reported skipped "already downloaded" while
    # the bytes there are the archive's; together, the archive fails instead.
    gz = server.handle("data.csv.gz", serving(gzip.compress(b"from the archive\n" * 100)))
    csv = server.handle("data.csv", serving(b"the csv itself\n"))
    res = await fetch([File(gz, extract=True), csv], dest, concurrency=1)
    archive, plain = res
    if plain.ok:
        assert isinstance(plain.path, Path)
        assert plain.path.read_bytes() == b"the csv itself\n", (
            f"data.csv is {plain.status}, but holds the archive's bytes"
        )
    if archive.ok and isinstance(archive.extracted, Path):
        assert archive.extracted.read_bytes().startswith(b"from the archive")


async def test_a_file_named_like_another_items_extraction_gets_the_same_outcome_in_any_order(
    server: Server, tmp_path: Path
) -> None:
    gz = server.handle("data.csv.gz", serving(gzip.compress(b"from the archive\n" * 100)))
    csv = server.handle("data.csv", serving(b"the csv itself\n"))
    outcomes = {}
    for concurrency in (1, 8):
        res = await fetch(
            [File(gz, extract=True), csv], tmp_path / str(concurrency), concurrency=concurrency
        )
        outcomes[concurrency] = [o.status for o in res]
    assert outcomes[1] == outcomes[8], outcomes
