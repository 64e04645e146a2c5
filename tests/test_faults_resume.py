"""Resume and integrity against servers that get ranges wrong, files that change between
runs, partials that cannot be trusted, and segmented downloads whose ranges fail."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from faults import (
    FAILED_RANGES,
    RANGES,
    leftovers,
    plant_partial,
    read_partial,
    recording_ranges,
    until,
)
from server import FAST, Server, Spec, of_type, requested_range, run_manager, send

import rheo_nb
from rheo_nb import File, Status, files, testing
from rheo_nb.display import TextProgress
from rheo_nb.events import Restarted, Retrying, Started
from rheo_nb.segments import MIN_SEGMENT

SIZE = 100_000
BIG = 2 * MIN_SEGMENT + 3 * testing.BLOCK + 17  # large enough to be split


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


def ranges_asked(server: Server, name: str) -> list[str | None]:
    return RANGES.get((server.tag, name), [])


def span(header: str) -> int:
    first, _, last = header.removeprefix("bytes=").partition("-")
    return int(last) - int(first) + 1


# --- single stream --------------------------------------------------------------------------------


async def test_a_server_ignoring_range_restarts_from_zero_without_appending(
    server: Server, dest: Path
) -> None:
    url = server.route_url("noranges", "n.bin")
    plant_partial(dest, "n.bin", url, b"\xaa" * 30_000, validator=server.etag("n.bin"), total=SIZE)
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    assert (dest / "n.bin").read_bytes() == server.content("n.bin")
    assert server.statuses("n.bin") == [200]
    assert of_type(events, Started)[0].resumed_from == 0
    assert leftovers(dest) == ["n.bin"]


async def test_a_206_whose_content_range_differs_from_the_request_is_not_appended(
    server: Server, dest: Path
) -> None:
    url = server.route_url("badrange", "b.bin")
    plant_partial(dest, "b.bin", url, b"\xaa" * 30_000, validator=server.etag("b.bin"), total=SIZE)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "b.bin").read_bytes() == server.content("b.bin")
    assert server.statuses("b.bin") == [206, 200]


async def test_a_206_of_the_right_length_but_the_wrong_place_is_not_appended(
    server: Server, dest: Path
) -> None:
    # Asked for bytes 30000-, the server sends as many bytes from 0: the length fits,
    # only the Content-Range tells that they belong elsewhere.
    async def shifted(request: web.Request, spec: Spec) -> web.StreamResponse:
        tag = {"ETag": '"s"'}
        rng = requested_range(request, SIZE)
        if rng is None:
            return await send(request, spec, headers=tag)
        n = rng[1] - rng[0]
        headers = {**tag, "Content-Range": f"bytes 0-{n - 1}/{SIZE}"}
        return await send(request, spec, status=206, end=n, headers=headers)

    url = server.handle("shifted.bin", shifted)
    plant_partial(
        dest,
        "shifted.bin",
        url,
        server.content("shifted.bin")[:30_000],
        validator='"s"',
        total=SIZE,
    )
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "shifted.bin").read_bytes() == server.content("shifted.bin")
    assert server.statuses("shifted.bin") == [206, 200]


async def test_a_416_on_a_complete_partial_finalizes_it(server: Server, dest: Path) -> None:
    url = server.url("whole.bin")
    data = server.content("whole.bin")
    plant_partial(dest, "whole.bin", url, data, validator=server.etag("whole.bin"), total=SIZE)
    res = await fetch([File(url, hash=server.hash("whole.bin"))], dest)
    assert res[0].status is Status.COMPLETED
    assert server.statuses("whole.bin") == [416]
    assert (dest / "whole.bin").read_bytes() == data
    assert leftovers(dest) == ["whole.bin"]


async def test_a_416_on_a_partial_larger_than_the_file_restarts_it(
    server: Server, dest: Path
) -> None:
    url = server.url("shrunk.bin")
    plant_partial(
        dest,
        "shrunk.bin",
        url,
        b"\xaa" * (SIZE + 5_000),
        validator=server.etag("shrunk.bin"),
        total=None,
    )
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert server.statuses("shrunk.bin") == [416, 200]
    assert (dest / "shrunk.bin").read_bytes() == server.content("shrunk.bin")
    assert leftovers(dest) == ["shrunk.bin"]


async def test_a_416_without_a_usable_content_range_is_never_taken_as_complete(
    server: Server, dest: Path
) -> None:
    async def vague(request: web.Request, spec: Spec) -> web.StreamResponse:
        if "Range" in request.headers:
            return web.Response(status=416, headers={"ETag": '"v"'})
        return await send(request, spec, headers={"ETag": '"v"'})

    url = server.handle("vague.bin", vague)
    plant_partial(dest, "vague.bin", url, b"\xaa" * 30_000, validator='"v"', total=SIZE)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "vague.bin").read_bytes() == server.content("vague.bin")


async def test_a_file_changed_on_the_server_between_runs_is_fetched_anew(
    server: Server, dest: Path
) -> None:
    version = {"v": 1, "cut": True}

    async def changing(request: web.Request, spec: Spec) -> web.StreamResponse:
        key, size = f"{spec.key}-v{version['v']}", SIZE
        tag = f'"v{version["v"]}"'
        headers = {"ETag": tag, "Accept-Ranges": "bytes"}
        body = testing.content(key, size)
        rng = requested_range(request, size)
        if rng is not None and request.headers.get("If-Range") == tag:
            start, end = rng
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            return web.Response(status=206, body=body[start:end], headers=headers)
        resp = web.StreamResponse(headers={**headers, "Content-Length": str(size)})
        await resp.prepare(request)
        if version["cut"]:
            await resp.write(body[: size // 2])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write(body)
        await resp.write_eof()
        return resp

    url = server.handle("moving.bin", changing)
    first = await fetch([url], dest, retries=0, chunk_size=4096)
    assert first[0].status is Status.FAILED
    assert files.working_path(dest / "moving.bin", ".part").stat().st_size > 0
    version.update(v=2, cut=False)
    second = await fetch([url], dest)
    assert second[0].status is Status.COMPLETED
    last = server.requests("moving.bin")[-1]
    assert last.headers["If-Range"] == '"v1"'
    assert last.status == 200
    assert (dest / "moving.bin").read_bytes() == testing.content(
        f"{server.tag}/moving.bin-v2", SIZE
    )
    assert leftovers(dest) == ["moving.bin"]


async def test_a_partial_with_a_garbage_prefix_is_refetched_once_then_verified(
    server: Server, dest: Path
) -> None:
    url = server.url("prefix.bin")
    etag = server.etag("prefix.bin")
    plant_partial(dest, "prefix.bin", url, b"\x00" * 40_000, validator=etag, total=SIZE)
    res = await fetch([File(url, hash=server.hash("prefix.bin"))], dest)
    assert res[0].status is Status.COMPLETED
    assert server.statuses("prefix.bin") == [206, 200]
    assert (dest / "prefix.bin").read_bytes() == server.content("prefix.bin")


async def test_a_file_that_fails_its_hash_after_the_refetch_fails_without_looping(
    server: Server, dest: Path
) -> None:
    url = server.url("wrong.bin")
    plant_partial(
        dest, "wrong.bin", url, b"\x00" * 40_000, validator=server.etag("wrong.bin"), total=SIZE
    )
    res = await fetch([File(url, hash="sha256:" + "0" * 64)], dest, retries=5)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "sha256 mismatch" in res[0].error
    assert server.statuses("wrong.bin") == [206, 200]
    assert leftovers(dest) == []


# --- segmented ------------------------------------------------------------------------------------


async def test_a_failing_segment_retries_on_its_own_and_the_file_completes(
    server: Server, dest: Path
) -> None:
    # Paced, so that the first connection is still short of the middle when the second
    # connection's answer confirms the split (a fast first stream would make it moot).
    url = server.route_url("segfail", "seg.bin", BIG, cut=300_000, rate=20_000_000)
    res, events = await run_manager(dest, [File(url, hash=server.hash("seg.bin", BIG))])
    assert res[0].status is Status.COMPLETED
    assert (dest / "seg.bin").read_bytes() == server.content("seg.bin", BIG)
    (failed_at,) = FAILED_RANGES[server.tag, "seg.bin"]
    retried = [e for e in of_type(events, Retrying) if "range" in e.error]
    assert len(retried) == 1
    assert f"range {failed_at}-" not in retried[0].error  # it went on from where it stopped
    starts = [
        int(h.removeprefix("bytes=").partition("-")[0])
        for h in ranges_asked(server, "seg.bin")
        if h
    ]
    assert any(failed_at < s <= failed_at + 300_000 for s in starts)
    assert server.statuses("seg.bin").count(200) == 1  # the file never restarted
    assert leftovers(dest) == ["seg.bin"]


async def test_a_segmented_partial_resumes_only_its_missing_ranges(
    server: Server, dest: Path
) -> None:
    rate: dict[str, float | None] = {"rate": 6_000_000}
    asked: list[str | None] = []

    url = server.handle("resume.bin", recording_ranges(BIG, '"r"', rate, asked))
    final = dest / "resume.bin"
    meta = files.working_path(final, ".json")
    task = asyncio.create_task(fetch([url], dest))

    def progressed() -> bool:
        try:
            segments = json.loads(meta.read_text()).get("segments", [])
        except (OSError, ValueError):
            return False
        return len(segments) > 1 and all(s[2] > 0 for s in segments)

    await until(progressed, 20)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    partial = await asyncio.to_thread(read_partial, final)
    assert partial is not None
    assert partial.record is not None
    missing = sum(end - start - done for start, end, done in partial.record.segments)
    assert 0 < missing < BIG
    assert not final.exists()

    asked.clear()
    rate["rate"] = None
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert final.read_bytes() == server.content("resume.bin", BIG)
    assert asked
    assert all(h is not None for h in asked)
    assert sum(span(h) for h in asked if h) == missing
    assert leftovers(dest) == ["resume.bin"]


async def test_a_segmented_download_whose_server_ignores_range_goes_on_with_its_first_stream(
    server: Server, dest: Path
) -> None:
    url = server.route_url("fakeranges", "fake.bin", BIG)
    res = await fetch([File(url, hash=server.hash("fake.bin", BIG))], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "fake.bin").read_bytes() == server.content("fake.bin", BIG)
    asked = ranges_asked(server, "fake.bin")
    # One probe for a range, refused; the first stream, already under way, goes to the end.
    assert asked[0] is None
    assert len(asked) == 2
    assert asked[1] is not None
    assert leftovers(dest) == ["fake.bin"]


async def test_a_segmented_download_given_mangled_ranges_goes_on_with_its_first_stream(
    server: Server, dest: Path
) -> None:
    url = server.route_url("mangledranges", "mangled.bin", BIG)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "mangled.bin").read_bytes() == server.content("mangled.bin", BIG)
    asked = ranges_asked(server, "mangled.bin")
    assert asked[0] is None  # the whole file, which goes on to the end
    assert len(asked) == 2  # after one probe, whose 206 did not match what it asked
    assert leftovers(dest) == ["mangled.bin"]


async def test_a_segmented_partial_with_an_inconsistent_sidecar_is_restarted(
    server: Server, dest: Path
) -> None:
    url = server.route_url("ranged", "odd.bin", BIG)
    # Segments that overlap: the sidecar cannot be trusted, whatever the bytes.
    segments = [[0, BIG // 2, 1000], [BIG // 4, BIG, 0]]
    plant_partial(
        dest,
        "odd.bin",
        url,
        b"\xaa" * BIG,
        validator=server.etag("odd.bin", BIG),
        total=BIG,
        segments=segments,
    )
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "odd.bin").read_bytes() == server.content("odd.bin", BIG)
    assert ranges_asked(server, "odd.bin")[0] is None


async def test_a_partial_the_server_cannot_resume_is_announced_then_fetched_anew(
    server: Server, dest: Path
) -> None:
    # A rerun after an interrupt, against a server that ignores Range: the file restarts
    # from zero, and the core says so, as an event and on the text display.
    size = 300_000
    url = server.route_url("noranges", "again.bin", size)
    plant_partial(
        dest,
        "again.bin",
        url,
        server.content("again.bin", size)[:100_000],
        validator=server.etag("again.bin", size),
        total=size,
    )
    log = io.StringIO()
    res, seen = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    assert (dest / "again.bin").read_bytes() == server.content("again.bin", size)
    (restarted,) = of_type(seen, Restarted)
    assert restarted.discarded == 100_000
    assert restarted.reason == "the server does not support resume"
    plant_partial(
        dest,
        "again.bin",
        url,
        server.content("again.bin", size)[:100_000],
        validator=server.etag("again.bin", size),
        total=size,
    )
    (dest / "again.bin").unlink()
    await fetch([url], dest, progress=TextProgress(log))
    assert "restarting again.bin: the server does not support resume" in log.getvalue()
