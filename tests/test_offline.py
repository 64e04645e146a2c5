"""Offline mode (``offline=True`` or ``RHEO_NB_OFFLINE=1``): what a compute node without
internet sees after a login node downloaded the data. No request reaches any server."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from faults import interrupt_after, part_size, read_partial
from server import FAST, Server, of_type, run_manager

import rheo_nb
from rheo_nb import File, ManifestError, Status, read_manifest
from rheo_nb.events import Skipped

MiB = 1 << 20
NOT_HERE = "offline: not downloaded"


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


async def test_offline_skips_complete_files_and_fails_the_others_without_a_request(
    server: Server, dest: Path
) -> None:
    names = ["done.bin", "checked.bin", "corrupt.bin", "missing.bin"]
    urls = {n: server.url(n) for n in names}
    await fetch([urls[n] for n in names[:3]], dest)
    (dest / "corrupt.bin").write_bytes(b"not what the hash says")
    before = server.count()
    items: list[str | File] = [
        urls["done.bin"],
        File(urls["checked.bin"], hash=server.hash("checked.bin")),
        File(urls["corrupt.bin"], hash=server.hash("corrupt.bin")),
        File(urls["missing.bin"], mirrors=[server.url("missing.bin", mirror=1)]),
    ]
    res, events = await run_manager(dest, items, offline=True)
    assert server.count() == before  # not one request, mirrors included
    assert [o.status for o in res] == [
        Status.SKIPPED,
        Status.SKIPPED,
        Status.FAILED,
        Status.FAILED,
    ]
    reasons = [e.reason for e in of_type(events, Skipped)]
    assert reasons == ["already downloaded", "already downloaded, sha256 verified"]
    assert res[2].error == f"{urls['corrupt.bin']}: {NOT_HERE}"
    assert res[3].error == f"{urls['missing.bin']}: {NOT_HERE}"
    # What is there stays as it is: offline mode changes nothing on disk.
    assert (dest / "corrupt.bin").read_bytes() == b"not what the hash says"
    assert not (dest / "missing.bin").exists()


async def test_offline_keeps_a_partial_for_the_next_run_online(server: Server, dest: Path) -> None:
    url = server.url("big.bin", 8 * MiB, rate=4 * MiB)
    await interrupt_after([url], dest, 512 * 1024, **FAST)
    kept = part_size(dest / "big.bin")
    assert kept >= 512 * 1024
    asked = server.count()
    (outcome,) = await fetch([url], dest, offline=True)
    assert outcome.status is Status.FAILED
    assert outcome.error == f"{url}: {NOT_HERE}"
    assert outcome.bytes == 0
    assert server.count() == asked
    assert part_size(dest / "big.bin") == kept
    partial = await asyncio.to_thread(read_partial, dest / "big.bin")
    assert partial is not None
    assert partial.record is not None  # still resumable
    (online,) = await fetch([url], dest)
    assert online.status is Status.COMPLETED
    assert server.requests("big.bin")[-1].headers.get("Range") == f"bytes={kept}-"


@pytest.mark.parametrize(
    ("value", "offline"), [("1", True), ("yes", True), ("0", False), ("", False)]
)
async def test_the_environment_variable_sets_offline_mode(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch, value: str, offline: bool
) -> None:
    monkeypatch.setenv("RHEO_NB_OFFLINE", value)
    (outcome,) = await fetch([server.url("env.bin")], dest)
    assert (outcome.status is Status.FAILED) is offline
    assert server.count() == (0 if offline else 1)


async def test_an_explicit_offline_false_wins_over_the_environment(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RHEO_NB_OFFLINE", "1")
    (outcome,) = await fetch([server.url("x.bin")], dest, offline=False)
    assert outcome.status is Status.COMPLETED


def test_offline_is_read_when_the_call_is_made(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job started online stays online; a later call sees the variable."""
    monkeypatch.setenv("RHEO_NB_OFFLINE", "1")
    assert rheo_nb.Options().offline is True
    monkeypatch.delenv("RHEO_NB_OFFLINE")
    assert rheo_nb.Options().offline is False


def test_a_manifest_url_cannot_be_read_offline(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RHEO_NB_OFFLINE", "1")
    with pytest.raises(ManifestError, match=f"cannot download it .*{NOT_HERE}"):
        read_manifest(server.url("SHA256SUMS"))
    assert server.count() == 0


# --- offline x extraction ---------------------------------------------------------------------


def sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def archive() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("rows.csv")
        data = b"a,b\n1,2\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


async def test_offline_extracts_an_archive_downloaded_before(server: Server, dest: Path) -> None:
    body = archive()
    f = File(server.publish("set.tar.gz", body), hash=sha256(body))
    await fetch([f], dest)  # on the login node: downloaded, not extracted
    (outcome,) = await fetch([f], dest, offline=True, extract=True)
    assert outcome.status is Status.SKIPPED
    assert outcome.extracted == dest / "set"
    assert (dest / "set" / "rows.csv").read_bytes() == b"a,b\n1,2\n"
    assert server.count() == 1


async def test_offline_skips_an_archive_removed_after_its_extraction(
    server: Server, dest: Path
) -> None:
    body = archive()
    f = File(server.publish("set.tar.gz", body), hash=sha256(body), extract=True)
    await fetch([f], dest, extract_remove=True)
    assert not (dest / "set.tar.gz").exists()
    (outcome,) = await fetch([f], dest, offline=True, extract_remove=True)
    assert outcome.status is Status.SKIPPED
    assert outcome.extracted == dest / "set"
    assert server.count() == 1
