"""The traffic contract through the public API: ``fetch`` and the manager, against real
local servers, measured at the server.

Caps (``max_rate``, ``max_rate_per_host``), pacing (``requests_per_second``) and the
answers to servers that push back (429 and 503, ``Retry-After``, RateLimit quotas), and
where they meet the rest of a download: segments, resume, mirrors, the low-speed rule,
the events and the tracker. Rate figures are benchmark-style, with generous bounds (a
loaded machine shifts them); ``benchmarks/traffic.py --fetch`` measures the same and
prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from server import FAST_ENGINE, Server, SharedServer, Spec, of_type, run_manager
from traffic_rig import Gate, Meter, Quota, fetch_for, measure_fetch

import rheo_nb
from rheo_nb import DownloadManager, File, Retrying, Status, TextProgress, Throttled
from rheo_nb.traffic import origin_of

MiB = 1 << 20


def within(measured: float, cap: float, bound: float) -> bool:
    return abs(measured / cap - 1) <= bound


# --- bandwidth ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("connections", "size", "files"),
    [
        (1, 64 * MiB, 2),
        (4, 64 * MiB, 6),
        (32, 64 * MiB, 34),
        (64, 64 * MiB, 66),
        (4, 256 << 10, 200),
        (32, 256 << 10, 300),
        (64, 512 << 10, 300),
    ],
    ids=["1-large", "4-large", "32-large", "64-large", "4-small", "32-small", "64-small"],
)
async def test_the_rate_a_server_sees_under_max_rate_stays_at_the_cap(
    server: Server, dest: Path, connections: int, size: int, files: int
) -> None:
    [seen] = await measure_fetch(
        [server], dest, connections=connections, size=size, files=files, max_rate=8 * MiB
    )
    assert seen.windows, "no 3 s window after the first second"
    # The contract is ±10% in every 3 s window after the first second; on a machine
    # shared with other work the bound here is wider, and the figures are in benchmarks/.
    assert all(abs(e) <= 0.25 for e in seen.errors), seen.errors
    assert abs(seen.mean) <= 0.10, seen.mean


@pytest.mark.parametrize(
    ("max_rate", "share"),
    [
        pytest.param(None, 4 * MiB, id="per-host"),
        pytest.param(6 * MiB, 3 * MiB, id="per-host-under-a-total", marks=pytest.mark.slow),
    ],
)
async def test_each_origin_has_its_own_cap(
    server: Server, other_server: SharedServer, dest: Path, max_rate: int | None, share: int
) -> None:
    seen = await measure_fetch(
        [server, other_server.view()],
        dest,
        connections=4,
        size=64 * MiB,
        files=2,
        max_rate=max_rate,
        max_rate_per_host=4 * MiB,
        seconds=4.0,
    )
    for origin in seen:
        assert origin.cap == share
        assert all(abs(e) <= 0.25 for e in origin.errors), origin.errors


async def test_a_mirror_takes_its_tokens_from_its_own_origins_cap(
    server: Server, other_server: SharedServer, dest: Path
) -> None:
    # One file from the first origin, one whose URL there is gone and which comes from a
    # mirror on the second: each origin gets its whole cap (together, twice the cap).
    mirror = other_server.view()
    meters = [Meter(), Meter()]
    items: list[str | File] = [
        server.handle("here.bin", meters[0].handler(64 * MiB)),
        File(
            server.url("gone.bin", status=404),
            mirrors=[mirror.handle("there.bin", meters[1].handler(64 * MiB))],
        ),
    ]
    start, stop = await fetch_for(items, meters, dest, 4.0, max_rate_per_host=4 * MiB)
    for meter in meters:
        seen = meter.measurement(2, 64 * MiB, 4 * MiB, start + 1.0, min(stop, start + 4.0))
        assert seen.windows
        assert all(abs(e) <= 0.25 for e in seen.errors), seen.errors


# --- request starts -----------------------------------------------------------------------


async def test_request_starts_are_spaced_at_the_server_redirects_and_ranges_included(
    server: Server, dest: Path
) -> None:
    rps = 8.0
    items = [
        server.url("a.bin", 1000),
        server.route_url("redirect", "b.bin", 1000),  # two requests: the hop and the file
        server.url("big.bin", 24 * MiB),  # a split file: a GET, then range requests
        server.url("c.bin", 1000),
    ]
    start = time.monotonic()
    # Four downloads at once, and slots to spare for the split file's ranges.
    options = {"concurrency": 4, "limit_per_host": 8, "requests_per_second": rps}
    results, _ = await run_manager(dest, items, **options)
    assert all(r.status is Status.COMPLETED for r in results), results
    records = sorted(server.requests(), key=lambda r: r.time)
    assert any("Range" in r.headers for r in records), "no range request: nothing was split"
    assert {r.route for r in records} == {"gen", "redirect"}
    # Four downloads asked at once, and a split file asks more: the k-th request reached
    # the server k intervals after the start at the earliest (no burst beyond one), and
    # they were not spaced much wider than asked either.
    for k, r in enumerate(records):
        assert r.time - start >= k / rps - 0.002, (k, r.time - start)
    assert records[-1].time - start <= len(records) / rps * 1.5


# --- servers that push back ----------------------------------------------------------------


async def test_429s_above_n_in_flight_settle_the_origin_at_n_and_no_file_fails_for_them(
    server: Server, dest: Path
) -> None:
    gate = Gate(limit=3)
    urls = [server.handle(f"f{i}.bin", gate) for i in range(60)]
    # retries=0: any 429 held against its file would fail it.
    results, events = await run_manager(dest, urls, concurrency=8, retries=0)
    assert [r.status for r in results] == [Status.COMPLETED] * 60, results.failed
    last, peak = gate.settled()
    assert peak <= 3
    total = gate.log[-1][0] - gate.log[0][0]
    assert last < 0.5 * total  # settled early in the run
    decisions = of_type(events, Throttled)
    assert decisions[0].concurrency < decisions[0].previous
    assert decisions[0].message.startswith(f"{origin_of(urls[0]).partition('://')[2]} slowed to")
    # The 429s were retried, without counting as attempts.
    retried = of_type(events, Retrying)
    assert retried
    assert all(e.attempt == 0 and "HTTP 429" in e.error for e in retried)


async def test_a_split_file_behind_a_429_gate_settles_and_completes(
    server: Server, dest: Path
) -> None:
    size = 64 * MiB
    gate = Gate(limit=2, size=size, rate=16 * MiB)
    item = File(server.handle("big.bin", gate), hash=server.hash("big.bin", size))
    results, events = await run_manager(dest, [item], concurrency=8, retries=0)
    assert results[0].status is Status.COMPLETED, results[0].error  # and its hash checked
    _, peak = gate.settled()
    assert peak <= 2
    assert of_type(events, Throttled)


async def test_a_server_that_always_answers_429_still_fails_the_file(
    server: Server, dest: Path
) -> None:
    # Excused 429s are those the origin's connections were cut for: at one connection,
    # there is nothing left to cut, and they count again.
    url = server.url("busy.bin", status=429)
    results, events = await run_manager(dest, [url], concurrency=8, retries=2)
    assert results[0].status is Status.FAILED
    assert "HTTP 429" in str(results[0].error)
    assert "(after 3 attempts)" in str(results[0].error)
    assert [e.attempt for e in of_type(events, Retrying)] == [1, 2]


@pytest.mark.parametrize("style", ["ietf", "x-epoch"])
async def test_a_spent_quota_makes_requests_wait_for_the_reset(
    server: Server, dest: Path, style: str
) -> None:
    quota = Quota(4, style)
    urls = [server.handle(f"q{i}.bin", quota) for i in range(10)]
    results, events = await run_manager(dest, urls, concurrency=4, retries=0)
    assert all(r.status is Status.COMPLETED for r in results), results.failed
    assert [status for _, status in quota.log] == [200] * 10  # not one 429
    assert quota.start is not None
    assert max(quota.used.values()) <= 4
    arrivals = sorted(t for t, _ in quota.log)
    assert arrivals[4] >= quota.start + 1.0  # the fifth waited for the second window
    assert any(e.reason == "quota spent" for e in of_type(events, Throttled))


async def test_retry_after_pauses_the_whole_origin_and_only_that_origin(
    server: Server, other_server: SharedServer, dest: Path
) -> None:
    other = other_server.view()
    refused: list[float] = []

    async def first_refuses(request: web.Request, spec: Spec) -> web.StreamResponse:
        if not refused:
            refused.append(time.monotonic())
            return web.Response(status=429, headers={"Retry-After": "1"})
        await asyncio.sleep(0.05)
        return web.Response(body=b"x" * 100)

    here = [server.handle(f"r{i}.bin", first_refuses) for i in range(5)]
    items = [here[0], other.url("x.bin", 1000), *here[1:]]
    results, events = await run_manager(dest, items, concurrency=3)
    assert all(r.status is Status.COMPLETED for r in results), results.failed
    [pause] = [e for e in of_type(events, Throttled) if e.delay > 0]
    assert (pause.delay, pause.reason) == (1.0, "429, Retry-After")
    answered = refused[0]
    # Every request to that origin sent after the 429 came back waited out the pause
    # (those already on their way were served); the other origin did not wait.
    later = [r.time for r in server.requests() if r.time > answered + 0.02]
    assert len(later) >= 3
    assert min(later) >= answered + 1.0
    assert other.requests()[0].time < answered + 1.0


# --- where caps meet the rest of a download ---------------------------------------------


@pytest.mark.parametrize(
    ("server_rate", "connections"),
    [(None, (1, 1)), (1 * MiB, (2, 4))],
    ids=["fast-server-one-connection", "slow-server-splits-up-to-the-cap"],
)
async def test_a_capped_file_is_split_only_while_the_server_not_the_cap_holds_it_back(
    server: Server, dest: Path, server_rate: int | None, connections: tuple[int, int]
) -> None:
    # A file that could take eight connections, under a cap of 3 MiB/s: split while the
    # server is slower than the cap, never while the cap is what holds it back.
    url = server.url("big.bin", 64 * MiB, rate=server_rate)
    task = asyncio.create_task(
        rheo_nb.fetch([url], dest, max_rate=3 * MiB, progress=False, **FAST_ENGINE)
    )
    await asyncio.sleep(2.5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    least, most = connections
    assert least <= server.peak <= most, server.peak


async def test_a_cap_under_the_low_speed_limit_never_trips_it(server: Server, dest: Path) -> None:
    # 1.5 KiB/s shared by three downloads is 512 B/s each, under low_speed_limit: waiting
    # for the cap's tokens is not the server's slowness.
    urls = [server.url(f"s{i}.bin", 1536) for i in range(3)]
    results, events = await run_manager(
        dest, urls, concurrency=3, max_rate=1536, low_speed_limit=1024, low_speed_time=0.5
    )
    assert all(r.status is Status.COMPLETED for r in results), results.failed
    assert of_type(events, Retrying) == []


async def test_pacing_longer_than_the_low_speed_window_never_trips_it(
    server: Server, dest: Path
) -> None:
    urls = [server.url(f"p{i}.bin", 1000) for i in range(4)]
    results, events = await run_manager(
        dest, urls, concurrency=4, requests_per_second=2, low_speed_time=0.3, retries=0
    )
    assert all(r.status is Status.COMPLETED for r in results), results.failed
    assert of_type(events, Retrying) == []


async def test_a_slow_server_under_a_generous_cap_is_still_too_slow(
    server: Server, dest: Path
) -> None:
    url = server.url("slow.bin", 100_000, rate=200)
    results, _ = await run_manager(
        dest, [url], max_rate="10M", low_speed_limit=1024, low_speed_time=0.5, retries=0
    )
    assert results[0].status is Status.FAILED
    assert "slower than 1.0 KiB/s for 0.5 s" in str(results[0].error)


async def test_a_capped_download_resumes_under_the_cap(server: Server, dest: Path) -> None:
    size = 3 * MiB
    url = server.url("r.bin", size)
    task = asyncio.create_task(
        rheo_nb.fetch([url], dest, max_rate=2 * MiB, segments=1, progress=False)
    )
    await asyncio.sleep(0.8)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    t0 = time.monotonic()
    [again] = await rheo_nb.fetch(
        [rheo_nb.File(url, hash=server.hash("r.bin", size))],
        dest,
        max_rate=2 * MiB,
        segments=1,
        progress=False,
    )
    elapsed = time.monotonic() - t0
    assert again.status is Status.COMPLETED, again.error
    [first, second] = server.requests("r.bin")
    assert "Range" not in first.headers
    start = int(second.headers["Range"].removeprefix("bytes=").partition("-")[0])
    assert 0 < start < size
    # The rest came at the cap: no faster than its size allows (less the first grant).
    assert elapsed >= (size - start - (256 << 10)) / (2 * MiB)


# --- what the user sees ---------------------------------------------------------------------


async def test_the_text_display_says_which_origin_slowed_and_why(
    server: Server, dest: Path
) -> None:
    gate = Gate(limit=2)
    urls = [server.handle(f"t{i}.bin", gate) for i in range(20)]
    out = io.StringIO()
    results = await rheo_nb.fetch(
        urls, dest, concurrency=8, progress=TextProgress(out), **FAST_ENGINE
    )
    assert not results.failed
    host = origin_of(urls[0]).partition("://")[2]
    assert f"{host} slowed to " in out.getvalue()
    assert ": 429" in out.getvalue()


async def test_the_tracker_keeps_each_origins_last_decision(server: Server, dest: Path) -> None:
    gate = Gate(limit=2)
    urls = [server.handle(f"k{i}.bin", gate) for i in range(20)]
    seen: list[Throttled] = []
    options: dict[str, Any] = {**FAST_ENGINE, "concurrency": 8}
    async with DownloadManager(dest, **options) as m:
        m.on("throttled", lambda e: seen.append(e))  # type: ignore[arg-type]
        await m.add(urls)
        await m.wait()
        origin = origin_of(urls[0])
        assert m.tracker.throttled == {origin: seen[-1]}
        assert m.stats.failed == 0
