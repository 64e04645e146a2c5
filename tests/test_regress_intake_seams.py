"""Seams of the lazy intake (``add()`` of a generator or a Parquet manifest) with a source
that breaks partway.

A source that stops with an error is one bad item: the call ends, every item it yielded
before the error has an outcome, and the error is reported once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from server import FAST, Server

import rheo_nb
from rheo_nb import Status


def breaking(server: Server, good: int) -> Iterator[str]:
    """``good`` URLs of files the server has, then an error (a manifest that breaks)."""
    for i in range(good):
        yield server.url(f"f{i}.bin", 100)
    raise ValueError("row 9: the manifest is damaged here")


@pytest.mark.parametrize("good", [0, 10])
async def test_a_lazy_source_that_breaks_before_a_full_batch_ends_the_call(
    server: Server, dest: Path, good: int
) -> None:
    # The manager reads a lazy source 256 items at a time; a source that fails before
    # yielding 256 never lets wait() return.
    try:
        res = await asyncio.wait_for(rheo_nb.fetch(breaking(server, good), dest, **FAST), 5)
    except TimeoutError:
        pytest.fail(f"fetch() never returned (the server saw {server.count()} requests)")
    assert any("the manifest is damaged" in (o.error or "") for o in res), repr(res)


async def test_every_item_a_lazy_source_yielded_before_it_broke_has_an_outcome(
    server: Server, dest: Path
) -> None:
    # 300 good items then an error: the 44 yielded after the first batch of 256 vanish
    # with the error, neither downloaded nor reported.
    res = await asyncio.wait_for(rheo_nb.fetch(breaking(server, 300), dest, **FAST), 30)
    urls = {server.url(f"f{i}.bin", 100) for i in range(300)}
    reported = {o.url for o in res if o.url in urls}
    missing = sorted(urls - reported, key=len)
    assert not missing, f"{len(missing)} items yielded have no outcome, e.g. {missing[:2]}"


@pytest.mark.allow_blocking
async def test_a_parquet_manifest_gone_before_the_call_ends_it(
    server: Server, tmp_path: Path
) -> None:
    # read_manifest() returns a lazy sequence for Parquet: it reads the table again when
    # the call iterates it. Moved or deleted meanwhile, the call hangs.
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = tmp_path / "files.parquet"
    pq.write_table(pa.table({"url": [server.url(f"p{i}.bin", 100) for i in range(5)]}), table)
    files = rheo_nb.read_manifest(table)
    table.unlink()
    try:
        res = await asyncio.wait_for(rheo_nb.fetch(files, tmp_path / "dest", **FAST), 5)
    except TimeoutError:
        pytest.fail("fetch() never returned")
    assert [o.status for o in res] == [Status.FAILED], repr(res)
