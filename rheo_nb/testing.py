"""A local file server for demos, notebooks and tests: generated files on 127.0.0.1.

>>> with LocalServer() as server:                            # doctest: +SKIP
...     url = server.url("train.csv", size=5_000_000)
...     rheo_nb.fetch_sync([url], dest="data", progress=False)

Every file's bytes depend only on its name and size, so a test can compute its hash
(:meth:`LocalServer.hash`). Query parameters shape a response:

* ``size=N`` bytes (default 1 MiB); ``rate=B`` bytes per second per response;
* ``fail=K``: the first K requests for that name answer 503 (``Retry-After: 0``);
* ``status=S``: always answer status S with a short body;
* ``delay=T``: wait T seconds before answering.

Range requests (``Range``/``If-Range``), ``ETag`` and ``Last-Modified`` work as on a real
server. ``server.requests`` counts requests by name. The server runs on its own loop in a
daemon thread, so it serves blocking and async callers alike.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import random
import threading
from collections.abc import Iterable
from email.utils import formatdate
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlencode

from aiohttp import web

BLOCK = 1 << 16
#: ``app[SERVER]`` is the :class:`LocalServer` serving the app (for added routes).
SERVER: web.AppKey[LocalServer] = web.AppKey("server")
_LAST_MODIFIED = formatdate(1_700_000_000, usegmt=True)


def block(name: str, index: int) -> bytes:
    """Block ``index`` (64 KiB) of every generated file called ``name``."""
    return random.Random(f"{name}:{index}").randbytes(BLOCK)


def content(name: str, size: int, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``start``..``end`` (exclusive) of the generated file ``name`` of ``size`` bytes."""
    end = size if end is None else min(end, size)
    if start >= end:
        return b""
    first, last = start // BLOCK, (end - 1) // BLOCK
    data = b"".join(block(name, i) for i in range(first, last + 1))
    return data[start - first * BLOCK : end - first * BLOCK]


def digest(name: str, size: int, algorithm: str = "sha256") -> str:
    """``"<algorithm>:<hex>"`` of the generated file, for ``File(hash=...)``."""
    h = hashlib.new(algorithm)
    for start in range(0, size, 1 << 22):
        h.update(content(name, size, start, start + (1 << 22)))
    return f"{algorithm}:{h.hexdigest()}"


def etag(name: str, size: int) -> str:
    return '"' + hashlib.sha1(f"{name}:{size}".encode()).hexdigest()[:16] + '"'


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=a-b`` / ``a-`` / ``-n`` range as (start, end exclusive), or None."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:
            n = int(last)
            return (max(0, size - n), size) if n > 0 else None
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    return (start, min(end, size)) if start < size and start < end else (start, -1)


async def serve_generated(
    request: web.Request, name: str, size: int, rate: float | None
) -> web.StreamResponse:
    """Answer ``request`` with the generated file: ranges, validators and all."""
    tag = etag(name, size)
    headers = {"ETag": tag, "Last-Modified": _LAST_MODIFIED, "Accept-Ranges": "bytes"}
    start, end, status = 0, size, 200
    rng = parse_range(request.headers.get("Range"), size)
    if_range = request.headers.get("If-Range")
    if rng is not None and (if_range is None or if_range in (tag, _LAST_MODIFIED)):
        if rng[1] < 0:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        start, end = rng
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Type"] = "application/octet-stream"
    headers["Content-Length"] = str(end - start)
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    step = BLOCK if rate is None else max(1024, min(BLOCK, int(rate / 20)))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    pos = start
    try:
        while pos < end:
            chunk = content(name, size, pos, min(end, pos + step))
            await resp.write(chunk)
            pos += len(chunk)
            if rate:
                ahead = (pos - start) / rate - (loop.time() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await resp.write_eof()
    except ConnectionResetError:  # the client went away (a cancelled or split download)
        pass
    return resp


class ServerThread:
    """A server on its own event loop in a daemon thread, so blocking and async callers
    alike can use it. A subclass says how it starts (``_start``, which sets ``port``) and
    how it stops (``_stop``); ``with server:`` or ``start()`` / ``stop()`` run it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        pass

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(
                f"{type(self).__name__} did not start: {self._error}"
            ) from self._error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._stop())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalServer(ServerThread):
    """Serve generated files on ``127.0.0.1`` from a background thread.

    ``routes`` and ``middlewares`` extend the app (tests add misbehaving routes).
    """

    def __init__(
        self,
        *,
        routes: Iterable[web.AbstractRouteDef] = (),
        middlewares: Iterable[Any] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.requests: collections.Counter[str] = collections.Counter()
        self.app = web.Application(middlewares=list(middlewares))
        self.app[SERVER] = self
        self.app.add_routes(list(routes))
        self.app.router.add_route("GET", "/files/{name:.+}", self._files)
        self.app.router.add_route("HEAD", "/files/{name:.+}", self._files)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, name: str, size: int = 1 << 20, **params: Any) -> str:
        """URL of the generated file ``name``; ``params`` as in the module docstring."""
        query = urlencode({"size": size, **{k: v for k, v in params.items() if v is not None}})
        return f"{self.base_url}/files/{quote(name)}?{query}"

    hash = staticmethod(digest)

    async def _files(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        q = request.query
        self.requests[name] += 1
        if "delay" in q:
            await asyncio.sleep(float(q["delay"]))
        if "status" in q:
            status = int(q["status"])
            return web.Response(status=status, text=f"status {status} for {name}\n")
        if self.requests[name] <= int(q.get("fail", 0)):
            return web.Response(status=503, text="try again\n", headers={"Retry-After": "0"})
        size = int(q.get("size", 1 << 20))
        rate = float(q["rate"]) if "rate" in q else None
        return await serve_generated(request, name, size, rate)

    # --- lifecycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
