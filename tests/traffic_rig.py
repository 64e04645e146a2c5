"""A rig that measures traffic shaping where it matters: at the server.

The client side is either plain aiohttp, driven the way the transfer drives a body (take
tokens for the bytes about to be read, read at most that many, refund the rest:
:func:`read_body`; every request through :meth:`Traffic.before_request` and
:meth:`Traffic.after_response`: :func:`get`, :func:`fetch_all`; sockets from
:attr:`Traffic.socket_factory`), or ``rheo_nb.fetch`` itself (:func:`measure_fetch`,
:func:`fetch_for`). The server side counts the bytes that reached the client, with their
time (:class:`Meter`), and :func:`rate_windows` turns them into the rate over sliding
windows. :class:`Gate` and :class:`Quota` are servers that push back.

``benchmarks/traffic.py`` runs :func:`measure` or :func:`measure_fetch` over connection
counts, file sizes and caps and prints the table; ``test_traffic_servers.py`` and
``test_traffic_fetch.py`` run them with generous bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import math
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from server import RouteHandler, Server, Spec

import rheo_nb
from rheo_nb import Options, testing
from rheo_nb.display import Source
from rheo_nb.items import Items
from rheo_nb.traffic import (
    READ_SIZE,
    THROTTLE_STATUSES,
    TokenBucket,
    Traffic,
    origin_of,
)

BLOCK = b"\x5a" * (1 << 16)
SocketFactory = Callable[[tuple[Any, ...]], socket.socket]


class Meter:
    """Bytes that left a server's sockets and reached the client, and when.

    Its handler serves ``size`` bytes per request in 64 KiB writes. A byte handed to a
    socket has not left yet: the kernel's send buffer may hold megabytes of it while the
    client reads nothing. So a sampler on the server's loop asks the kernel, every
    ``tick`` seconds, how much of each connection's output is still unacknowledged
    (``TIOCOUTQ``), and records what the client acknowledged since the last tick.
    """

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self.samples: list[tuple[float, int]] = []
        self._written: dict[asyncio.Transport, int] = {}
        self._acked: dict[asyncio.Transport, int] = {}
        self._sampler: asyncio.Task[None] | None = None
        self._closed = False

    def handler(self, size: int) -> RouteHandler:
        async def handle(request: web.Request, spec: Spec) -> web.StreamResponse:
            transport = request.transport
            assert transport is not None
            if self._sampler is None:
                self._sampler = asyncio.get_running_loop().create_task(self._sample())
            self._written.setdefault(transport, 0)
            self._acked.setdefault(transport, 0)
            resp = web.StreamResponse(headers={"Content-Length": str(size)})
            left = size
            try:
                await resp.prepare(request)
                while left:
                    chunk = BLOCK[: min(left, len(BLOCK))]
                    self._written[transport] += len(chunk)
                    await resp.write(chunk)
                    left -= len(chunk)
                await resp.write_eof()
            except ConnectionError:  # the client stopped on purpose
                pass
            return resp

        return handle

    def close(self) -> None:
        self._closed = True

    def measurement(
        self, connections: int, size: int, cap: float, start: float, end: float
    ) -> Measurement:
        """The rate over the 3 s windows from ``start`` to ``end``, against ``cap``."""
        samples = list(self.samples)
        windows = rate_windows(samples, start, end)
        first = sum(n for t, n in samples if t < start)
        return Measurement(connections, size, cap, windows, first)

    async def _sample(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            total = 0
            for transport, written in list(self._written.items()):
                sock = transport.get_extra_info("socket")
                if transport.is_closing() or sock is None:
                    del self._written[transport], self._acked[transport]
                    continue
                out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
                acked = written - transport.get_write_buffer_size() - struct.unpack("i", out)[0]
                total += acked - self._acked[transport]
                self._acked[transport] = acked
            if total:
                self.samples.append((now, total))


def rate_windows(
    samples: list[tuple[float, int]],
    start: float,
    end: float,
    width: float = 3.0,
    step: float = 0.25,
) -> list[float]:
    """Bytes per second in every window ``[a, a + width)`` with ``start <= a`` and
    ``a + width <= end``, ``a`` stepping by ``step``."""
    rates = []
    a = start
    while a + width <= end + 1e-9:
        rates.append(sum(n for t, n in samples if a <= t < a + width) / width)
        a += step
    return rates


async def read_body(resp: aiohttp.ClientResponse, bucket: TokenBucket | None) -> int:
    """Read the whole body as the transfer does: tokens first, then at most that much."""
    size = resp.content_length
    got = 0
    while size is None or got < size:
        want = READ_SIZE if size is None else min(READ_SIZE, size - got)
        if bucket is None:
            data = await resp.content.read(want)
        else:
            n = await bucket.take(want)
            data = await resp.content.read(n)
            bucket.refund(n - len(data))
        if not data:
            break
        got += len(data)
    return got


async def get(
    session: aiohttp.ClientSession,
    traffic: Traffic,
    url: str,
    *,
    download_id: str = "d",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    answered: asyncio.Event | None = None,
) -> tuple[int, int]:
    """One request through the traffic: its status and the body bytes read. ``answered``
    is set once the response headers are in."""
    ticket = await traffic.before_request(url, download_id, url)
    read_bufsize = traffic.read_size or READ_SIZE
    async with session.request(method, url, headers=headers, read_bufsize=read_bufsize) as resp:
        traffic.after_response(ticket, resp.status, resp.headers)
        if answered is not None and not answered.is_set():
            answered.set()
        if resp.status >= 400:
            await resp.read()
            return resp.status, 0
        return resp.status, await read_body(resp, traffic.bucket(url))


@dataclass
class Measurement:
    """What one origin's server saw: its rate over sliding 3 s windows after the first
    ``skip`` seconds, against the cap."""

    connections: int
    size: int
    cap: float
    windows: list[float]
    #: Bytes that reached the client in the first ``skip`` seconds: the buffers filling.
    first: int

    @property
    def errors(self) -> list[float]:
        """Each window's rate against the cap: ``+0.05`` is 5% over."""
        return [w / self.cap - 1 for w in self.windows]

    @property
    def worst(self) -> float:
        return max(self.errors, key=abs)

    @property
    def mean(self) -> float:
        """The mean rate over the windows against the cap."""
        return sum(self.windows) / len(self.windows) / self.cap - 1


async def drive(
    urls: list[str],
    connections: int,
    traffic: Traffic,
    seconds: float,
    socket_factory: SocketFactory | None,
) -> tuple[float, float]:
    """``connections`` workers download ``urls`` in turn, over and over, until ``seconds``
    after the first answer; when that answer came and when they stopped."""
    cycle: Iterator[str] = itertools.cycle(urls)
    first = asyncio.Event()
    started = time.monotonic()

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            await get(session, traffic, next(cycle), answered=first)

    connector = aiohttp.TCPConnector(limit=connections, socket_factory=socket_factory)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            async with asyncio.timeout(seconds + 20) as deadline, asyncio.TaskGroup() as tg:
                for _ in range(connections):
                    tg.create_task(worker(session))
                await first.wait()
                started = time.monotonic()
                deadline.reschedule(asyncio.get_running_loop().time() + seconds)
        except TimeoutError:
            pass
    return started, time.monotonic()


async def measure(
    servers: list[Server],
    *,
    connections: int,
    size: int,
    max_rate: int | None = None,
    max_rate_per_host: int | None = None,
    seconds: float = 4.5,
    skip: float = 1.0,
    kernel_buffers: bool = False,
) -> list[Measurement]:
    """Download files of ``size`` bytes from ``servers`` (in turn) with ``connections``
    streams under the caps, and what each server saw, against its share of the cap.
    ``kernel_buffers`` leaves the receive buffers to the kernel's autotuning."""
    meters = [Meter() for _ in servers]
    urls = [
        server.handle(f"rate-{i}", meter.handler(size))
        for i in range(8)
        for server, meter in zip(servers, meters, strict=True)
    ]
    options = Options(
        concurrency=connections, max_rate=max_rate, max_rate_per_host=max_rate_per_host
    )
    traffic = Traffic(options)
    sockets = None if kernel_buffers else traffic.socket_factory
    start, stop = await drive(urls, connections, traffic, seconds, sockets)
    for meter in meters:
        meter.close()
    cap = share(servers, max_rate, max_rate_per_host)
    end = min(stop, start + seconds)
    return [meter.measurement(connections, size, cap, start + skip, end) for meter in meters]


def share(servers: list[Server], max_rate: int | None, max_rate_per_host: int | None) -> float:
    """What each server should see: its share of the call's cap, or its own cap."""
    shares = [max_rate / len(servers)] if max_rate else []
    return min([*shares, *([max_rate_per_host] if max_rate_per_host else [])])


async def measure_fetch(
    servers: list[Server],
    dest: Path,
    *,
    connections: int,
    size: int,
    files: int,
    max_rate: int | None = None,
    max_rate_per_host: int | None = None,
    seconds: float = 4.5,
    skip: float = 1.0,
    **options: Any,
) -> list[Measurement]:
    """The same measurement through the public API: ``rheo_nb.fetch`` downloads ``files``
    files of ``size`` bytes from each server with ``concurrency=connections`` under the
    caps, until ``seconds`` after the first bytes reached it (then it is cancelled, unless
    it finished first); what each server saw, against its share of the caps."""
    meters = [Meter() for _ in servers]
    urls = [
        server.handle(f"fetch-{k}-{i}.bin", meter.handler(size))
        for i in range(files)
        for k, (server, meter) in enumerate(zip(servers, meters, strict=True))
    ]
    caps = {"max_rate": max_rate, "max_rate_per_host": max_rate_per_host}
    start, stop = await fetch_for(
        urls, meters, dest, seconds, concurrency=connections, **caps, **options
    )
    cap = share(servers, max_rate, max_rate_per_host)
    end = min(stop, start + seconds)
    return [meter.measurement(connections, size, cap, start + skip, end) for meter in meters]


async def fetch_for(
    items: Items, meters: list[Meter], dest: Path, seconds: float, **options: Any
) -> tuple[float, float]:
    """``rheo_nb.fetch(items, dest, **options)`` for ``seconds`` after the first bytes
    reached one of ``meters``' handlers (cancelled then, unless it finished first): when
    that was, and when it stopped. The meters are closed; no download may have failed."""
    failures = _Failures()
    task = asyncio.create_task(rheo_nb.fetch(items, dest, progress=failures, **options))
    async with asyncio.timeout(20):
        # The samples are the server thread's: nothing here can wake on them.
        while not any(m.samples for m in meters) and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    if task.done():
        task.result()  # an error: let it show
    start = min(m.samples[0][0] for m in meters if m.samples)
    await asyncio.wait([task], timeout=max(0.0, start + seconds - time.monotonic()))
    stop = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for meter in meters:
        meter.close()
    assert not failures.errors, failures.errors
    return start, stop


class _Failures:
    """A display that keeps the failures, cancelled call or not."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def open(self, manager: Source) -> None:
        manager.on("failed", lambda event: self.errors.append(str(getattr(event, "error", ""))))

    def close(self, results: rheo_nb.Results, *, interrupted: bool) -> None:
        pass


# --- a connection limiter for the adaptive limit to steer ---------------------------------


class Slots:
    """Connection slots per origin whose capacity can change while they are held: the
    shape of ``client.HostLimiter``, for the adaptive limit to steer from plain aiohttp
    code."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._capacity: dict[str, int] = {}
        self._used: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def capacity(self, host: str) -> int:
        return self._capacity.get(host, self.per_host)

    def in_use(self, host: str) -> int:
        return self._used.get(host, 0)

    def set_capacity(self, host: str, n: int) -> None:
        self._capacity[host] = n
        self._wake()

    async def acquire(self, host: str) -> None:
        while self.in_use(host) >= self.capacity(host):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._used[host] = self.in_use(host) + 1

    def release(self, host: str) -> None:
        self._used[host] -= 1
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


async def fetch_all(
    urls: list[str], traffic: Traffic, slots: Slots, *, workers: int
) -> dict[str, list[int]]:
    """Download each URL once with ``workers`` tasks, each request holding a connection
    slot of its origin; a 429 or 503 is tried again (after the origin's pause, which
    :meth:`Traffic.before_request` waits for). The statuses each URL got, in order."""
    statuses: dict[str, list[int]] = {url: [] for url in urls}
    todo = list(reversed(urls))

    async def worker(session: aiohttp.ClientSession) -> None:
        while todo:
            url = todo.pop()
            origin = origin_of(url)
            while not statuses[url] or statuses[url][-1] in THROTTLE_STATUSES:
                await slots.acquire(origin)
                try:
                    status, _ = await get(session, traffic, url)
                finally:
                    slots.release(origin)
                statuses[url].append(status)

    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
        for _ in range(workers):
            tg.create_task(worker(session))
    return statuses


# --- servers that push back ----------------------------------------------------------------


class Gate:
    """A route that answers 429 (without Retry-After) to any request beyond ``limit``
    in flight, and serves the others in ``hold`` seconds; it logs every arrival with the
    number in flight and the status it got.

    ``size``: serve the generated file of that size instead (ranges, validators, at
    ``rate`` bytes per second when given), so a large file can be split behind the gate.
    """

    def __init__(
        self, limit: int, hold: float = 0.05, size: int | None = None, rate: float | None = None
    ) -> None:
        self.limit = limit
        self.hold = hold
        self.size = size
        self.rate = rate
        self.in_flight = 0
        self.log: list[tuple[float, int, int]] = []

    async def __call__(self, request: web.Request, spec: Spec) -> web.StreamResponse:
        self.in_flight += 1
        try:
            status = 429 if self.in_flight > self.limit else 200
            self.log.append((time.monotonic(), self.in_flight, status))
            if status == 429:
                return web.Response(status=429, text="too many\n")
            if self.size is not None:
                return await testing.serve_generated(request, spec.key, self.size, self.rate)
            await asyncio.sleep(self.hold)
            return web.Response(body=b"x" * 1000)
        finally:
            self.in_flight -= 1

    def settled(self) -> tuple[float, int]:
        """When the last 429 went out (relative to the first request), and the most
        requests in flight at any arrival after it."""
        refused = [t for t, _, status in self.log if status == 429]
        assert refused, "the server never pushed back: the test proves nothing"
        last = max(refused)
        after = [n for t, n, _ in self.log if t > last]
        return last - self.log[0][0], max(after, default=0)


class Quota:
    """A route allowing ``quota`` requests per one-second window (counted from the first
    request), saying so in the headers of ``style``; a request over the quota gets 429."""

    def __init__(self, quota: int, style: str) -> None:
        self.quota = quota
        self.style = style
        self.start: float | None = None
        self.used: dict[int, int] = {}
        self.log: list[tuple[float, int]] = []

    async def __call__(self, request: web.Request, spec: Spec) -> web.StreamResponse:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        window = int(now - self.start)
        self.used[window] = self.used.get(window, 0) + 1
        left = self.quota - self.used[window]
        status = 200 if left >= 0 else 429
        self.log.append((now, status))
        reset = self.start + window + 1 - now  # seconds until the quota is back
        return web.Response(
            status=status, body=b"x" * 100, headers=self.headers(max(0, left), reset)
        )

    def headers(self, left: int, reset: float) -> dict[str, str]:
        seconds = str(math.ceil(reset))
        if self.style == "ietf":
            return {
                "RateLimit": f'"default";r={left};t={seconds}',
                "RateLimit-Policy": f'"default";q={self.quota};w=1',
            }
        if self.style == "draft-07":
            return {"RateLimit": f"limit={self.quota}, remaining={left}, reset={seconds}"}
        if self.style == "x-delta":
            return {"X-RateLimit-Remaining": str(left), "X-RateLimit-Reset": f"{reset:.3f}"}
        # GitHub's: the reset as a Unix time, beside the Date of the response.
        wall = time.time()
        return {
            "X-RateLimit-Remaining": str(left),
            "X-RateLimit-Reset": str(math.ceil(wall + reset)),
            "Date": formatdate(wall, usegmt=True),
        }
