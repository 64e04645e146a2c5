"""Issue 9, defect family 5: the segmented path.

A file split over several connections keeps every promise a single stream keeps:
``Retry-After`` (and an extra connection refused is not retried), the refetch from zero
before a hash mismatch is reported, ``max_size``, the server's name, validators on a
``416``; a range is never split while its request is in flight; a file changed on the
server between runs is fetched anew in one run; and a server that refuses ranges costs at
most one probe.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from faults import NGINX, Nginx, interrupt_after, leftovers, plant_partial, stream
from server import FAST, Record, RouteHandler, Server, Spec, requested_range

import rheo_nb
from rheo_nb import File, Status, testing

MiB = 1 << 20
#: Large enough to be split with the default options (two ranges of at least 8 MiB).
BIG = 16 * MiB + 3 * testing.BLOCK + 17


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


def range_start(record: Record) -> int | None:
    header = record.headers.get("Range")
    if header is None:
        return None
    return int(header.removeprefix("bytes=").partition("-")[0])


def ranges(
    key: Callable[[Spec], str],
    size: int,
    etag: str,
    *,
    headers: dict[str, str] | None = None,
    rate: float | None = None,
) -> RouteHandler:
    """A handler serving a generated file with ranges and ``If-Range`` as real servers do."""

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        out = {"ETag": etag, "Accept-Ranges": "bytes", **(headers or {})}
        rng = requested_range(request, size)
        if rng is None or request.headers.get("If-Range") not in (None, etag):
            return await stream(request, key(spec), size, headers=out, rate=rate)
        start, end = rng
        out["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return await stream(
            request, key(spec), size, start=start, end=end, status=206, headers=out, rate=rate
        )

    return handler


def generated(spec: Spec) -> str:
    return spec.key


# --- Retry-After on a range -----------------------------------------------------------------------


def throttled(after: str) -> RouteHandler:
    """Ranges, but the first request for a range past the start answers 429 Retry-After."""
    serve = ranges(generated, BIG, '"t"')
    refused: list[int] = []

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        rng = requested_range(request, BIG)
        if rng is not None and rng[0] > 0 and not refused:
            refused.append(rng[0])
            return web.Response(status=429, text="slow down\n", headers={"Retry-After": after})
        return await serve(request, spec)

    return handler


# The range refused here is the extra connection a split adds. A 429 to it says "no
# split" (tests/test_regress_segment_seams.py): the file goes on, on its first
# connection, instead of retrying the range (which spent the file's retries and, beyond
# retry_after_max, failed a file its first connection was delivering). The pause the
# server asks for still holds: no request is sent to it meanwhile.


async def test_a_range_answered_429_sends_nothing_during_its_retry_after(
    server: Server, dest: Path
) -> None:
    url = server.handle("throttled.bin", throttled("2"))
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "throttled.bin").read_bytes() == server.content("throttled.bin", BIG)
    records = server.requests("throttled.bin")
    refusal = next(r for r in records if r.status == 429)
    during = [round(r.time - refusal.time, 2) for r in records if r.time > refusal.time]
    assert all(w >= 1.8 for w in during), f"asked again after {during} s, not 2 s"


async def test_a_range_asked_to_wait_beyond_retry_after_max_is_not_asked_again(
    server: Server, dest: Path
) -> None:
    url = server.handle("patience.bin", throttled("600"))
    res = await asyncio.wait_for(fetch([url], dest, retry_after_max=5), 30)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "patience.bin").read_bytes() == server.content("patience.bin", BIG)
    records = server.requests("patience.bin")
    refusal = next(r for r in records if r.status == 429)
    assert not [r for r in records if range_start(r) == range_start(refusal) and r is not refusal]


# --- resuming a segmented partial keeps the single stream's promises ------------------------------

MIDDLE = 8 * MiB
SEGMENTS = [[0, MIDDLE, MIDDLE // 2], [MIDDLE, BIG, (BIG - MIDDLE) // 2]]


def plant_split(server: Server, dest: Path, name: str, url: str, data: bytes) -> None:
    """A segmented partial, half of each of its two ranges done, of the file ``ranged``
    serves under ``name``."""
    plant_partial(
        dest, name, url, data, validator=server.etag(name, BIG), total=BIG, segments=SEGMENTS
    )


async def test_a_segmented_partial_with_a_bad_prefix_is_fetched_once_more_from_zero(
    server: Server, dest: Path
) -> None:
    url = server.route_url("ranged", "prefix.bin", BIG)
    plant_split(server, dest, "prefix.bin", url, b"\xaa" * BIG)
    res = await fetch([File(url, hash=server.hash("prefix.bin", BIG))], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "prefix.bin").read_bytes() == server.content("prefix.bin", BIG)


async def test_a_segmented_partial_of_a_file_over_max_size_is_refused(
    server: Server, dest: Path
) -> None:
    url = server.route_url("ranged", "capped.bin", BIG)
    plant_split(server, dest, "capped.bin", url, server.content("capped.bin", BIG))
    res = await fetch([url], dest, max_size=BIG // 2)
    assert res[0].status is Status.FAILED, f"a {BIG}-byte file passed max_size={BIG // 2}"
    assert "max_size" in (res[0].error or "")
    assert not (dest / "capped.bin").exists()


async def test_a_segmented_partial_takes_the_name_the_server_gives(
    server: Server, dest: Path
) -> None:
    etag = server.etag("cd.bin", BIG)
    named = {"Content-Disposition": 'attachment; filename="server-name.bin"'}
    url = server.handle("cd.bin", ranges(generated, BIG, etag, headers=named))
    plant_split(server, dest, "cd.bin", url, server.content("cd.bin", BIG))
    res = await fetch([url], dest, content_disposition=True)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].path.name == "server-name.bin"
    assert (dest / "server-name.bin").read_bytes() == server.content("cd.bin", BIG)
    assert not (dest / "cd.bin").exists()


# --- a 416 with another validator -----------------------------------------------------------------


async def test_a_416_from_a_changed_file_is_not_taken_for_a_complete_partial(
    server: Server, dest: Path
) -> None:
    size = 100_000

    async def changed(request: web.Request, spec: Spec) -> web.StreamResponse:
        # The file is now version 2 (same size); a resume of version 1 gets a 416.
        headers = {"ETag": '"v2"', "Accept-Ranges": "bytes"}
        if "Range" in request.headers:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        return await stream(request, f"{spec.key}-v2", size, headers=headers)

    url = server.handle("stale.bin", changed)
    old = testing.content(f"{server.tag}/stale.bin-v1", size)
    plant_partial(dest, "stale.bin", url, old, validator='"v1"', total=size)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "stale.bin").read_bytes() == testing.content(
        f"{server.tag}/stale.bin-v2", size
    ), "the stale partial of version 1 was reported complete"


# --- never split a range whose request is in flight -----------------------------------------------


async def test_a_range_is_never_split_while_its_request_is_in_flight(
    server: Server, dest: Path
) -> None:
    size = 64 * MiB
    serve = ranges(generated, size, '"f"')

    async def slow_to_answer(request: web.Request, spec: Spec) -> web.StreamResponse:
        await asyncio.sleep(0.3)
        return await serve(request, spec)

    names = ["first.bin", "second.bin"]
    urls = [server.handle(name, slow_to_answer) for name in names]
    res = await fetch(urls, dest)
    assert [o.status for o in res] == [Status.COMPLETED] * 2, [o.error for o in res]
    for name in names:
        assert (dest / name).read_bytes() == server.content(name, size)
        from_zero = [r for r in server.requests(name) if range_start(r) in (None, 0)]
        assert len(from_zero) == 1, (
            f"{name} was asked from its first byte {len(from_zero)} times: "
            f"{[r.headers.get('Range') for r in server.requests(name)]}"
        )


# --- a server that refuses ranges -----------------------------------------------------------------


async def test_a_server_refusing_ranges_gets_at_most_one_probe(server: Server, dest: Path) -> None:
    # Apache gives a file it has just written a weak ETag, and then answers ranges with the
    # whole file.
    headers = {
        "ETag": 'W/"fresh"',
        "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
        "Accept-Ranges": "bytes",
    }

    async def refusing(request: web.Request, spec: Spec) -> web.StreamResponse:
        return await stream(request, spec.key, BIG, headers=headers, rate=32 * MiB)

    url = server.handle("weak.bin", refusing)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "weak.bin").read_bytes() == server.content("weak.bin", BIG)
    whole = [r for r in server.requests("weak.bin") if r.status == 200]
    assert len(whole) <= 2, f"{len(whole)} responses with the whole file were opened"


# --- a file that changes on the server between runs (nginx, Apache, lighttpd) ---------------------


def version_key(version: dict[str, int]) -> Callable[[Spec], str]:
    return lambda spec: f"{spec.key}-v{version['v']}"


@pytest.mark.parametrize("new_size", [BIG, BIG + MiB], ids=["same-size", "other-size"])
async def test_a_split_file_changed_between_runs_is_fetched_anew_in_one_run(
    server: Server, dest: Path, new_size: int
) -> None:
    version = {"v": 1}
    handlers = {
        1: ranges(version_key(version), BIG, '"v1"', rate=2 * MiB),
        2: ranges(version_key(version), new_size, '"v2"'),
    }

    async def changing(request: web.Request, spec: Spec) -> web.StreamResponse:
        return await handlers[version["v"]](request, spec)

    url = server.handle("moving.bin", changing)
    await interrupt_after([url], dest, 4 * MiB, **FAST)
    assert leftovers(dest)  # a partial to resume
    assert not (dest / "moving.bin").exists()
    assert any(range_start(r) for r in server.requests("moving.bin")), "it never split"
    version["v"] = 2
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "moving.bin").read_bytes() == testing.content(
        f"{server.tag}/moving.bin-v2", new_size
    )


@pytest.mark.skipif(NGINX is None, reason="needs Debian's nginx (tests/run installs it as root)")
@pytest.mark.parametrize("new_size", [BIG, BIG + MiB], ids=["same-size", "other-size"])
async def test_a_split_file_changed_on_nginx_between_runs_is_fetched_anew_in_one_run(
    tmp_path: Path, dest: Path, new_size: int
) -> None:
    root, state = tmp_path / "www", tmp_path / "nginx"
    root.mkdir()
    state.mkdir()
    served = root / "data.bin"
    served.write_bytes(testing.content("nginx-v1", BIG))
    with Nginx(root, state, limit_rate=2 * MiB) as srv:
        await interrupt_after([srv.url("data.bin")], dest, 4 * MiB, **FAST)
        assert leftovers(dest)  # a partial to resume
        assert not (dest / "data.bin").exists()
        # Another file in its place, with another mtime: nginx's ETag changes with it.
        new = testing.content("nginx-v2", new_size)
        (root / "data.tmp").write_bytes(new)
        mtime = served.stat().st_mtime + 60
        os.utime(root / "data.tmp", (mtime, mtime))
        os.replace(root / "data.tmp", served)
        srv.unlimit()
        res = await fetch([srv.url("data.bin")], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "data.bin").read_bytes() == new
