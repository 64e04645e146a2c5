"""Mirrors: a File's other URLs, tried in order, against real servers that fail in each
way a source can fail; bytes carried from one source to the next (or not), the Range
headers each server saw, and ranges of one file taken from several sources at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from auth_servers import KEY, PASSWORD, TOKEN, AuthServer
from faults import (
    ERROR_PAGE,
    RawRequest,
    head,
    interrupt_after,
    leftovers,
    raw_server,
    read_partial,
    recording_ranges,
    stream,
)
from server import FAST, FAST_ENGINE, Server, SharedServer, Spec, of_type, run_manager

import rheo_nb
from rheo_nb import BearerToken, File, Status, testing
from rheo_nb.events import Restarted, Retrying

MiB = 1 << 20
SIZE = 100_000


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


def ranges_seen(server: Server, name: str, route: str | None = None) -> list[str | None]:
    """The Range header of every request for ``name`` (on ``route``), in order."""
    return [
        r.headers.get("Range") for r in server.requests(name) if route is None or r.route == route
    ]


# --- order, switching, and what the outcome says -----------------------------------------


async def test_each_permanent_failure_moves_on_to_the_next_source_in_order(
    server: Server, dest: Path
) -> None:
    name = "data.bin"
    main = server.url(name, status=404)
    gone = server.url(name, status=410)
    forbidden = server.url(name, status=403)
    good = server.route_url("ranged", name)
    res, events = await run_manager(dest, [File(main, mirrors=[gone, forbidden, good])])
    (outcome,) = res
    assert outcome.status is Status.COMPLETED, outcome.error
    assert outcome.source_url == good
    assert outcome.url == main
    assert (dest / name).read_bytes() == server.content(name)
    # One request each, in the order given: a final status is not retried.
    assert [(r.route, r.status) for r in server.requests(name)] == [
        ("gen", 404),
        ("gen", 410),
        ("gen", 403),
        ("ranged", 200),
    ]
    notes = [e.error for e in of_type(events, Retrying)]
    assert notes == [
        "HTTP 404 Not Found; trying source 2 of 4",
        "HTTP 410 Gone; trying source 3 of 4",
        notes[2],
    ]
    assert notes[2].startswith("HTTP 403 Forbidden")
    assert notes[2].endswith("; trying source 4 of 4")


async def test_the_file_served_by_its_first_url_has_no_source_url(
    server: Server, dest: Path
) -> None:
    (outcome,) = await fetch([File(server.url("a.bin"), mirrors=[server.url("a.bin", m=1)])], dest)
    assert outcome.status is Status.COMPLETED
    assert outcome.source_url is None
    assert [r.path_qs for r in server.requests("a.bin")] == [
        server.url("a.bin").removeprefix(server.base_url)
    ]


@pytest.mark.parametrize("size", [SIZE, 4 * MiB], ids=["one-write", "streamed"])
async def test_a_wrong_hash_from_one_source_moves_on_without_carrying_its_bytes(
    server: Server, dest: Path, size: int
) -> None:
    name = "model.bin"

    async def other_bytes(request: web.Request, spec: Spec) -> web.StreamResponse:
        return await stream(request, "other", size, headers=strong(server, name, size))

    bad = server.handle(name, other_bytes)
    good = server.route_url("ranged", name, size)
    res, events = await run_manager(dest, [File(bad, hash=server.hash(name, size), mirrors=[good])])
    (outcome,) = res
    assert outcome.status is Status.COMPLETED, outcome.error
    assert outcome.source_url == good
    assert (dest / name).read_bytes() == server.content(name, size)
    # The bad bytes were dropped: the mirror was asked for the whole file, once.
    assert ranges_seen(server, name, "ranged") == [None]
    assert of_type(events, Restarted) == []
    (note,) = of_type(events, Retrying)
    assert note.error.startswith("sha256 mismatch: expected ")
    assert note.error.endswith("; trying source 2 of 2")
    assert leftovers(dest) == [name]


async def test_an_html_error_page_sent_with_200_moves_on_to_the_next_source(
    server: Server, dest: Path
) -> None:
    name = "table.csv"
    page = server.route_url("errorpage", name)
    good = server.url(name)
    (outcome,) = await fetch([File(page, hash=server.hash(name), mirrors=[good])], dest)
    assert outcome.status is Status.COMPLETED, outcome.error
    assert outcome.source_url == good
    assert (dest / name).read_bytes() == server.content(name)
    assert ERROR_PAGE not in (dest / name).read_bytes()


async def test_a_malformed_response_moves_on_to_the_next_source(server: Server, dest: Path) -> None:
    async def malformed(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head(200, [("Content-Length", "50"), ("Transfer-Encoding", "chunked")]))
        await writer.drain()
        return False

    with raw_server(malformed) as raw:
        res = await fetch([File(raw.url("/x.bin"), mirrors=[server.url("x.bin")])], dest)
    (outcome,) = res
    assert outcome.status is Status.COMPLETED, outcome.error
    assert len(raw.requests) == 1
    assert (dest / "x.bin").read_bytes() == server.content("x.bin")


async def test_transient_errors_use_up_the_retries_of_one_source_before_the_next(
    server: Server, dest: Path
) -> None:
    name = "busy.bin"
    busy = server.url(name, fail=100)
    good = server.route_url("ranged", name)
    res, events = await run_manager(dest, [File(busy, mirrors=[good])], retries=2)
    (outcome,) = res
    assert outcome.status is Status.COMPLETED, outcome.error
    assert outcome.source_url == good
    assert [(r.route, r.status) for r in server.requests(name)] == [
        ("gen", 503),
        ("gen", 503),
        ("gen", 503),
        ("ranged", 200),
    ]
    notes = [e.error for e in of_type(events, Retrying)]
    assert notes[-1] == ("HTTP 503 Service Unavailable (after 3 attempts); trying source 2 of 2")


async def test_when_every_source_fails_the_error_lists_each_with_its_cause(
    server: Server, dest: Path
) -> None:
    name = "lost.bin"
    urls = [
        server.url(name, status=404),
        server.url(name, fail=100, m=1) + "&api_key=hunter2",
        "http://user:s3cret@127.0.0.1:9/lost.bin",
    ]
    (outcome,) = await fetch([File(urls[0], mirrors=urls[1:])], dest, retries=1)
    assert outcome.status is Status.FAILED
    assert outcome.source_url is None
    error = outcome.error or ""
    assert error.startswith(f"{urls[0]}: all 3 sources failed: ")
    causes = error.split(": all 3 sources failed: ", 1)[1].split("; ")
    assert causes[0] == f"{urls[0]}: HTTP 404 Not Found"
    assert causes[1].endswith(": HTTP 503 Service Unavailable (after 2 attempts)")
    assert "hunter2" not in error
    assert "api_key=" in causes[1]
    assert causes[2].startswith("http://user:***@127.0.0.1:9/lost.bin: cannot connect")
    assert "s3cret" not in error
    assert len(causes) == 3
    assert leftovers(dest) == []


async def test_the_default_name_comes_from_the_first_url(server: Server, dest: Path) -> None:
    async def other(request: web.Request, spec: Spec) -> web.StreamResponse:
        return web.Response(body=b"from the mirror")

    mirror = server.handle("mirror-name.dat", other)
    main = server.url("first-name.bin", status=404)
    (outcome,) = await fetch([File(main, mirrors=[mirror])], dest)
    assert outcome.status is Status.COMPLETED
    assert outcome.path == dest / "first-name.bin"
    assert (dest / "first-name.bin").read_bytes() == b"from the mirror"
    assert outcome.source_url == mirror


async def test_a_destination_error_does_not_try_the_other_sources(
    server: Server, dest: Path
) -> None:
    (dest / "taken").mkdir()
    f = File(server.url("x.bin"), "taken", mirrors=[server.url("x.bin", m=1)])
    (outcome,) = await fetch([f], dest)
    assert outcome.status is Status.FAILED
    assert "sources failed" not in (outcome.error or "")
    assert server.count("x.bin") <= 1


# --- carrying bytes over from one source to the next -----------------------------------------


def cut_short(cut: int, headers: dict[str, str]) -> Any:
    """A handler that announces the whole file with ``headers``, sends ``cut`` bytes of
    it and drops the connection; ranges are answered in full (and cut the same way)."""

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        return await stream(request, spec.key, SIZE, headers=headers, cut=cut)

    return handler


def strong(server: Server, name: str, size: int = SIZE) -> dict[str, str]:
    return {"ETag": server.etag(name, size), "Accept-Ranges": "bytes"}


async def test_with_a_hash_a_partial_continues_on_the_next_source_without_if_range(
    server: Server, dest: Path
) -> None:
    name = "shard.bin"
    main = server.handle(name, cut_short(40_000, strong(server, name)))
    mirror = server.route_url("ranged", name, SIZE)
    f = File(main, hash=server.hash(name, SIZE), mirrors=[mirror])
    res, events = await run_manager(dest, [f], retries=0)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].source_url == mirror
    assert (dest / name).read_bytes() == server.content(name, SIZE)
    (asked,) = [r for r in server.requests(name) if r.route == "ranged"]
    assert asked.headers.get("Range") == "bytes=40000-"
    assert "If-Range" not in asked.headers  # the mirror's version is the hash's business
    assert asked.status == 206
    assert of_type(events, Restarted) == []


async def test_without_a_hash_the_same_strong_etag_carries_the_bytes_over(
    server: Server, dest: Path
) -> None:
    name = "same.bin"
    main = server.handle(name, cut_short(40_000, strong(server, name)))
    mirror = server.route_url("ranged", name, SIZE)
    (outcome,) = await fetch([File(main, mirrors=[mirror])], dest, retries=0)
    assert outcome.status is Status.COMPLETED, outcome.error
    assert (dest / name).read_bytes() == server.content(name, SIZE)
    (asked,) = [r for r in server.requests(name) if r.route == "ranged"]
    assert asked.headers.get("Range") == "bytes=40000-"
    assert asked.headers.get("If-Range") == server.etag(name, SIZE)
    assert asked.status == 206


async def test_without_a_hash_another_etag_starts_the_file_again_from_zero(
    server: Server, dest: Path, other_server: SharedServer
) -> None:
    name = "changed.bin"
    main = server.handle(name, cut_short(40_000, strong(server, name)))
    # The mirror (another origin) has a version of its own: its own ETag, If-Range honoured.
    mirror_view = Server(other_server, server.tag)
    mirror = mirror_view.handle(name, other_version)
    res, events = await run_manager(dest, [File(main, mirrors=[mirror])], retries=0)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / name).read_bytes() == server.content(name, SIZE)
    (asked,) = mirror_view.requests(name)
    assert asked.headers.get("Range") == "bytes=40000-"
    assert asked.headers.get("If-Range") == server.etag(name, SIZE)
    assert asked.status == 200  # not that version: the whole file
    (restart,) = of_type(events, Restarted)
    assert restart.discarded == 40_000


async def other_version(request: web.Request, spec: Spec) -> web.StreamResponse:
    headers = {"ETag": '"another-version"', "Accept-Ranges": "bytes"}
    rng = testing.parse_range(request.headers.get("Range"), SIZE)
    if rng is None or request.headers.get("If-Range") != headers["ETag"]:
        return await stream(request, spec.key, SIZE, headers=headers)
    start, end = rng
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{SIZE}"
    return await stream(request, spec.key, SIZE, start=start, end=end, status=206, headers=headers)


async def test_without_a_hash_a_weak_validator_starts_the_file_again_from_zero(
    server: Server, dest: Path
) -> None:
    name = "weak.bin"
    dated = {"Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT", "Accept-Ranges": "bytes"}
    main = server.handle(name, cut_short(40_000, dated))
    mirror = server.route_url("ranged", name, SIZE)
    res, events = await run_manager(dest, [File(main, mirrors=[mirror])], retries=0)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / name).read_bytes() == server.content(name, SIZE)
    assert ranges_seen(server, name, "ranged") == [None]
    (restart,) = of_type(events, Restarted)
    assert restart.discarded == 40_000


async def test_the_final_check_still_catches_a_mirror_with_other_bytes(
    server: Server, dest: Path
) -> None:
    """The same strong ETag on another source is trusted for the prefix, but the length
    and the hash are checked as always: a mirror that lies fails the file."""
    name = "liar.bin"
    main = server.handle(name, cut_short(40_000, strong(server, name)))

    async def liar(request: web.Request, spec: Spec) -> web.StreamResponse:
        headers = strong(server, name)
        if request.headers.get("Range") != "bytes=40000-":
            return await stream(request, "other", SIZE, headers=headers)
        headers["Content-Range"] = f"bytes 40000-{SIZE - 1}/{SIZE}"
        return await stream(request, "other", SIZE, start=40_000, status=206, headers=headers)

    mirror = server.handle("liar-mirror.bin", liar)
    f = File(main, hash=server.hash(name, SIZE), mirrors=[mirror])
    (outcome,) = await fetch([f], dest, retries=0)
    assert outcome.status is Status.FAILED
    last = (outcome.error or "").rsplit("; ", 1)[-1]
    assert last.startswith(f"{mirror}: sha256 mismatch: expected ")
    # Its range first; then, as for any resumed file that fails its check, once from zero.
    assert [r.headers.get("Range") for r in server.requests("liar-mirror.bin")] == [
        "bytes=40000-",
        None,
    ]
    assert leftovers(dest) == []


# --- mirrors x resume: a partial from an earlier run ---------------------------------------


def switchable(server: Server, name: str, state: dict[str, Any]) -> str:
    """``name`` served with ranges and its strong ETag at ``state["rate"]`` bytes/s, or
    answering 404 once ``state["down"]`` is set."""
    asked: list[str | None] = []

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        if state.get("down"):
            return web.Response(status=404, text="gone\n")
        serve = recording_ranges(SIZE_BIG, server.etag(name, SIZE_BIG), state, asked)
        return await serve(request, spec)

    return server.handle(name, handler)


SIZE_BIG = 4 * MiB


@pytest.mark.parametrize("hashed", [True, False], ids=["hash", "etag"])
async def test_a_partial_from_an_earlier_run_continues_on_a_mirror_when_the_url_is_gone(
    server: Server, dest: Path, hashed: bool
) -> None:
    name = "resume.bin"
    state: dict[str, Any] = {"rate": 2 * MiB}
    main = switchable(server, name, state)
    mirror = server.route_url("ranged", name, SIZE_BIG)
    f = File(main, hash=server.hash(name, SIZE_BIG) if hashed else None, mirrors=[mirror])
    await interrupt_after(f, dest, 256 * 1024, **FAST)
    partial = await asyncio.to_thread(read_partial, dest / name)
    assert partial is not None
    assert partial.size >= 256 * 1024
    state["down"] = True
    (outcome,) = await fetch([f], dest)
    assert outcome.status is Status.COMPLETED, outcome.error
    assert outcome.source_url == mirror
    assert (dest / name).read_bytes() == server.content(name, SIZE_BIG)
    (asked,) = [r for r in server.requests(name) if r.route == "ranged"]
    assert asked.headers.get("Range") == f"bytes={partial.size}-"
    assert asked.headers.get("If-Range") == (None if hashed else server.etag(name, SIZE_BIG))


# --- mirrors x segments: ranges from several sources at once ---------------------------------

#: Large enough to be cut into four ranges of at least 8 MiB, paced so that it is.
BIG = 64 * MiB
PACE = 16 * MiB  # bytes/s per response


def mirror_of(server: Server, other_server: SharedServer) -> Server:
    """The same test's files on another origin (the generated bytes depend on the name)."""
    return Server(other_server, server.tag)


def big_file(server: Server, name: str, mirrors: list[str], *, hashed: bool = True) -> File:
    """A file large enough to split, from the test's server, with ``mirrors``."""
    url = server.route_url("ranged", name, BIG, rate=PACE)
    return File(url, hash=server.hash(name, BIG) if hashed else None, mirrors=mirrors)


def range_requests(view: Server, name: str) -> list[str]:
    return [h for r in view.requests(name) if (h := r.headers.get("Range")) is not None]


async def test_with_a_hash_ranges_come_from_several_sources_at_once(
    server: Server, dest: Path, other_server: SharedServer
) -> None:
    name = "big.bin"
    mirror = mirror_of(server, other_server)
    f = big_file(server, name, [mirror.route_url("ranged", name, BIG, rate=PACE)])
    (outcome,) = await fetch([f], dest)
    assert outcome.status is Status.COMPLETED, outcome.error
    assert (dest / name).read_bytes() == server.content(name, BIG)
    assert outcome.source_url is None  # the file's own connection stayed on its URL
    on_mirror = [r for r in mirror.requests(name) if r.headers.get("Range")]
    assert on_mirror, "no range was asked of the mirror"
    assert all("If-Range" not in r.headers for r in on_mirror)
    assert all(r.status == 206 for r in on_mirror)
    assert range_requests(server, name), "the file's own source took no range"


async def test_without_a_hash_no_range_is_asked_of_a_mirror(
    server: Server, dest: Path, other_server: SharedServer
) -> None:
    name = "nohash.bin"
    mirror = mirror_of(server, other_server)
    f = big_file(server, name, [mirror.route_url("ranged", name, BIG, rate=PACE)], hashed=False)
    (outcome,) = await fetch([f], dest)
    assert outcome.status is Status.COMPLETED, outcome.error
    assert len(range_requests(server, name)) >= 1  # it was split, on its own source
    assert mirror.requests(name) == []


async def test_a_mirror_that_fails_its_ranges_is_left_and_the_file_completes(
    server: Server, dest: Path, other_server: SharedServer
) -> None:
    name = "half.bin"
    mirror = mirror_of(server, other_server)
    f = big_file(
        server, name, [mirror.url(name, BIG, status=404), mirror.route_url("noranges", name, BIG)]
    )
    res, events = await run_manager(dest, [f])
    (outcome,) = res
    assert outcome.status is Status.COMPLETED, outcome.error
    assert (dest / name).read_bytes() == server.content(name, BIG)
    asked = mirror.requests(name)
    assert {(r.route, r.status) for r in asked} == {("gen", 404), ("noranges", 200)}
    # Each range a mirror failed went back to the file's own source, from the same byte.
    starts = {h.partition("-")[0] for h in range_requests(server, name)}
    assert {r.headers["Range"].partition("-")[0] for r in asked} <= starts
    left = [e.error for e in of_type(events, Retrying)]
    assert any("HTTP 404 Not Found; the range goes to another source" in e for e in left)
    assert any("no usable range" in e for e in left)


async def test_a_mirror_that_sends_other_bytes_costs_one_refetch_from_the_file_source(
    server: Server, dest: Path, other_server: SharedServer
) -> None:
    name = "tainted.bin"
    mirror = mirror_of(server, other_server)

    async def tainted(request: web.Request, spec: Spec) -> web.StreamResponse:
        rng = testing.parse_range(request.headers.get("Range"), BIG)
        assert rng is not None
        start, end = rng
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{BIG}", "Accept-Ranges": "bytes"}
        return await stream(
            request, "other", BIG, start=start, end=end, status=206, headers=headers, rate=PACE
        )

    f = big_file(server, name, [mirror.handle(name, tainted)])
    restarted_at: list[float] = []
    async with rheo_nb.DownloadManager(dest, **FAST_ENGINE) as m:
        m.on("restarted", lambda e: restarted_at.append(time.monotonic()))
        seen: list[rheo_nb.Event] = []
        m.on(None, seen.append)
        await m.add([f])
        (outcome,) = await m.wait()
    assert outcome.status is Status.COMPLETED, outcome.error
    assert (dest / name).read_bytes() == server.content(name, BIG)
    (restart,) = of_type(seen, Restarted)
    assert restart.reason.startswith("sha256 mismatch")
    assert restart.reason.endswith("with ranges from mirrors; fetching it from one source")
    # The mirror served ranges before the check, and none after it (the servers' clocks
    # are this process's monotonic clock).
    asked = mirror.requests(name)
    assert asked
    assert all(r.time < restarted_at[0] for r in asked)
    assert any(r.time > restarted_at[0] for r in server.requests(name))


# --- mirrors x credentials -------------------------------------------------------------------
#
# The call's credentials, and the headers given for the file, belong to the origin of the
# file's URL (test_regress_secret_seams): a mirror on another origin gets none of them,
# as a redirect's target does not; a password written in a mirror's URL goes to that
# mirror only, and a mirror on the file's own origin gets what the file's URL gets.


@pytest.mark.usefixtures("clean_env")
async def test_the_call_credentials_stay_off_a_mirror_on_another_origin(
    server: Server, b: AuthServer, dest: Path
) -> None:
    # Earlier the call's credentials went to every mirror's origin: one leaked token per
    # mirror host the caller did not mean to trust with it.
    f = File(server.url("p.bin", status=404), "p.bin", mirrors=[b.url("bearer", "p.bin")])
    (outcome,) = await fetch([f], dest, auth=BearerToken(TOKEN))
    assert outcome.status is Status.FAILED
    assert "a mirror on another origin gets no credentials" in (outcome.error or ""), outcome
    (seen,) = b.requests("bearer")
    assert "Authorization" not in seen.headers
    assert TOKEN not in (outcome.error or "")


@pytest.mark.usefixtures("clean_env")
async def test_the_call_credentials_reach_a_mirror_on_the_files_origin(
    b: AuthServer, dest: Path
) -> None:
    # The file's URL wants another login (a 401, final); its mirror on the same origin
    # takes the bearer token the call gives.
    f = File(b.url("basic", "p.bin"), "p.bin", mirrors=[b.url("bearer", "p.bin")])
    (outcome,) = await fetch([f], dest, auth=BearerToken(TOKEN))
    assert outcome.status is Status.COMPLETED, outcome.error
    (seen,) = b.requests("bearer")
    assert seen.headers.get("Authorization") == f"Bearer {TOKEN}"
    assert (dest / "p.bin").read_bytes() == testing.content("p.bin", 10_000)


@pytest.mark.usefixtures("clean_env")
async def test_credentials_do_not_follow_a_mirror_redirect_to_another_origin(
    server: Server, a: AuthServer, b: AuthServer, dest: Path
) -> None:
    mirror = a.redirect(b.url("open", "q.bin"))
    f = File(server.url("q.bin", status=404), "q.bin", mirrors=[mirror])
    (outcome,) = await fetch([f], dest, auth=BearerToken(TOKEN), headers={"X-Secret": KEY})
    assert outcome.status is Status.COMPLETED, outcome.error
    (hop,) = a.requests("redirect")
    assert "Authorization" not in hop.headers  # another origin than the file's URL
    (landed,) = b.requests("open")
    assert "Authorization" not in landed.headers
    assert "X-Secret" not in landed.headers


@pytest.mark.usefixtures("clean_env")
async def test_a_password_in_a_mirror_url_goes_to_that_mirror_only_and_is_masked(
    a: AuthServer, b: AuthServer, dest: Path
) -> None:
    mirror = b.url("basic", "r.bin").replace("://", f"://alice:{PASSWORD}@")
    f = File(a.url("basic", "r.bin"), mirrors=[mirror])
    (outcome,) = await fetch([f], dest)
    assert outcome.status is Status.COMPLETED, outcome.error
    assert outcome.source_url == mirror.replace(PASSWORD, "***")
    (first,) = a.requests("basic")
    assert "Authorization" not in first.headers
    assert PASSWORD not in repr(outcome)
