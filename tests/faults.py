"""Fault injection for the hardening suite.

* Routes on the shared test server (``server.route_url(kind, name, ...)``) that misbehave
  at the HTTP level: encodings, error pages, trickles, floods, ranges ignored or mangled
  for segmented downloads, and ``chaos`` for the soak test (faults drawn at random).
* :class:`Nginx`: a real nginx on 127.0.0.1, for what real servers do with ranges.
* :class:`RawServer`: a bare ``asyncio.start_server`` on 127.0.0.1 for what aiohttp would
  never send: no bytes at all, contradictory or malformed framing, endless headers, a
  keep-alive connection closed under the client.
* Helpers to look at what a run leaves on disk, to plant partials, to interrupt a run
  midway, to run a download in another process, and to measure memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import random
import resource
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from server import RouteHandler, Spec, requested_range, route

import rheo_nb
from rheo_nb import files, partfile, testing
from rheo_nb.display import Source

MiB = 1 << 20

# --- what a run leaves behind ---------------------------------------------------------------------


def text_of(path: Path) -> str:
    return path.read_text()


def leftovers(dest: Path) -> list[str]:
    """Every name under ``dest`` (working files included), relative, sorted."""
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))


def working_files(dest: Path) -> list[Path]:
    """The working files under ``dest``: what downloads keep while unfinished."""
    return sorted(p for p in dest.rglob("*") if files.WORKDIR in p.relative_to(dest).parts[:-1])


def read_partial(final: Path) -> partfile.Partial | None:
    """The partial of the download to ``final``, as a rerun would find it."""
    return partfile.PartFile(final).read()


def plant_partial(
    dest: Path,
    name: str,
    url: str,
    data: bytes,
    *,
    validator: str | None,
    total: int | None,
    segments: list[list[int]] | None = None,
    length: int | None = None,
) -> Path:
    """Leave what an interrupted run leaves: the part file and its resume record.

    With ``length``, the part file is ``data`` followed by a hole up to ``length`` bytes
    (a huge partial that costs no disk space).
    """
    final = dest / name
    part = files.working_path(final, ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(data)
    if length is not None:
        sparse(part, length)
    record = partfile.Record(partfile.url_key(url), validator, total, segments or [])
    files.working_path(final, ".json").write_text(record.to_json())
    return final


def sparse(path: Path, size: int) -> Path:
    """Make ``path`` ``size`` bytes long, the new bytes a hole (zeros that take no space)."""
    with open(path, "ab") as f:
        f.truncate(size)
    return path


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` (blocking) until it holds; a generous hang guard, not a timing."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """:func:`wait_for` for coroutines."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


class _Watch:
    """A display (the public protocol) that notes when a download has received enough."""

    def __init__(self, received: int) -> None:
        self.received = received
        self.reached = asyncio.Event()

    def open(self, manager: Source) -> None:
        manager.on("progress", self._progress)

    def _progress(self, event: rheo_nb.Event) -> None:
        if isinstance(event, rheo_nb.Progress) and event.bytes >= self.received:
            self.reached.set()

    def close(self, results: rheo_nb.Results, *, interrupted: bool) -> None:
        pass


async def interrupt_after(
    items: rheo_nb.File | list[str | rheo_nb.File],
    dest: Path,
    received: int,
    *,
    within: float = 20.0,
    **options: Any,
) -> None:
    """Run :func:`rheo_nb.fetch` and cancel it (as a kernel interrupt or Ctrl-C would) once
    a download has received ``received`` bytes: what an interrupted run leaves behind.

    :raises AssertionError: the call ended, or did not get that far within ``within`` s.
    """
    watch = _Watch(received)
    task = asyncio.create_task(rheo_nb.fetch(items, dest, **{**options, "progress": watch}))
    reached = asyncio.create_task(watch.reached.wait())
    await asyncio.wait({task, reached}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    for t in (task, reached):
        t.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if not watch.reached.is_set():
        ended = repr(task.result()) if not task.cancelled() else "still running"
        raise AssertionError(f"the download did not receive {received} bytes: {ended}")


def part_size(final: Path) -> int:
    try:
        return files.working_path(final, ".part").stat().st_size
    except FileNotFoundError:
        return 0


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- memory ---------------------------------------------------------------------------------------


def rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples the RSS in a thread while a block runs; ``growth`` is peak minus start."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.start = self.peak = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            value = rss()
            self.samples.append(value)
            self.peak = max(self.peak, value)

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def __enter__(self) -> Self:
        self.start = self.peak = rss()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss())


# --- another process ------------------------------------------------------------------------------

_CHILD = """
import sys, rheo_nb
url, dest = sys.argv[1], sys.argv[2]
options = dict(progress=False, backoff=0.01, backoff_max=0.05, chunk_size=4096)
options.update(eval(sys.argv[3]) if len(sys.argv) > 3 else {})
res = rheo_nb.fetch_sync([url], dest, **options)
print(res[0].status, res[0].bytes, flush=True)
"""


def child(url: str, dest: Path, **options: object) -> subprocess.Popen[str]:
    """A Python process that downloads ``url`` into ``dest`` and prints status and bytes."""
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, str(dest), repr(options)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- bodies served with an encoding ---------------------------------------------------------------


@lru_cache(maxsize=8)
def targz(key: str, size: int) -> bytes:
    """A reproducible ``.tar.gz`` holding one generated file: what a publisher hashes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = size
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(testing.content(key, size)))
    return gzip.compress(raw.getvalue(), mtime=0)


@lru_cache(maxsize=4)
def bomb(size: int) -> bytes:
    """Gzip of ``size`` zero bytes: tiny on the wire, huge once inflated."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        zeros = bytes(MiB)
        for _ in range(size // MiB):
            gz.write(zeros)
    return out.getvalue()


def corrupt_gzip(key: str, size: int) -> bytes:
    """Gzip's magic bytes, then noise: no decoder can make sense of it."""
    return b"\x1f\x8b\x08\x00" + testing.content(key, size)[4:]


def encoded_body(kind: str, key: str, size: int) -> bytes:
    if kind == "targz":
        return targz(key, size)
    if kind == "bomb":
        return bomb(size)
    return corrupt_gzip(key, size)


@route("gzip")
async def gzip_route(request: web.Request, spec: Spec) -> web.StreamResponse:
    """``Content-Encoding: gzip`` on a body of ``body=targz|corrupt|bomb``."""
    body = encoded_body(spec.query.get("body", "targz"), spec.key, spec.size)
    headers = {
        "Content-Encoding": "gzip",
        "Content-Type": "application/x-tar",
        "Content-Length": str(len(body)),
        "ETag": '"gz"',
    }
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    for i in range(0, len(body), 1 << 16):
        await resp.write(body[i : i + (1 << 16)])
    await resp.write_eof()
    return resp


# --- misbehaving HTTP routes ----------------------------------------------------------------------

ERROR_PAGE = b"<html><body><h1>Quota exceeded</h1><p>Try again tomorrow.</p></body></html>\n"


@route("errorpage")
async def errorpage(request: web.Request, spec: Spec) -> web.StreamResponse:
    """An HTML error page sent with status 200, where a data file was expected."""
    return web.Response(body=ERROR_PAGE, content_type="text/html")


@route("errorbody")
async def errorbody(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Status ``status`` with a large body that must never land on disk."""
    return web.Response(
        status=spec.count("status", 404), body=b"E" * spec.size, content_type="text/plain"
    )


@route("trickle")
async def trickle(request: web.Request, spec: Spec) -> web.StreamResponse:
    """``step`` bytes every ``every`` seconds, with the full Content-Length announced."""
    size, step, every = spec.size, spec.count("step", 100), spec.number("every", 0.1)
    resp = web.StreamResponse(
        headers={"Content-Length": str(size), "ETag": testing.etag(spec.key, size)}
    )
    await resp.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        for pos in range(0, size, step):
            await resp.write(testing.content(spec.key, size, pos, pos + step))
            await asyncio.sleep(every)
        await resp.write_eof()
    return resp


async def stream(
    request: web.Request,
    key: str,
    size: int,
    *,
    start: int = 0,
    end: int | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
    cut: int | None = None,
    rate: float | None = None,
) -> web.StreamResponse:
    """Bytes ``start..end`` of a generated file, produced block by block (flat memory on
    both sides); with ``cut``, the connection drops after that many bytes."""
    end = size if end is None else end
    out = {"Content-Type": "application/octet-stream", **(headers or {})}
    if not chunked:
        out["Content-Length"] = str(end - start)
    resp = web.StreamResponse(status=status, headers=out)
    if chunked:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    limit = end if cut is None else min(end, start + cut)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    pos = start
    try:
        while pos < limit:
            chunk = testing.content(key, size, pos, min(limit, pos + testing.BLOCK))
            await resp.write(chunk)
            pos += len(chunk)
            if rate:
                ahead = (pos - start) / rate - (loop.time() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        if cut is not None:
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
    except ConnectionResetError:
        pass
    return resp


@route("flood")
async def flood(request: web.Request, spec: Spec) -> web.StreamResponse:
    """``size`` bytes with no Content-Length (chunked): only ``max_size`` can stop it."""
    return await stream(request, spec.key, spec.size, chunked=True)


def _range_headers(spec: Spec) -> dict[str, str]:
    return {"ETag": testing.etag(spec.key, spec.size), "Accept-Ranges": "bytes"}


#: Requests answered by each route of the segmented tests: (tag, name) → Range headers.
RANGES: dict[tuple[str, str], list[str | None]] = {}


def _note_range(spec: Spec, request: web.Request) -> None:
    RANGES.setdefault((spec.tag, spec.name), []).append(request.headers.get("Range"))


@route("segfail")
async def segfail(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Honours ranges, but the first range request not starting at 0 drops its connection
    after ``cut`` bytes. ``rate`` paces every response (bytes/s)."""
    _note_range(spec, request)
    size = spec.size
    rng = requested_range(request, size)
    if rng is None:
        return await stream(
            request, spec.key, size, headers=_range_headers(spec), rate=spec.number("rate", 0)
        )
    start, end = rng
    failed = FAILED_RANGES.setdefault((spec.tag, spec.name), [])
    cut = None
    if start > 0 and not failed:
        failed.append(start)
        cut = spec.count("cut", 100_000)
    headers = {**_range_headers(spec), "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    return await stream(
        request,
        spec.key,
        size,
        start=start,
        end=end,
        status=206,
        headers=headers,
        cut=cut,
        rate=spec.number("rate", 0),
    )


FAILED_RANGES: dict[tuple[str, str], list[int]] = {}


@route("fakeranges")
async def fakeranges(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Says ``Accept-Ranges: bytes`` but answers every request with the whole file (200)."""
    _note_range(spec, request)
    return await stream(
        request, spec.key, spec.size, headers=_range_headers(spec), rate=spec.number("rate", 0)
    )


@route("mangledranges")
async def mangledranges(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Says ``Accept-Ranges: bytes``; a range request gets a 206 whose Content-Range
    starts at 0, whatever was asked."""
    _note_range(spec, request)
    size = spec.size
    rng = requested_range(request, size)
    if rng is None:
        return await stream(request, spec.key, size, headers=_range_headers(spec))
    n = rng[1] - rng[0]
    headers = {**_range_headers(spec), "Content-Range": f"bytes 0-{n - 1}/{size}"}
    return await stream(request, spec.key, size, start=0, end=n, status=206, headers=headers)


def recording_ranges(
    size: int, etag: str, rate: dict[str, float | None], asked: list[str | None]
) -> RouteHandler:
    """A handler serving a file of ``size`` with ranges, at ``rate["rate"]`` bytes/s (a test
    may change it midway), noting every ``Range`` header it is asked for in ``asked``."""

    async def ranges(request: web.Request, spec: Spec) -> web.StreamResponse:
        asked.append(request.headers.get("Range"))
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        rng = requested_range(request, size)
        if rng is None:
            return await stream(request, spec.key, size, headers=headers, rate=rate["rate"])
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return await stream(
            request,
            spec.key,
            size,
            start=start,
            end=end,
            status=206,
            headers=headers,
            rate=rate["rate"],
        )

    return ranges


@route("ranged")
async def ranged(request: web.Request, spec: Spec) -> web.StreamResponse:
    """A well-behaved file served block by block (``rate=`` bytes/s per response)."""
    _note_range(spec, request)
    size = spec.size
    rate = spec.number("rate", 0) or None
    rng = requested_range(request, size)
    if rng is None:
        return await stream(request, spec.key, size, headers=_range_headers(spec), rate=rate)
    if request.headers.get("If-Range") not in (None, testing.etag(spec.key, size)):
        return await stream(request, spec.key, size, headers=_range_headers(spec), rate=rate)
    start, end = rng
    headers = {**_range_headers(spec), "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    return await stream(
        request, spec.key, size, start=start, end=end, status=206, headers=headers, rate=rate
    )


@route("slowstart")
async def slowstart(request: web.Request, spec: Spec) -> web.StreamResponse:
    """A well-behaved file, sent at ``rate`` bytes/s from its start but at full speed to a
    resume (a Range request): an interrupted first run, a quick second one."""
    size = spec.size
    rng = requested_range(request, size)
    if rng is None or request.headers.get("If-Range") != testing.etag(spec.key, size):
        return await stream(
            request, spec.key, size, headers=_range_headers(spec), rate=spec.number("rate", 0)
        )
    start, end = rng
    headers = {**_range_headers(spec), "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    return await stream(request, spec.key, size, start=start, end=end, status=206, headers=headers)


# --- chaos: faults at random, for the soak test ---------------------------------------------------

#: Faults the chaos route injects, and what each does to one response.
CHAOS_FAULTS = (
    "503",  # 503 with Retry-After: 0
    "reset",  # the connection closes before any byte of a response
    "cut",  # the body stops partway and the connection drops
    "stall",  # the body stops partway and nothing more comes (the read timeout ends it)
    "garbage",  # 200 with the right length but other bytes (only where a hash is given)
    "ignore-range",  # a Range request answered 200 with the whole file
    "bad-range",  # a Range request answered 206 from byte 0
)


@dataclass(slots=True)
class Chaos:
    """The state of the chaos route for one test: how often, and what was injected."""

    rate: float
    seed: int
    stall: float = 2.0
    #: Range requests (resumes, segments) are rarer than whole ones: they meet faults
    #: this many times as often, so that the resume paths get their share.
    range_boost: float = 5.0
    injected: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def draw(self, spec: Spec, ranged: bool, hashed: bool) -> str | None:
        rng = random.Random(f"{self.seed}:{spec.key}:{spec.seen}")
        if rng.random() >= self.rate * (self.range_boost if ranged else 1):
            return None
        kinds = [
            k
            for k in CHAOS_FAULTS
            if (k != "garbage" or hashed) and (k not in ("ignore-range", "bad-range") or ranged)
        ]
        if ranged and rng.random() < 0.5:
            kind = rng.choice(("ignore-range", "bad-range"))
        else:
            kind = rng.choice(kinds)
        with self.lock:
            self.injected[kind] += 1
        return kind


CHAOS: dict[str, Chaos] = {}
#: Files of the soak that are missing on the server (404 on every request).
MISSING = "missing"


@route("chaos")
async def chaos(request: web.Request, spec: Spec) -> web.StreamResponse:
    """A well-behaved file (ranges, ETag), but each request meets a fault with probability
    ``CHAOS[tag].rate``. Names starting with ``missing`` are always 404."""
    if spec.name.startswith(MISSING):
        return web.Response(status=404, text="no such file\n")
    state = CHAOS[spec.tag]
    size = spec.size
    rng = requested_range(request, size)
    if rng is not None and request.headers.get("If-Range") != testing.etag(spec.key, size):
        rng = None
    kind = state.draw(spec, rng is not None, "h" in spec.query)
    start, end = rng if rng is not None else (0, size)
    headers = _range_headers(spec)
    cut = random.Random(f"cut:{spec.key}:{spec.seen}").randrange(0, max(1, end - start))
    if kind == "503":
        return web.Response(status=503, text="busy\n", headers={"Retry-After": "0"})
    if kind == "reset":
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=500)
    if kind == "garbage":
        body = random.Random(spec.seen).randbytes(size)
        return web.Response(body=body, headers=headers)
    if kind == "ignore-range":
        rng = None
    if kind == "bad-range" and rng is not None:
        n = rng[1] - rng[0]
        headers = {**headers, "Content-Range": f"bytes 0-{n - 1}/{size}"}
        return await stream(request, spec.key, size, start=0, end=n, status=206, headers=headers)
    if rng is None:
        start, end, status = 0, size, 200
    else:
        status = 206
        headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    if kind == "stall":
        out = {**headers, "Content-Length": str(end - start)}
        resp = web.StreamResponse(status=status, headers=out)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            await resp.write(testing.content(spec.key, size, start, start + cut))
            await asyncio.sleep(state.stall)
        return resp
    return await stream(
        request,
        spec.key,
        size,
        start=start,
        end=end,
        status=status,
        headers=headers,
        cut=cut if kind == "cut" else None,
    )


# --- nginx, a real server with its own ideas about ranges -----------------------------------------

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


class Nginx:
    """Debian's nginx serving ``root`` on 127.0.0.1 (one process). Its ETag is
    ``"<mtime>-<size>"`` and it answers a stale ``If-Range`` with the whole file, as Apache
    and lighttpd do. Each connection is held to ``limit_rate`` bytes/s until
    :meth:`unlimit` (0: never)."""

    def __init__(self, root: Path, state: Path, limit_rate: int = 0) -> None:
        assert NGINX is not None
        self.root, self.state, self.limit_rate = root, state, limit_rate
        self.port = closed_port()
        self._limited = state / "limited"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def unlimit(self) -> None:
        """Full speed for the requests from now on."""
        self._limited.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        assert NGINX is not None
        temp = "".join(
            f"{kind}_temp_path {self.state}/{kind}; "
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        if self.limit_rate:
            self._limited.touch()
        limit = f"if (-f {self._limited}) {{ set $limit_rate {self.limit_rate}; }}"
        conf = self.state / "nginx.conf"
        conf.write_text(
            "daemon off; master_process off; "
            f"pid {self.state}/nginx.pid; error_log {self.state}/error.log; "
            "events { worker_connections 256; } "
            f"http {{ access_log off; {temp}"
            f"server {{ listen 127.0.0.1:{self.port}; root {self.root}; "
            f"location / {{ {limit} }} }} }}\n"
        )
        self._proc = subprocess.Popen(
            [NGINX, "-p", str(self.state), "-e", str(self.state / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.__exit__(None, None, None)
                    log = (self.state / "error.log").read_text(errors="replace")
                    raise RuntimeError(f"nginx did not start: {log}") from None
                time.sleep(0.05)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


# --- a raw TCP server, for framing aiohttp would not emit -----------------------------------------


@dataclass(frozen=True, slots=True)
class RawRequest:
    """A request as the raw server read it. Header names are lower-cased."""

    method: str
    target: str
    headers: dict[str, str]
    connection: int  # which TCP connection, from 1
    number: int  # which request on that connection, from 1


#: Writes a response (or not) and says whether to read another request on the connection.
RawHandler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]


def head(status: int, headers: dict[str, str] | list[tuple[str, str]] | None = None) -> bytes:
    """A status line and header block, exactly as given (duplicates and all)."""
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawServer(testing.ServerThread):
    """``asyncio.start_server`` on 127.0.0.1 in its own thread; ``handler`` answers each
    request with whatever bytes it likes."""

    def __init__(self, handler: RawHandler) -> None:
        super().__init__()
        self._handler = handler
        self.requests: list[RawRequest] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/file.bin") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        connection = self.connections
        try:
            for number in range(1, 1000):
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                line, *rest = raw.decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (h.partition(":") for h in rest if h)
                }
                request = RawRequest(method, target, headers, connection, number)
                self.requests.append(request)
                if not await self._handler(request, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def raw_server(handler: RawHandler) -> Iterator[RawServer]:
    with RawServer(handler) as srv:
        yield srv
