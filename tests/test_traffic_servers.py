"""Traffic shaping against real local servers, measured at the server.

Plain aiohttp client code drives the traffic module the way the transfer will (the rig in
traffic_rig.py): tokens before each read, every request through ``before_request`` and
``after_response``, connection slots per origin. What counts is what the server saw: the
bytes that reached the client and when, request arrival times, requests in flight.

Rate figures are benchmark-style: the bounds are generous (a loaded machine shifts them);
``benchmarks/traffic.py`` runs the same measurement and prints the figures.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web
from server import Server, SharedServer, Spec
from traffic_rig import Gate, Quota, Slots, fetch_all, get, measure

from rheo_nb import Options, Throttled
from rheo_nb.events import Event
from rheo_nb.traffic import Traffic, origin_of

MiB = 1 << 20


# --- bandwidth ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("connections", "size"),
    [(1, 64 * MiB), (4, 64 * MiB), (32, 64 * MiB), (4, 256 << 10), (32, 256 << 10)],
    ids=["1-large", "4-large", "32-large", "4-small", "32-small"],
)
async def test_the_rate_the_server_sees_stays_at_the_cap(
    server: Server, connections: int, size: int
) -> None:
    [seen] = await measure([server], connections=connections, size=size, max_rate=8 * MiB)
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
    server: Server, other_server: SharedServer, max_rate: int | None, share: int
) -> None:
    seen = await measure(
        [server, other_server.view()],
        connections=4,
        size=64 * MiB,
        max_rate=max_rate,
        max_rate_per_host=4 * MiB,
        seconds=4.0,
    )
    for origin in seen:
        assert origin.cap == share
        assert all(abs(e) <= 0.25 for e in origin.errors), origin.errors


# --- request starts -----------------------------------------------------------------------


async def test_request_starts_are_spaced_at_the_server_heads_and_ranges_included(
    server: Server,
) -> None:
    traffic = Traffic(Options(requests_per_second=10))
    requests = [
        ("HEAD", server.url("a.bin"), None),
        ("GET", server.url("b.bin"), None),
        ("GET", server.url("c.bin"), {"Range": "bytes=0-999"}),
        ("GET", server.url("c.bin"), {"Range": "bytes=1000-1999"}),
    ] * 3
    todo = list(requests)
    statuses: list[int] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        while todo:
            method, url, headers = todo.pop()
            status, _ = await get(session, traffic, url, method=method, headers=headers)
            statuses.append(status)

    start = time.monotonic()
    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
        for _ in range(4):
            tg.create_task(worker(session))
    assert sorted(set(statuses)) == [200, 206]
    arrivals = sorted(r.time for r in server.requests())
    assert len(arrivals) == len(requests)
    assert {r.method for r in server.requests()} == {"HEAD", "GET"}
    # Four workers asked at once, but the k-th request reached the server k intervals
    # after the start at the earliest: no burst.
    for k, t in enumerate(arrivals):
        assert t - start >= k * 0.1 - 0.002, (k, t - start)
    # And they were not spaced much wider than asked either.
    assert arrivals[-1] - arrivals[0] <= (len(requests) - 1) * 0.1 * 1.5


# --- servers that push back ----------------------------------------------------------------


async def test_429s_above_n_in_flight_settle_the_origin_at_n_and_every_file_completes(
    server: Server,
) -> None:
    gate = Gate(limit=3)
    urls = [server.handle(f"f{i}", gate) for i in range(60)]
    events: list[Event] = []
    slots = Slots(8)
    traffic = Traffic(Options(backoff=0.01, backoff_max=0.05), emit=events.append, slots=slots)
    statuses = await fetch_all(urls, traffic, slots, workers=8)

    assert all(s[-1] == 200 for s in statuses.values())  # every file completes
    # No file met more 429s than the default retries absorb: none would fail for them.
    assert max(s.count(429) for s in statuses.values()) <= Options().retries
    refused = [t for t, _, status in gate.log if status == 429]
    assert refused, "the server never pushed back: the test proves nothing"
    # Settled: once the last 429 is past, never more than N in flight, and that last
    # 429 came early in the run.
    last = max(refused)
    assert max(n for t, n, _ in gate.log if t > last) <= 3
    assert last - gate.log[0][0] < 0.5 * (gate.log[-1][0] - gate.log[0][0])
    origin = origin_of(urls[0])
    assert slots.capacity(origin) <= 3
    decisions = [e for e in events if isinstance(e, Throttled)]
    assert (decisions[0].previous, decisions[0].concurrency, decisions[0].reason) == (8, 4, "429")
    assert decisions[0].message.startswith("127.0.0.1:")
    assert all(e.origin == origin and e.concurrency >= 1 for e in decisions)


@pytest.mark.parametrize("style", ["ietf", "draft-07", "x-delta", "x-epoch"])
async def test_a_spent_quota_makes_requests_wait_for_the_reset(server: Server, style: str) -> None:
    quota = Quota(4, style)
    urls = [server.handle(f"q{i}", quota) for i in range(8)]
    traffic = Traffic(Options())
    statuses = await fetch_all(urls, traffic, Slots(4), workers=4)
    assert all(s == [200] for s in statuses.values()), statuses  # not one 429
    assert quota.start is not None
    assert max(quota.used.values()) <= 4
    # The second four waited for the second window.
    assert sorted(t for t, _ in quota.log)[4] >= quota.start + 1.0


async def test_retry_after_pauses_the_whole_origin_and_only_that_origin(
    server: Server, other_server: SharedServer
) -> None:
    other = other_server.view()
    sent_429: list[float] = []

    async def first_refuses(request: web.Request, spec: Spec) -> web.StreamResponse:
        if not sent_429:
            sent_429.append(time.monotonic())
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(body=b"x" * 100)

    urls = [server.handle(f"r{i}", first_refuses) for i in range(4)]
    events: list[Event] = []
    traffic = Traffic(Options(), emit=events.append)
    async with aiohttp.ClientSession() as session:
        status, _ = await get(session, traffic, urls[0])
        assert status == 429
        [pause] = events
        assert isinstance(pause, Throttled)
        assert (pause.delay, pause.reason) == (1.0, "429, Retry-After")
        elsewhere = asyncio.create_task(get(session, traffic, other.url("x.bin")))
        statuses = await fetch_all(urls, traffic, Slots(4), workers=4)
        assert (await elsewhere)[0] == 200
    assert all(s == [200] for s in statuses.values())
    # Every other file of that origin waited out the pause; the other origin did not.
    resumed = sorted(r.time for r in server.requests())[1:]
    assert len(resumed) == 4
    assert min(resumed) >= sent_429[0] + 1.0
    assert other.requests()[0].time < min(resumed)
