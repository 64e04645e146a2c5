"""Issue 9, defect family 2: duplicates and conflicts.

Two items that meet at one URL or one path are either one download that keeps every
promise each item asked for, or a conflict refused per item with a clear message.
``completed`` and ``skipped`` always mean the file is at its path, with its own bytes, and
the outcome never depends on how many downloads ran at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from server import FAST, Server, Spec, send

import rheo_nb
from rheo_nb import File, Status


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


WRONG_HASH = "sha256:" + "0" * 64


@pytest.mark.parametrize("order", ["plain-first", "hashed-first"])
async def test_a_hash_given_on_a_repeated_url_is_never_dropped(
    server: Server, dest: Path, order: str
) -> None:
    url = server.url("h.bin")
    items = [url, File(url, hash=WRONG_HASH)]
    if order == "hashed-first":
        items.reverse()
    res = await fetch(items, dest)
    # Either the repeat is refused with a message that says why, or the hash is checked:
    # in both cases some outcome says so.
    problems = [o for o in res if not o.ok]
    assert problems, f"the wrong hash went unnoticed: {res!r}"
    assert all(o.error for o in problems)
    assert any("hash" in (o.error or "") or "sha256" in (o.error or "") for o in problems), res


async def named_invoice(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Each URL its own bytes, all of them named ``invoice.pdf`` by the server."""
    headers = {"Content-Disposition": 'attachment; filename="invoice.pdf"', "ETag": '"i"'}
    return await send(request, spec, headers=headers)


async def invoices(server: Server, dest: Path, concurrency: int) -> tuple[list[Status], list[str]]:
    """Four URLs the server names alike: their statuses, and every outcome that lies."""
    names = [f"invoice-{i}" for i in range(4)]
    urls = [server.handle(name, named_invoice) for name in names]
    res = await fetch(urls, dest, content_disposition=True, concurrency=concurrency)
    lies = []
    for name, outcome in zip(names, res, strict=True):
        if not outcome.ok:
            if not outcome.error:
                lies.append(f"{name} is {outcome.status} without a reason")
        elif not isinstance(outcome.path, Path) or not outcome.path.is_file():
            lies.append(f"{name} is {outcome.status} but not on disk")
        elif outcome.path.read_bytes() != server.content(name):
            lies.append(f"{name} is {outcome.status} at {outcome.path.name}, another URL's file")
    return [o.status for o in res], lies


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_urls_the_server_names_alike_are_ok_only_when_their_own_file_is_on_disk(
    server: Server, dest: Path, concurrency: int
) -> None:
    _, lies = await invoices(server, dest, concurrency)
    assert lies == []


async def test_urls_the_server_names_alike_get_the_same_outcomes_one_at_a_time_or_together(
    server: Server, tmp_path: Path
) -> None:
    one, _ = await invoices(server, tmp_path / "one", concurrency=1)
    together, _ = await invoices(server, tmp_path / "together", concurrency=8)
    assert sorted(one) == sorted(together)
