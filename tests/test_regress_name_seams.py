"""Seams of names: the server's ``Content-Disposition`` names with conflicts and offline
reruns, and control characters in names.

``content_disposition=True`` exists for URLs that say nothing of the file
(``/download?id=1``, ``/download?id=2``): they get the names their server gives, and an
offline rerun finds those files. A name never carries a control character to the disk
or to a terminal, C1 controls (U+0080..U+009F, such as U+009B, the 8-bit CSI) included.
"""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from faults import leftovers
from server import FAST, Server, Spec, send

import rheo_nb
from rheo_nb import File, Status


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await asyncio.wait_for(rheo_nb.fetch(items, dest, **{**FAST, **options}), 30)


def named(disposition: str) -> Any:
    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        headers = {"Content-Disposition": disposition, "ETag": '"n"'}
        return await send(request, spec, headers=headers)

    return handler


async def test_urls_alike_but_for_their_query_get_the_names_their_server_gives(
    server: Server, dest: Path
) -> None:
    # Both URLs end in /download, so both are planned to dest/download, and the second
    # is refused as a path conflict before the server is asked for its name; the hint
    # (File(url, path=...)) turns content_disposition off for it.
    names = {"1": "one.csv", "2": "two.csv"}

    async def by_id(request: web.Request, spec: Spec) -> web.StreamResponse:
        name = names[request.query["id"]]
        headers = {"Content-Disposition": f'attachment; filename="{name}"', "ETag": '"d"'}
        return await send(request, spec, headers=headers)

    url = server.handle("download", by_id)
    res = await fetch([f"{url}?id=1", f"{url}?id=2"], dest, content_disposition=True)
    assert [o.status for o in res] == [Status.COMPLETED] * 2, repr(res)
    assert [n for n in leftovers(dest) if not n.startswith(".")] == ["one.csv", "two.csv"]


async def test_an_offline_rerun_of_a_file_named_by_its_server_says_how_to_find_it(
    server: Server, dest: Path
) -> None:
    # The file is complete on disk under the server's name; the offline rerun (an HPC
    # compute node after a login-node download) reports it "offline: not downloaded".
    url = server.handle("get", named('attachment; filename="report.csv"'))
    first = await fetch([url], dest, content_disposition=True)
    assert first[0].status is Status.COMPLETED, first[0].error
    first_bytes = (dest / "report.csv").read_bytes()
    res = await fetch([url], dest, content_disposition=True, offline=True)
    # The name is in the server's answer, which offline mode cannot ask for, and no record
    # of it is kept: the failure says so and how to find the file (its path given).
    assert res[0].status is Status.FAILED
    assert "File(url, path=...)" in (res[0].error or "")
    assert (dest / "report.csv").read_bytes() == first_bytes
    res = await fetch([File(url, path="report.csv")], dest, content_disposition=True, offline=True)
    assert res[0].status is Status.SKIPPED, res[0].error


@pytest.mark.parametrize("source", ["url", "content-disposition"])
async def test_a_c1_control_character_never_reaches_a_file_name(
    server: Server, dest: Path, source: str
) -> None:
    hostile = "a\x9b[2Jb.bin"  # U+009B is CSI to terminals that take 8-bit controls
    if source == "url":
        url = server.url(hostile, 100)
        res = await fetch([url], dest)
    else:
        disposition = f"attachment; filename*=UTF-8''{quote(hostile)}"
        url = server.handle("get", named(disposition))
        res = await fetch([url], dest, content_disposition=True)
    assert res[0].status is Status.COMPLETED, res[0].error
    names = [n for n in leftovers(dest) if not n.startswith(".")]
    controls = [ascii(n) for n in names if any(unicodedata.category(c) == "Cc" for c in n)]
    assert not controls, f"names with control characters on disk: {controls}"
