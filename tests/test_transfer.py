"""One file from request to final name, against a real server that misbehaves on purpose:
resume, verification, retries, redirects, limits, and what is left on disk after each."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from faults import leftovers, plant_partial, read_partial
from server import (
    DEFAULT_SIZE,
    FAST,
    Server,
    SharedServer,
    Spec,
    of_type,
    run_manager,
)

import rheo_nb
from rheo_nb import File, Status, files, partfile
from rheo_nb.events import Progress, Retrying, Started, Validating
from rheo_nb.http import parse_content_range
from rheo_nb.testing import BLOCK

SIZE = DEFAULT_SIZE

# --- parse_content_range -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes 0-99/1000", (0, 99, 1000)),
        ("bytes 900-999/1000", (900, 999, 1000)),
        ("BYTES 5-5/6", (5, 5, 6)),
        ("bytes 0-99/*", (0, 99, None)),
        ("bytes */1000", (-1, -1, 1000)),
        ("  bytes  10-19/20 ", (10, 19, 20)),
        (None, None),
        ("", None),
        ("bytes */*", None),
        ("items 0-9/10", None),
        ("bytes 0-99", None),
        ("bytes 100-99/1000", None),
        ("bytes 0-1000/1000", None),
        ("bytes -5-9/10", None),
        ("bytes 0-9/ten", None),
        ("bytes a-b/10", None),
        ("bytes 0-9/-10", None),
    ],
)
def test_parse_content_range(value: str | None, parsed: tuple[int, int, int | None] | None) -> None:
    assert parse_content_range(value) == parsed


# --- helpers -----------------------------------------------------------------------------------


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


# --- a plain download ------------------------------------------------------------------------


async def test_download_writes_the_exact_bytes_and_leaves_no_sidecar(
    server: Server, dest: Path
) -> None:
    size = 3 * BLOCK + 123
    res = await fetch([server.url("a.bin", size)], dest)
    assert [o.status for o in res] == [Status.COMPLETED]
    assert res[0].bytes == size
    assert res[0].path == dest / "a.bin"
    assert (dest / "a.bin").read_bytes() == server.content("a.bin", size)
    assert leftovers(dest) == ["a.bin"]
    sent = server.requests("a.bin")[0].headers
    assert sent["Accept-Encoding"] == "identity"
    assert sent["User-Agent"].startswith("rheo_nb/")
    assert "Range" not in sent


async def test_empty_file(server: Server, dest: Path) -> None:
    res = await fetch([server.url("empty.bin", 0)], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "empty.bin").read_bytes() == b""


async def test_large_writes_are_spread_over_several_chunks(server: Server, dest: Path) -> None:
    size = 300_000
    res = await fetch([server.url("big.bin", size)], dest, chunk_size=4096)
    assert res[0].status is Status.COMPLETED
    assert (dest / "big.bin").read_bytes() == server.content("big.bin", size)


# --- resume ---------------------------------------------------------------------------------------


async def test_resume_appends_after_a_matching_206(server: Server, dest: Path) -> None:
    url = server.url("r.bin")
    # A prefix the server would never send: if it survives, the bytes were appended.
    marker = b"\xaa" * 30_000
    plant_partial(dest, "r.bin", url, marker, validator=server.etag("r.bin"), total=SIZE)
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    data = (dest / "r.bin").read_bytes()
    assert data[:30_000] == marker
    assert data[30_000:] == server.content("r.bin")[30_000:]
    (req,) = server.requests("r.bin")
    assert req.headers["Range"] == "bytes=30000-"
    assert req.headers["If-Range"] == server.etag("r.bin")
    assert req.status == 206
    (started,) = of_type(events, Started)
    assert (started.resumed_from, started.total) == (30_000, SIZE)
    assert leftovers(dest) == ["r.bin"]


async def test_resume_with_a_hash_verifies_the_kept_prefix_too(server: Server, dest: Path) -> None:
    url = server.url("h.bin")
    good = server.content("h.bin")[:40_000]
    plant_partial(dest, "h.bin", url, good, validator=server.etag("h.bin"), total=SIZE)
    res = await fetch([File(url, hash=server.hash("h.bin"))], dest)
    assert res[0].status is Status.COMPLETED
    assert server.statuses("h.bin") == [206]
    assert (dest / "h.bin").read_bytes() == server.content("h.bin")


async def test_resumed_file_failing_its_hash_is_fetched_again_from_zero(
    server: Server, dest: Path
) -> None:
    url = server.url("bad-prefix.bin")
    plant_partial(
        dest,
        "bad-prefix.bin",
        url,
        b"\x00" * 40_000,
        validator=server.etag("bad-prefix.bin"),
        total=SIZE,
    )
    res = await fetch([File(url, hash=server.hash("bad-prefix.bin"))], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "bad-prefix.bin").read_bytes() == server.content("bad-prefix.bin")
    reqs = server.requests("bad-prefix.bin")
    assert [r.status for r in reqs] == [206, 200]
    assert "Range" not in reqs[1].headers


async def test_resume_restarts_when_server_ignores_range(server: Server, dest: Path) -> None:
    url = server.route_url("noranges", "n.bin")
    plant_partial(dest, "n.bin", url, b"\xaa" * 30_000, validator=server.etag("n.bin"), total=SIZE)
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    assert (dest / "n.bin").read_bytes() == server.content("n.bin")
    (req,) = server.requests("n.bin")
    assert req.headers["Range"] == "bytes=30000-"
    assert req.status == 200
    assert of_type(events, Started)[0].resumed_from == 0
    assert leftovers(dest) == ["n.bin"]


async def test_resume_restarts_when_if_range_no_longer_matches(server: Server, dest: Path) -> None:
    url = server.url("changed.bin")
    plant_partial(dest, "changed.bin", url, b"\xaa" * 30_000, validator='"old"', total=SIZE)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "changed.bin").read_bytes() == server.content("changed.bin")
    (req,) = server.requests("changed.bin")
    assert req.headers["If-Range"] == '"old"'
    assert req.status == 200


async def test_resume_restarts_when_a_206_carries_another_etag(server: Server, dest: Path) -> None:
    url = server.route_url("etagchange", "e.bin")
    plant_partial(dest, "e.bin", url, b"\xaa" * 30_000, validator='"v0"', total=SIZE)
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    assert [e.resumed_from for e in of_type(events, Started)] == [0]
    assert (dest / "e.bin").read_bytes() == server.content("e.bin")
    reqs = server.requests("e.bin")
    assert [r.status for r in reqs] == [206, 200]
    assert "Range" not in reqs[1].headers


async def test_resume_restarts_on_a_206_with_a_wrong_content_range(
    server: Server, dest: Path
) -> None:
    url = server.route_url("badrange", "b.bin")
    plant_partial(dest, "b.bin", url, b"\xaa" * 30_000, validator=server.etag("b.bin"), total=SIZE)
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    # Refused before a single byte was taken: the only start is the one from zero.
    assert [e.resumed_from for e in of_type(events, Started)] == [0]
    assert (dest / "b.bin").read_bytes() == server.content("b.bin")
    reqs = server.requests("b.bin")
    assert [r.status for r in reqs] == [206, 200]
    assert "Range" not in reqs[1].headers


async def test_resume_restarts_when_the_total_size_changed(server: Server, dest: Path) -> None:
    url = server.route_url("etagchange", "grown.bin")
    # Same validator the server sends first, but the partial belonged to a smaller file.
    plant_partial(dest, "grown.bin", url, b"\xaa" * 30_000, validator='"v1"', total=SIZE - 1)
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    assert [e.resumed_from for e in of_type(events, Started)] == [0]
    assert (dest / "grown.bin").read_bytes() == server.content("grown.bin")
    assert server.statuses("grown.bin") == [206, 200]


async def test_a_206_shorter_than_promised_is_a_length_mismatch_then_a_restart(
    server: Server, dest: Path
) -> None:
    url = server.route_url("shortrange", "s.bin")
    plant_partial(dest, "s.bin", url, b"\xaa" * 30_000, validator=server.etag("s.bin"), total=SIZE)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "s.bin").read_bytes() == server.content("s.bin")
    assert server.statuses("s.bin") == [206, 200]


async def test_a_complete_partial_is_committed_on_416(server: Server, dest: Path) -> None:
    url = server.url("whole.bin")
    plant_partial(
        dest,
        "whole.bin",
        url,
        server.content("whole.bin"),
        validator=server.etag("whole.bin"),
        total=SIZE,
    )
    res = await fetch([File(url, hash=server.hash("whole.bin"))], dest)
    assert res[0].status is Status.COMPLETED
    assert res[0].bytes == SIZE
    assert server.statuses("whole.bin") == [416]
    assert (dest / "whole.bin").read_bytes() == server.content("whole.bin")
    assert leftovers(dest) == ["whole.bin"]


async def test_a_partial_of_another_url_is_not_resumed(server: Server, dest: Path) -> None:
    url = server.url("other.bin")
    plant_partial(
        dest,
        "other.bin",
        url + "&v=2",
        b"\xaa" * 30_000,
        validator=server.etag("other.bin"),
        total=SIZE,
    )
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert "Range" not in server.requests("other.bin")[0].headers
    assert (dest / "other.bin").read_bytes() == server.content("other.bin")


async def test_a_partial_without_validator_is_not_resumed(server: Server, dest: Path) -> None:
    url = server.url("nov.bin")
    plant_partial(dest, "nov.bin", url, b"\xaa" * 30_000, validator=None, total=SIZE)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert "Range" not in server.requests("nov.bin")[0].headers
    assert (dest / "nov.bin").read_bytes() == server.content("nov.bin")


async def test_a_dropped_connection_resumes_where_it_stopped(server: Server, dest: Path) -> None:
    url = server.route_url("truncate", "t.bin", cut=60_000, times=1)
    res, events = await run_manager(dest, [url], chunk_size=4096)
    assert res[0].status is Status.COMPLETED
    assert (dest / "t.bin").read_bytes() == server.content("t.bin")
    first, second = server.requests("t.bin")
    assert "Range" not in first.headers
    offset = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= 60_000
    assert second.status == 206
    assert [e.attempt for e in of_type(events, Retrying)] == [1]
    assert "connection lost" in of_type(events, Retrying)[0].error
    assert leftovers(dest) == ["t.bin"]


async def test_a_failed_run_keeps_a_resumable_partial_for_the_next(
    server: Server, dest: Path
) -> None:
    url = server.route_url("truncate", "next.bin", cut=60_000, times=1)
    first = await fetch([url], dest, retries=0, chunk_size=4096)
    assert first[0].status is Status.FAILED
    assert not (dest / "next.bin").exists()
    part = files.working_path(dest / "next.bin", ".part")
    kept = part.stat().st_size
    assert 0 < kept <= 60_000
    assert await asyncio.to_thread(read_partial, dest / "next.bin") == partfile.Partial(
        kept, partfile.Record(partfile.url_key(url), server.etag("next.bin"), SIZE)
    )
    second = await fetch([url], dest)
    assert second[0].status is Status.COMPLETED
    assert server.requests("next.bin")[-1].headers["Range"] == f"bytes={kept}-"
    assert (dest / "next.bin").read_bytes() == server.content("next.bin")


# --- verification -----------------------------------------------------------------------------


async def test_hash_match_completes_after_validating(server: Server, dest: Path) -> None:
    url = server.url("ok.bin")
    res, events = await run_manager(dest, [File(url, hash=server.hash("ok.bin"))])
    assert res[0].status is Status.COMPLETED
    assert len(of_type(events, Validating)) == 1
    assert (dest / "ok.bin").read_bytes() == server.content("ok.bin")


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
async def test_hash_mismatch_fails_and_names_algorithm_expected_and_actual(
    server: Server, dest: Path, algorithm: str
) -> None:
    url = server.url("bad.bin")
    actual = server.hash("bad.bin", algorithm=algorithm).partition(":")[2]
    wrong = ("0" if actual[0] != "0" else "1") * len(actual)
    res = await fetch([File(url, hash=f"{algorithm}:{wrong}")], dest)
    (o,) = res
    assert o.status is Status.FAILED
    assert o.error is not None
    assert f"{algorithm} mismatch: expected {wrong}, got {actual}" in o.error
    assert server.count("bad.bin") == 1  # a wrong hash is not worth another attempt
    assert leftovers(dest) == []


async def test_truncated_body_fails_and_leaves_nothing_at_the_final_path(
    server: Server, dest: Path
) -> None:
    url = server.route_url("truncate", "cut.bin", cut=10_000)
    res = await fetch([url], dest, retries=0)
    (o,) = res
    assert o.status is Status.FAILED
    assert o.error is not None
    assert "connection lost" in o.error
    assert not (dest / "cut.bin").exists()
    # What arrived is kept for a resume, however small the file (the server gave an ETag).
    partial = await asyncio.to_thread(read_partial, dest / "cut.bin")
    assert partial is not None
    assert partial.size == 10_000
    assert partial.record is not None
    assert partial.record.validator == server.etag("cut.bin")


async def test_a_dropped_connection_reports_the_bytes_received(server: Server, dest: Path) -> None:
    url = server.route_url("truncate", "count.bin", cut=30_000)
    res = await fetch([url], dest, retries=0)
    assert res[0].error is not None
    assert "connection lost after 30000 bytes" in res[0].error


async def test_retries_on_a_truncated_body_are_counted_in_the_error(
    server: Server, dest: Path
) -> None:
    url = server.route_url("truncate", "always.bin", cut=10_000)
    res = await fetch([url], dest, retries=2)
    assert res[0].error is not None
    assert "(after 3 attempts)" in res[0].error
    assert server.count("always.bin") == 3
    assert not (dest / "always.bin").exists()


async def test_max_size_refuses_a_large_body_before_writing(server: Server, dest: Path) -> None:
    res = await fetch([server.url("huge.bin", SIZE)], dest, max_size=SIZE - 1)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "over max_size" in res[0].error
    assert leftovers(dest) == []


async def test_max_size_stops_a_body_of_unknown_length(server: Server, dest: Path) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(20):
            await resp.write(b"x" * 10_000)
        await resp.write_eof()
        return resp

    url = server.handle("endless.bin", lambda request, spec: chunked(request))
    res = await fetch([url], dest, max_size=50_000, chunk_size=4096)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "body is over max_size" in res[0].error
    assert not (dest / "endless.bin").exists()


# --- retries ------------------------------------------------------------------------------------


async def test_transient_errors_are_retried_until_success(server: Server, dest: Path) -> None:
    res, events = await run_manager(dest, [server.url("flaky.bin", fail=2)], retries=3)
    assert res[0].status is Status.COMPLETED
    assert server.statuses("flaky.bin") == [503, 503, 200]
    retrying = of_type(events, Retrying)
    assert [e.attempt for e in retrying] == [1, 2]
    assert all(e.error.startswith("HTTP 503") for e in retrying)


async def test_retries_stop_after_the_limit(server: Server, dest: Path) -> None:
    res = await fetch([server.url("down.bin", status=503)], dest, retries=2)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "HTTP 503" in res[0].error
    assert "(after 3 attempts)" in res[0].error
    assert server.count("down.bin") == 3


async def test_no_retries_means_one_request(server: Server, dest: Path) -> None:
    res = await fetch([server.url("once.bin", status=503)], dest, retries=0)
    assert res[0].status is Status.FAILED
    assert server.count("once.bin") == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
async def test_client_errors_are_not_retried(server: Server, dest: Path, status: int) -> None:
    res = await fetch([server.url("missing.bin", status=status)], dest, retries=3)
    (o,) = res
    assert o.status is Status.FAILED
    assert o.error is not None
    assert f"HTTP {status}" in o.error
    assert "attempts" not in o.error
    assert server.count("missing.bin") == 1
    assert leftovers(dest) == []


async def test_retry_after_is_honoured(server: Server, dest: Path) -> None:
    url = server.route_url("retryafter", "ra.bin", fail=1, after=1)
    res, events = await run_manager(dest, [url], backoff=0.0)
    assert res[0].status is Status.COMPLETED
    (retrying,) = of_type(events, Retrying)
    assert retrying.delay == 1.0
    assert retrying.error.startswith("HTTP 429")
    first, second = server.requests("ra.bin")
    assert first.status == 429
    assert second.time - first.time >= 0.9


async def test_retry_after_longer_than_the_cap_fails_at_once(server: Server, dest: Path) -> None:
    url = server.route_url("retryafter", "later.bin", fail=1, after=3600, status=503)
    res = await asyncio.wait_for(fetch([url], dest, retry_after_max=5), 20)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "retry after 3600 s" in res[0].error
    assert "retry_after_max=5" in res[0].error
    assert server.count("later.bin") == 1


async def test_a_stalled_body_times_out(server: Server, dest: Path) -> None:
    url = server.route_url("stall", "stall.bin", cut=5_000, stall=3)
    res = await fetch([url], dest, timeout=0.3, retries=0)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "no data for 0.3 s" in res[0].error
    assert not (dest / "stall.bin").exists()
    partial = await asyncio.to_thread(read_partial, dest / "stall.bin")
    assert partial is not None
    assert partial.size == 5_000  # kept for a resume


# --- redirects ------------------------------------------------------------------------------------


async def test_redirects_are_followed_and_the_name_comes_from_the_first_url(
    server: Server, dest: Path
) -> None:
    url = server.route_url("redirect", "moved.bin", hops=3, status=301)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert res[0].path == dest / "moved.bin"
    assert (dest / "moved.bin").read_bytes() == server.content("moved.bin")
    assert server.statuses("moved.bin") == [301, 301, 301, 200]


@pytest.mark.parametrize("status", [302, 303, 307, 308])
async def test_every_redirect_status_is_followed(server: Server, dest: Path, status: int) -> None:
    res = await fetch([server.route_url("redirect", "r.bin", status=status)], dest)
    assert res[0].status is Status.COMPLETED


async def test_too_many_redirects_fail(server: Server, dest: Path) -> None:
    url = server.route_url("redirect", "loop.bin", hops=100)
    res = await fetch([url], dest, max_redirects=3)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "more than 3 redirects" in res[0].error
    assert server.count("loop.bin") == 4


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("ftp://127.0.0.1/x.bin", "redirect to a ftp: URL refused"),
        ("file:///etc/passwd", "redirect to a"),
        ("javascript:alert(1)", "redirect to a"),
    ],
)
async def test_a_redirect_to_another_scheme_is_refused(
    server: Server, dest: Path, target: str, words: str
) -> None:
    url = server.route_url("redirect", "file.bin", to=target)
    res = await fetch([url], dest)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert words in res[0].error
    assert server.count("file.bin") == 1
    assert leftovers(dest) == []


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("http://a..b.invalid/x.bin", "has an empty label"),
        ("http://xn--zz.invalid/x.bin", "is not a valid internationalised name"),
    ],
)
async def test_a_redirect_to_a_host_that_is_no_dns_name_fails_as_a_redirect(
    server: Server, dest: Path, target: str, words: str
) -> None:
    # Otherwise the lookup's own error (a UnicodeError) surfaces as an internal error.
    url = server.route_url("redirect", "nohost.bin", to=target)
    res = await fetch([url], dest)
    assert res[0].status is Status.FAILED
    assert f"redirect to a URL whose host {target[7:].split('/')[0]!r} {words}" in (
        res[0].error or ""
    ), res[0].error
    assert leftovers(dest) == []


async def test_a_redirect_to_a_file_url_names_the_scheme(server: Server, dest: Path) -> None:
    url = server.route_url("redirect", "named.bin", to="file:///etc/passwd")
    res = await fetch([url], dest)
    assert res[0].error is not None
    assert "redirect to a file: URL refused" in res[0].error


async def test_a_redirect_without_location_fails(server: Server, dest: Path) -> None:
    async def nowhere(request: web.Request, spec: Spec) -> web.StreamResponse:
        return web.Response(status=302)

    res = await fetch([server.handle("nowhere.bin", nowhere)], dest)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "redirect without a Location" in res[0].error


async def test_a_redirect_to_another_origin_drops_the_callers_headers(
    server: Server, other_server: SharedServer, dest: Path
) -> None:
    other = other_server.view()
    url = server.route_url("redirect", "x.bin", to=other.url("x.bin"))
    res = await fetch(
        [File(url, headers={"X-Api-Key": "s3cret"})],
        dest,
        headers={"Authorization": "Bearer s3cret", "Accept-Language": "en"},
    )
    assert res[0].status is Status.COMPLETED
    (before,) = server.requests("x.bin")
    (after,) = other.requests("x.bin")
    assert before.headers["X-Api-Key"] == "s3cret"
    assert before.headers["Authorization"] == "Bearer s3cret"
    assert "X-Api-Key" not in after.headers
    assert "Authorization" not in after.headers
    assert after.headers["Accept-Language"] == "en"
    assert (dest / "x.bin").read_bytes() == other.content("x.bin")


async def test_a_redirect_on_the_same_origin_keeps_the_headers(server: Server, dest: Path) -> None:
    url = server.route_url("redirect", "same.bin")
    res = await fetch([File(url, headers={"X-Api-Key": "k"})], dest)
    assert res[0].status is Status.COMPLETED
    assert [r.headers.get("X-Api-Key") for r in server.requests("same.bin")] == ["k", "k"]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("..%2F..%2Fescape.bin", "escape.bin"),
        ("%2Fetc%2Fcron.d%2Fjob", "job"),
        ("..%5C..%5Cwin.bin", "win.bin"),
        ("x%2F%2E%2E", "index.html"),
        (".hidden", "hidden"),
    ],
)
async def test_names_from_hostile_urls_stay_inside_dest(
    server: Server, tmp_path: Path, path: str, name: str
) -> None:
    dest = tmp_path / "a" / "b"
    url = f"{server.base_url}/gen/{server.tag}/{path}?size=1000"
    res = await fetch([url], dest)
    assert res[0].path == dest / name
    assert res[0].status is Status.COMPLETED, res[0].error
    assert listing_outside(tmp_path, dest) == []


def listing_outside(root: Path, dest: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and dest not in p.parents]


# --- what is already there -----------------------------------------------------------------------


async def test_an_existing_file_is_skipped_without_a_request(server: Server, dest: Path) -> None:
    (dest / "have.bin").write_bytes(b"mine")
    res, events = await run_manager(dest, [server.url("have.bin")])
    assert res[0].status is Status.SKIPPED
    assert res[0].bytes == 4
    assert (dest / "have.bin").read_bytes() == b"mine"
    assert server.count("have.bin") == 0
    assert [e.type for e in events] == ["queued", "skipped"]


async def test_overwrite_replaces_an_existing_file(server: Server, dest: Path) -> None:
    (dest / "have.bin").write_bytes(b"mine")
    res = await fetch([server.url("have.bin")], dest, overwrite=True)
    assert res[0].status is Status.COMPLETED
    assert (dest / "have.bin").read_bytes() == server.content("have.bin")


async def test_an_existing_file_with_the_right_hash_is_skipped(server: Server, dest: Path) -> None:
    (dest / "v.bin").write_bytes(server.content("v.bin"))
    res, events = await run_manager(dest, [File(server.url("v.bin"), hash=server.hash("v.bin"))])
    assert res[0].status is Status.SKIPPED
    assert server.count("v.bin") == 0
    skipped = events[-1]
    assert skipped.type == "skipped"
    assert "sha256 verified" in getattr(skipped, "reason", "")


async def test_an_existing_file_with_the_wrong_hash_is_downloaded_again(
    server: Server, dest: Path
) -> None:
    (dest / "v.bin").write_bytes(b"stale")
    res = await fetch([File(server.url("v.bin"), hash=server.hash("v.bin"))], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "v.bin").read_bytes() == server.content("v.bin")


async def test_a_symlink_at_the_final_path_is_never_followed(
    server: Server, dest: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (dest / "link.bin").symlink_to(outside)
    res = await fetch([server.url("link.bin")], dest, overwrite=True)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "symbolic link" in res[0].error
    assert outside.read_text() == "keep me"
    assert server.count("link.bin") == 0


async def test_a_folder_linked_outside_dest_is_refused(
    server: Server, dest: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    res = await fetch([File(server.url("x.bin"), "sub/x.bin")], dest)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "outside the destination" in res[0].error
    assert list(outside.iterdir()) == []


async def test_a_directory_at_the_final_path_fails_that_file_only(
    server: Server, dest: Path
) -> None:
    (dest / "dir.bin").mkdir()
    res = await fetch([server.url("dir.bin"), server.url("fine.bin")], dest)
    assert [o.status for o in res] == [Status.FAILED, Status.COMPLETED]
    assert res[0].error is not None
    assert "is a directory" in res[0].error


async def test_two_calls_for_one_file_download_it_once(server: Server, dest: Path) -> None:
    url = server.url("shared.bin", rate=400_000)
    one, two = await asyncio.wait_for(
        asyncio.gather(fetch([url], dest), fetch([url], dest)), timeout=30
    )
    assert sorted([one[0].status, two[0].status]) == [Status.COMPLETED, Status.SKIPPED]
    assert server.count("shared.bin") == 1
    assert (dest / "shared.bin").read_bytes() == server.content("shared.bin")
    assert leftovers(dest) == ["shared.bin"]


# --- progress -----------------------------------------------------------------------------------


async def test_progress_is_reported_in_growing_steps(server: Server, dest: Path) -> None:
    url = server.url("p.bin", 200_000, rate=1_000_000)
    res, events = await run_manager(dest, [url], progress_interval=0.02, chunk_size=4096)
    assert res[0].status is Status.COMPLETED
    progress = of_type(events, Progress)
    assert len(progress) >= 3
    steps = [e.bytes for e in progress]
    assert steps == sorted(steps)
    assert all(0 < b <= 200_000 for b in steps)
    assert {e.total for e in progress} == {200_000}


async def test_progress_is_throttled_per_download(server: Server, dest: Path) -> None:
    url = server.url("quiet.bin", 200_000, rate=1_000_000)
    res, events = await run_manager(dest, [url], progress_interval=60, chunk_size=4096)
    assert res[0].status is Status.COMPLETED
    assert of_type(events, Progress) == []


def test_downloaded_files_keep_default_permissions(server: Server, dest: Path) -> None:
    res = rheo_nb.fetch_sync([server.url("perm.bin")], dest, **FAST)
    assert res[0].status is Status.COMPLETED
    mode = os.stat(dest / "perm.bin").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o644 & ~umask
