"""Seams of resume with retries, mirrors and the segmented path.

A partial left by an interrupted run is worth as much as the bytes it holds: the next
run continues it whatever happens on the way (a first request that meets a transient
error, a source that has gone so a mirror takes over, an interrupt during the final
check of a split file), and drops it only for a reason it announces.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from faults import interrupt_after, plant_partial, stream
from server import FAST, FAST_ENGINE, Server, Spec, of_type, requested_range, run_manager

import rheo_nb
from rheo_nb import DownloadManager, File, Status, testing
from rheo_nb.events import Restarted, Started

MiB = 1 << 20
SIZE = 300_000
#: Large enough to be split with the default options (two ranges of at least 8 MiB).
BIG = 16 * MiB + 3 * testing.BLOCK + 17


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await asyncio.wait_for(rheo_nb.fetch(items, dest, **{**FAST, **options}), 30)


def ranged(
    key: str,
    size: int,
    etag: str,
    *,
    rate: float | None = None,
    gone: dict[str, bool] | None = None,
) -> Any:
    """A handler serving the generated file ``key`` with ranges and ``If-Range`` as real
    servers do (a range past the end is a 416); 404 for everything once ``gone["gone"]``
    is set."""

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        if gone is not None and gone["gone"]:
            return web.Response(status=404, text="gone\n")
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        fresh = request.headers.get("If-Range") not in (None, etag)
        asked = testing.parse_range(request.headers.get("Range"), size)
        if asked is not None and asked[1] < 0 and not fresh:  # nothing after the end
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        rng = requested_range(request, size)
        if rng is None or fresh:
            return await stream(request, key, size, headers=headers, rate=rate)
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return await stream(
            request, key, size, start=start, end=end, status=206, headers=headers, rate=rate
        )

    return handler


# --- a transient error on the first request of a rerun --------------------------------------------


async def test_a_rerun_whose_first_request_meets_a_503_still_resumes_the_partial(
    server: Server, dest: Path
) -> None:
    # The first request of the rerun asks for the rest and gets a 503 (a busy server, a
    # flaky link: what interrupted the first run). The retry must ask for the rest again,
    # not for the whole file, which truncates the partial without a word.
    url = server.url("r.bin", SIZE, fail=1)
    kept = server.content("r.bin", SIZE)[:100_000]
    plant_partial(dest, "r.bin", url, kept, validator=server.etag("r.bin", SIZE), total=SIZE)
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "r.bin").read_bytes() == server.content("r.bin", SIZE)
    asked = [r.headers.get("Range") for r in server.requests("r.bin")]
    assert asked == ["bytes=100000-", "bytes=100000-"], (
        f"the retry forgot the 100000 bytes kept: ranges asked {asked}, "
        f"started at {[e.resumed_from for e in of_type(events, Started)]}"
    )


# --- a mirror takes over a partial ---------------------------------------------------------------


async def test_a_mirror_with_the_same_strong_etag_continues_the_partial_of_a_gone_source(
    server: Server, dest: Path
) -> None:
    # Issue 11: "a partial from one source continues on another when ... the strong
    # validator (ETag) matches". The first run is interrupted while the file is split;
    # then the main URL is gone (404) and its mirror, with the same ETag, takes over.
    gone = {"gone": False}
    primary = server.handle("p.bin", ranged("data", BIG, '"same"', rate=4 * MiB, gone=gone))
    mirror = server.handle("m.bin", ranged("data", BIG, '"same"'))
    item = File(primary, mirrors=[mirror])
    await interrupt_after([item], dest, 4 * MiB, **FAST)
    gone["gone"] = True
    seen: list[rheo_nb.Event] = []
    async with DownloadManager(dest, **FAST_ENGINE) as m:
        m.on(None, seen.append)
        await m.add([item])
        res = await asyncio.wait_for(m.wait(), 30)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "p.bin").read_bytes() == testing.content("data", BIG)
    from_zero = [r for r in server.requests("m.bin") if r.headers.get("Range") is None]
    assert not from_zero, (
        "the mirror was asked for the whole file although the partial it could continue "
        f"was on disk (restarts announced: {of_type(seen, Restarted)})"
    )


# --- an interrupt during the final check of a split file -----------------------------------------


async def test_a_split_file_interrupted_during_its_final_hash_is_not_downloaded_again(
    server: Server, dest: Path
) -> None:
    # Cancel a hashed, split download while it checks its hash: every byte is on disk,
    # and the record says so. The rerun must check and commit those bytes, not discard
    # them as "a record that does not add up" and fetch the whole file again.
    url = server.handle("h.bin", ranged(f"{server.tag}/h.bin", BIG, '"h"', rate=16 * MiB))
    item = File(url, hash=server.hash("h.bin", BIG))
    async with DownloadManager(dest, **FAST_ENGINE) as m:
        ids = await m.add([item])
        m.on("validating", lambda _: asyncio.ensure_future(m.cancel(ids[0])))
        first = await asyncio.wait_for(m.wait(), 30)
    assert first[0].status is Status.CANCELLED
    assert not (dest / "h.bin").exists(), "the check ended before the cancel came"
    asked = len(server.requests("h.bin"))
    seen: list[rheo_nb.Event] = []
    async with DownloadManager(dest, **FAST_ENGINE) as m:
        m.on(None, seen.append)
        await m.add([item])
        res = await asyncio.wait_for(m.wait(), 30)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "h.bin").read_bytes() == server.content("h.bin", BIG)
    restarts = of_type(seen, Restarted)
    again = [r.headers.get("Range") for r in server.requests("h.bin")[asked:]]
    assert not restarts, f"{restarts[0].discarded} bytes discarded and asked again: {again}"
