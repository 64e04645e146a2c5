"""Servers that misbehave: bad framing, encodings, error pages, error statuses, Retry-After,
huge headers and endless redirects. Each file fails or succeeds on its own, with a clear
cause, and the bytes on disk are always the bytes the server sent."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import time
import tracemalloc
import zlib
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from faults import ERROR_PAGE, RawRequest, bomb, corrupt_gzip, head, leftovers, raw_server, targz
from server import FAST, Server, of_type, run_manager

import rheo_nb
from rheo_nb import File, Status, retry
from rheo_nb.events import Retrying


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- framing aiohttp's server would never send ----------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ([("Content-Length", "100"), ("Content-Length", "200")], "Duplicate Content-Length"),
        ([("Content-Length", "abc")], "Invalid character in Content-Length"),
        ([("Content-Length", "-5")], "Invalid character in Content-Length"),
        (
            [("Content-Length", "50"), ("Transfer-Encoding", "chunked")],
            "Transfer-Encoding can't be present with Content-Length",
        ),
        ([("X-Long", "a" * 100_000)], "a header line is too long"),
        ([(f"X-Many-{i}", "v") for i in range(50_000)], "Too many headers"),
    ],
    ids=["two-lengths", "length-abc", "length-negative", "length-and-chunked", "long", "many"],
)
async def test_malformed_framing_fails_that_file_with_a_one_line_cause(
    server: Server, dest: Path, headers: list[tuple[str, str]], words: str
) -> None:
    async def malformed(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head(200, headers) + b"q" * 100)
        await writer.drain()
        return False

    with raw_server(malformed) as raw:
        res = await fetch([raw.url("/bad.bin"), server.url("good.bin")], dest, retries=2)
    bad, good = res
    assert bad.status is Status.FAILED
    assert bad.error is not None
    assert f"malformed response ({words}" in bad.error
    assert "\n" not in bad.error
    assert "aaaa" not in bad.error
    assert len(raw.requests) == 1  # a broken server is not worth another attempt
    assert good.status is Status.COMPLETED
    assert leftovers(dest) == ["good.bin"]


async def test_an_endless_header_block_fails_with_flat_memory(dest: Path) -> None:
    async def endless(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(2_000):  # up to ~50 MB of headers, if anybody kept reading
            writer.write(b"".join(b"X-%d-%d: %s\r\n" % (i, j, b"v" * 200) for j in range(100)))
            await writer.drain()
        return False

    tracemalloc.start()
    try:
        with raw_server(endless) as raw:
            res = await asyncio.wait_for(fetch([raw.url("/headers.bin")], dest), 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "malformed response" in res[0].error
    assert peak < 20 << 20


# --- encodings: the bytes on disk are the bytes the publisher hashed ------------------------------


async def test_a_tar_gz_served_with_content_encoding_gzip_is_saved_as_published(
    server: Server, dest: Path
) -> None:
    published = targz(f"{server.tag}/data.tar.gz", 200_000)
    url = server.route_url("gzip", "data.tar.gz", 200_000, body="targz")
    res = await fetch([File(url, hash=sha256(published))], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "data.tar.gz").read_bytes() == published
    assert server.requests("data.tar.gz")[0].headers["Accept-Encoding"] == "identity"


async def test_a_corrupt_gzip_body_is_saved_as_sent_and_only_a_hash_rejects_it(
    server: Server, dest: Path
) -> None:
    sent = corrupt_gzip(f"{server.tag}/broken.gz", 50_000)
    url = server.route_url("gzip", "broken.gz", 50_000, body="corrupt")
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert (dest / "broken.gz").read_bytes() == sent
    with pytest.raises((OSError, EOFError, zlib.error)):
        gzip.decompress(sent)
    (dest / "broken.gz").unlink()
    res = await fetch([File(url, hash=sha256(b"the real file"))], dest)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "sha256 mismatch" in res[0].error
    assert leftovers(dest) == []


async def test_a_gzip_bomb_is_never_inflated(server: Server, dest: Path) -> None:
    inflated = 64 << 20
    sent = bomb(inflated)
    url = server.route_url("gzip", "bomb.gz", inflated, body="bomb")
    tracemalloc.start()
    try:
        res = await fetch([url], dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res[0].status is Status.COMPLETED
    assert (dest / "bomb.gz").stat().st_size == len(sent) < 1 << 20
    assert peak < 16 << 20


# --- an error page where data was expected --------------------------------------------------------


async def test_an_html_error_page_with_status_200_fails_its_hash(
    server: Server, dest: Path
) -> None:
    url = server.route_url("errorpage", "weights.bin")
    res = await fetch([File(url, hash=server.hash("weights.bin")), server.url("other.bin")], dest)
    bad, good = res
    assert bad.status is Status.FAILED
    assert bad.error is not None
    assert f"got {hashlib.sha256(ERROR_PAGE).hexdigest()}" in bad.error
    assert server.count("weights.bin") == 1
    assert good.status is Status.COMPLETED
    assert leftovers(dest) == ["other.bin"]


# --- error statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_a_final_status_is_one_request_and_its_body_is_never_saved(
    server: Server, dest: Path, status: int
) -> None:
    url = server.route_url("errorbody", "gone.bin", 300_000, status=status)
    res, events = await run_manager(dest, [url], retries=5)
    (o,) = res
    assert o.status is Status.FAILED
    assert o.error is not None
    assert f"HTTP {status}" in o.error
    assert server.count("gone.bin") == 1
    assert of_type(events, Retrying) == []
    assert leftovers(dest) == []


async def test_503_twice_then_200_completes(server: Server, dest: Path) -> None:
    res, events = await run_manager(dest, [server.url("busy.bin", fail=2)], retries=3)
    assert res[0].status is Status.COMPLETED
    assert server.statuses("busy.bin") == [503, 503, 200]
    assert [e.attempt for e in of_type(events, Retrying)] == [1, 2]
    assert (dest / "busy.bin").read_bytes() == server.content("busy.bin")


async def test_502_forever_makes_retries_plus_one_requests_with_growing_capped_waits(
    server: Server, dest: Path
) -> None:
    retries, base, cap = 5, 0.02, 0.08
    res, events = await run_manager(
        dest, [server.url("down.bin", status=502)], retries=retries, backoff=base, backoff_max=cap
    )
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "HTTP 502" in res[0].error
    assert f"(after {retries + 1} attempts)" in res[0].error
    assert server.count("down.bin") == retries + 1
    delays = [e.delay for e in of_type(events, Retrying)]
    assert len(delays) == retries
    for attempt, delay in enumerate(delays, 1):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    floors = [min(cap, base * 2 ** (a - 1)) / 2 for a in range(1, retries + 1)]
    assert floors == sorted(floors)
    assert floors[-1] == cap / 2
    times = [r.time for r in server.requests("down.bin")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= f * 0.9 for g, f in zip(gaps, floors, strict=True))
    assert leftovers(dest) == []


# --- Retry-After ----------------------------------------------------------------------------------


async def test_retry_after_in_seconds_is_waited(server: Server, dest: Path) -> None:
    url = server.route_url("retryafter", "secs.bin", fail=1, after="1")
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    assert [e.delay for e in of_type(events, Retrying)] == [1.0]
    first, second = server.requests("secs.bin")
    assert second.time - first.time >= 0.9


async def test_retry_after_as_an_http_date_is_waited(server: Server, dest: Path) -> None:
    when = formatdate(time.time() + 2, usegmt=True)
    url = server.route_url("retryafter", "date.bin", fail=1, after=when)
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    (retrying,) = of_type(events, Retrying)
    assert 0.0 < retrying.delay <= 2.0


async def test_retry_after_as_a_past_http_date_retries_at_once(server: Server, dest: Path) -> None:
    url = server.route_url("retryafter", "past.bin", fail=1, after=formatdate(0, usegmt=True))
    res, events = await run_manager(dest, [url])
    assert res[0].status is Status.COMPLETED
    assert [e.delay for e in of_type(events, Retrying)] == [0.0]


@pytest.mark.parametrize("garbage", ["soon", "-5", "1.5", "Wed, 99 Foo 2024", "", "²", "١٠"])
async def test_garbage_retry_after_falls_back_to_backoff(
    server: Server, dest: Path, garbage: str
) -> None:
    url = server.route_url("retryafter", "garbage.bin", fail=1, after=garbage)
    res, events = await run_manager(dest, [url], backoff=0.02, backoff_max=0.04)
    assert res[0].status is Status.COMPLETED
    (retrying,) = of_type(events, Retrying)
    assert 0.01 <= retrying.delay <= 0.02


async def test_retry_after_of_a_day_fails_at_once_with_a_clear_message(
    server: Server, dest: Path
) -> None:
    url = server.route_url("retryafter", "tomorrow.bin", fail=5, after="86400")
    res = await asyncio.wait_for(fetch([url, server.url("today.bin")], dest), 10)
    late, today = res
    assert late.status is Status.FAILED
    assert late.error is not None
    assert "HTTP 429" in late.error
    assert "retry after 86400 s" in late.error
    assert "retry_after_max=120" in late.error
    assert server.count("tomorrow.bin") == 1
    assert today.status is Status.COMPLETED


def test_retry_after_parsing() -> None:
    assert retry.parse_retry_after("120") == 120.0
    assert retry.parse_retry_after(formatdate(1_000_100, usegmt=True), now=1_000_000) == 100.0
    assert retry.parse_retry_after(formatdate(0, usegmt=True), now=1_000_000) == 0.0
    for garbage in (
        None,
        "",
        "soon",
        "-5",
        "1.5",
        "²",
        "١٠",
        "Wed, 99 Foo 2024",
        "Mon, 01 Jan 2024",
    ):
        assert retry.parse_retry_after(garbage) is None


# --- redirects ------------------------------------------------------------------------------------


async def test_endless_redirects_stop_at_max_redirects_with_flat_memory(
    server: Server, dest: Path
) -> None:
    url = server.route_url("redirect", "loop.bin", hops=10_000)
    tracemalloc.start()
    try:
        res = await fetch([url, server.url("fine.bin")], dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    loop, fine = res
    assert loop.status is Status.FAILED
    assert loop.error is not None
    assert "more than 10 redirects" in loop.error
    assert server.count("loop.bin") == 11
    assert fine.status is Status.COMPLETED
    assert peak < 16 << 20
