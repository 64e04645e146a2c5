"""Issue 9, defect family 7: small files never resume.

Whatever the size of a file, bytes that arrived before an attempt ended early (a cut
connection, an interrupt) are kept as a resumable partial when the server gave a
validator, so the next attempt or run asks only for the rest.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from faults import interrupt_after, stream
from server import FAST, Server, Spec, requested_range

import rheo_nb
from rheo_nb import Status

#: Smaller than the default chunk_size (1 MiB): held in memory until it is written.
SMALL = 900_000
CUT = 300_000


def range_start(header: str | None) -> int | None:
    return None if header is None else int(header.removeprefix("bytes=").partition("-")[0])


async def cut_every_time(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Ranges and a strong ETag, but every response drops its connection after CUT bytes."""
    etag = '"flaky"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes"}
    rng = requested_range(request, SMALL)
    if rng is None or request.headers.get("If-Range") not in (None, etag):
        return await stream(request, spec.key, SMALL, headers=headers, cut=CUT)
    start, end = rng
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{SMALL}"
    return await stream(
        request, spec.key, SMALL, start=start, end=end, status=206, headers=headers, cut=CUT
    )


async def test_a_small_file_cut_every_time_completes_within_the_default_retries(
    server: Server, dest: Path
) -> None:
    url = server.handle("flaky.bin", cut_every_time)
    res = await rheo_nb.fetch([url], dest, **FAST)  # retries=3: four attempts
    asked = [r.headers.get("Range") for r in server.requests("flaky.bin")]
    assert res[0].status is Status.COMPLETED, f"{res[0].error}; asked {asked}"
    assert (dest / "flaky.bin").read_bytes() == server.content("flaky.bin", SMALL)
    assert [range_start(h) for h in asked] == [None, CUT, 2 * CUT]


async def test_an_interrupted_small_file_keeps_its_bytes_for_the_next_run(
    server: Server, dest: Path
) -> None:
    url = server.route_url("slowstart", "small.bin", SMALL, rate=CUT)
    await interrupt_after([url], dest, 400_000, **FAST)
    assert not (dest / "small.bin").exists()
    res = await rheo_nb.fetch([url], dest, **FAST)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "small.bin").read_bytes() == server.content("small.bin", SMALL)
    first, rerun = server.requests("small.bin")
    assert first.headers.get("Range") is None
    start = range_start(rerun.headers.get("Range"))
    assert start is not None, "the rerun started again from zero"
    assert start >= 400_000, f"the rerun asked from byte {start}, not after the bytes that came"
