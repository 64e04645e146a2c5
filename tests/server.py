"""The test server: rheo_nb's LocalServer, with bookkeeping and routes that misbehave.

One :class:`SharedServer` runs for the whole session (in its own thread, so sync and async
tests alike can use it); each test sees it through a :class:`Server`, which puts a tag of
its own in every URL (``/<route>/<tag>/<name>``). Request records and the peak number of
simultaneous requests are kept per tag, so a test only ever sees its own traffic, even
when a download of an earlier test is still winding down.

Files are the generated files of :mod:`rheo_nb.testing`: their bytes depend only on the
name (tag included) and size, so ``server.content(name, size)`` and
``server.hash(name, size)`` tell a test what it should receive.

``server.url(name)`` is the well-behaved file (route ``gen``: ranges, validators, and
``rate``/``fail``/``status``/``delay`` as LocalServer reads them, plus ``slowfor``).
To add a misbehaving route, write ``async def handler(request, spec) -> StreamResponse``
decorated with ``@route("kind")``; ``server.route_url("kind", name, ...)`` then builds its
URLs. A one-off handler can also be mounted for a single test with ``server.handle``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlencode

from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from rheo_nb import DownloadManager, Event, Results, testing
from rheo_nb.items import Items

DEFAULT_SIZE = 100_000
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Spec:
    """What a request asks of a route: which generated file, and the query that shapes it."""

    tag: str
    name: str
    query: MultiMapping[str]
    #: How many requests this (route, tag, name) has had, this one included.
    seen: int

    @property
    def key(self) -> str:
        """The generated file's name (the tag keeps tests apart)."""
        return f"{self.tag}/{self.name}"

    @property
    def size(self) -> int:
        return int(self.query.get("size", DEFAULT_SIZE))

    def number(self, name: str, default: float) -> float:
        return float(self.query.get(name, default))

    def count(self, name: str, default: int) -> int:
        return int(self.query.get(name, default))


@dataclass(slots=True)
class Record:
    """One request as the server saw it."""

    method: str
    route: str
    tag: str
    name: str
    path_qs: str
    headers: CIMultiDict[str]
    status: int | None = None
    time: float = 0.0


_RECORD: web.RequestKey[Record] = web.RequestKey("record")

RouteHandler = Callable[[web.Request, Spec], Awaitable[web.StreamResponse]]
ROUTES: dict[str, RouteHandler] = {}


def route(kind: str) -> Callable[[RouteHandler], RouteHandler]:
    """Register a misbehaving route served at ``/<kind>/<tag>/<name>``."""

    def register(handler: RouteHandler) -> RouteHandler:
        ROUTES[kind] = handler
        return handler

    return register


# --- building responses -------------------------------------------------------------------


async def send(
    request: web.Request,
    spec: Spec,
    *,
    status: int = 200,
    start: int = 0,
    end: int | None = None,
    headers: dict[str, str] | None = None,
    cut: int | None = None,
) -> web.StreamResponse:
    """Send bytes ``start..end`` of the generated file, with their Content-Length.

    With ``cut``, only that many bytes go out before the connection is dropped.
    """
    size = spec.size
    end = size if end is None else end
    body = testing.content(spec.key, size, start, end)
    out = {"Content-Type": "application/octet-stream", **(headers or {})}
    out["Content-Length"] = str(len(body))
    resp = web.StreamResponse(status=status, headers=out)
    await resp.prepare(request)
    if cut is not None:
        await resp.write(body[:cut])
        await asyncio.sleep(0.05)  # let the bytes leave before the connection drops
        assert request.transport is not None
        request.transport.close()
        return resp
    await resp.write(body)
    await resp.write_eof()
    return resp


def requested_range(request: web.Request, size: int) -> tuple[int, int] | None:
    rng = testing.parse_range(request.headers.get("Range"), size)
    return None if rng is None or rng[1] < 0 else rng


# --- the misbehaving routes -------------------------------------------------------------------


@route("gen")
async def generated(request: web.Request, spec: Spec) -> web.StreamResponse:
    """The well-behaved generated file (ranges, ETag, If-Range), as LocalServer serves it;
    ``status=S`` always answers S, ``fail=K`` answers 503 to the first K requests,
    ``rate=B`` limits to B bytes/s (only the first K requests with ``slowfor=K``)."""
    if "status" in spec.query:
        status = spec.count("status", 200)
        return web.Response(status=status, text=f"status {status} for {spec.name}\n")
    if spec.seen <= spec.count("fail", 0):
        return web.Response(status=503, text="try again\n", headers={"Retry-After": "0"})
    rate = spec.number("rate", 0) or None
    if spec.seen > spec.count("slowfor", 1 << 30):
        rate = None
    return await testing.serve_generated(request, spec.key, spec.size, rate)


@route("noranges")
async def noranges(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Ignores Range: always the whole file with 200, though with a strong ETag."""
    return await send(request, spec, headers={"ETag": testing.etag(spec.key, spec.size)})


@route("badrange")
async def badrange(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Answers a Range request with 206, but its Content-Range starts at 0."""
    size = spec.size
    tag = {"ETag": testing.etag(spec.key, size)}
    if requested_range(request, size) is None:
        return await send(request, spec, headers=tag)
    return await send(
        request, spec, status=206, headers={**tag, "Content-Range": f"bytes 0-{size - 1}/{size}"}
    )


@route("shortrange")
async def shortrange(request: web.Request, spec: Spec) -> web.StreamResponse:
    """A 206 whose Content-Range promises the rest of the file but whose body holds half."""
    size = spec.size
    tag = {"ETag": testing.etag(spec.key, size)}
    rng = requested_range(request, size)
    if rng is None:
        return await send(request, spec, headers=tag)
    start, end = rng
    half = start + (end - start) // 2
    return await send(
        request,
        spec,
        status=206,
        start=start,
        end=half,
        headers={**tag, "Content-Range": f"bytes {start}-{end - 1}/{size}"},
    )


@route("etagchange")
async def etagchange(request: web.Request, spec: Spec) -> web.StreamResponse:
    """A new ETag on every request, and Range honoured whatever If-Range says."""
    size = spec.size
    headers = {"ETag": f'"v{spec.seen}"'}
    rng = requested_range(request, size)
    if rng is None:
        return await send(request, spec, headers=headers)
    start, end = rng
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return await send(request, spec, status=206, start=start, end=end, headers=headers)


@route("truncate")
async def truncate(request: web.Request, spec: Spec) -> web.StreamResponse:
    """The first ``times`` requests (default: all) announce the whole body, send ``cut``
    bytes and drop the connection; later ones behave (ranges included)."""
    if spec.seen > spec.count("times", 1 << 30):
        return await generated(request, spec)
    size = spec.size
    return await send(
        request,
        spec,
        headers={"ETag": testing.etag(spec.key, size), "Accept-Ranges": "bytes"},
        cut=spec.count("cut", size // 2),
    )


@route("retryafter")
async def retryafter(request: web.Request, spec: Spec) -> web.StreamResponse:
    """The first ``fail`` requests answer ``status`` (429) with ``Retry-After: <after>``."""
    if spec.seen <= spec.count("fail", 1):
        return web.Response(
            status=spec.count("status", 429),
            text="slow down\n",
            headers={"Retry-After": spec.query.get("after", "0")},
        )
    return await generated(request, spec)


@route("redirect")
async def redirect(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Redirects (``status``, 302) to ``to`` when given, else ``hops`` times along itself
    and then to the generated file."""
    status = spec.count("status", 302)
    target = spec.query.get("to")
    if target is None:
        hops = spec.count("hops", 1)
        query = {k: v for k, v in spec.query.items() if k not in ("hops", "status")}
        if hops > 1:
            query.update(hops=str(hops - 1), status=str(status))
            target = f"/redirect/{spec.tag}/{quote(spec.name)}?{urlencode(query)}"
        else:
            target = f"/gen/{spec.tag}/{quote(spec.name)}?{urlencode(query)}"
    return web.Response(status=status, headers={"Location": target})


@route("stall")
async def stall(request: web.Request, spec: Spec) -> web.StreamResponse:
    """Sends ``cut`` bytes, then nothing for ``stall`` seconds, then the rest."""
    size = spec.size
    cut = spec.count("cut", size // 2)
    headers = {"ETag": testing.etag(spec.key, size), "Content-Length": str(size)}
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    await resp.write(testing.content(spec.key, size, 0, cut))
    await asyncio.sleep(spec.number("stall", 2.0))
    await resp.write(testing.content(spec.key, size, cut, size))
    await resp.write_eof()
    return resp


# --- the server ---------------------------------------------------------------------------------


class SharedServer:
    """One server for the session, on 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._seen: Counter[tuple[str, str, str]] = Counter()
        self._custom: dict[tuple[str, str], RouteHandler] = {}
        self._tags = itertools.count(1)
        self.local = testing.LocalServer(
            routes=[web.route("*", "/{route}/{tag}/{name:.+}", self._dispatch)],
            middlewares=[self._track],
        )
        self.local.app.on_response_prepare.append(self._prepared)

    def __enter__(self) -> Self:
        self.local.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.local.stop()

    @property
    def base_url(self) -> str:
        return self.local.base_url

    def view(self) -> Server:
        return Server(self, f"t{next(self._tags)}")

    @web.middleware
    async def _track(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        parts = request.path.split("/", 3)
        route_, tag, name = ([*parts, "", "", ""])[1:4]
        record = Record(
            request.method,
            route_,
            tag,
            name,
            request.path_qs,
            CIMultiDict(request.headers),
            time=asyncio.get_running_loop().time(),
        )
        request[_RECORD] = record
        with self._lock:
            self.records.append(record)
            self._active[tag] += 1
            self._peak[tag] = max(self._peak[tag], self._active[tag])
        try:
            return await handler(request)
        finally:
            with self._lock:
                self._active[tag] -= 1

    async def _prepared(self, request: web.Request, response: web.StreamResponse) -> None:
        # The status is known once the headers go out: before the client can see them, so
        # a test never reads a record the server has not finished.
        record = request.get(_RECORD)
        if record is not None:
            record.status = response.status

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["route"]
        tag = request.match_info["tag"]
        name = request.match_info["name"]
        with self._lock:
            self._seen[kind, tag, name] += 1
            seen = self._seen[kind, tag, name]
        handler = self._custom.get((tag, name)) if kind == "custom" else ROUTES.get(kind)
        if handler is None:
            raise web.HTTPNotFound(text=f"no route {kind!r}\n")
        spec = Spec(tag, name, request.query, seen)
        if "delay" in request.query:
            await asyncio.sleep(float(request.query["delay"]))
        return await handler(request, spec)

    def peak(self, tag: str) -> int:
        with self._lock:
            return self._peak[tag]

    def active(self, tag: str) -> int:
        with self._lock:
            return self._active[tag]


class Server:
    """The shared server as one test sees it: its own tag in every URL."""

    def __init__(self, shared: SharedServer, tag: str) -> None:
        self.shared = shared
        self.tag = tag

    @property
    def base_url(self) -> str:
        return self.shared.base_url

    def route_url(self, kind: str, name: str, size: int = DEFAULT_SIZE, **params: Any) -> str:
        """URL of the file ``name`` served by the route ``kind``; ``params`` go in the query
        (``delay=``, ``rate=``, and whatever the route reads; None values are left out)."""
        query = urlencode({"size": size, **{k: v for k, v in params.items() if v is not None}})
        return f"{self.base_url}/{kind}/{self.tag}/{quote(name)}?{query}"

    def url(self, name: str, size: int = DEFAULT_SIZE, **params: Any) -> str:
        """The well-behaved file: ``rate=``, ``status=``, ``delay=`` as in LocalServer."""
        return self.route_url("gen", name, size, **params)

    def handle(self, name: str, handler: RouteHandler) -> str:
        """Mount ``handler`` for this test only; returns its URL."""
        self.shared._custom[self.tag, name] = handler
        return f"{self.base_url}/custom/{self.tag}/{quote(name)}"

    def publish(self, name: str, body: bytes) -> str:
        """Serve ``body`` (an archive, a manifest…) for this test only, with its length and
        a strong ETag; returns its URL, which ends in ``name``."""
        tag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'

        async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
            return web.Response(body=body, headers={"ETag": tag})

        return self.handle(name, handler)

    def content(self, name: str, size: int = DEFAULT_SIZE) -> bytes:
        return testing.content(f"{self.tag}/{name}", size)

    def hash(self, name: str, size: int = DEFAULT_SIZE, algorithm: str = "sha256") -> str:
        return testing.digest(f"{self.tag}/{name}", size, algorithm)

    def etag(self, name: str, size: int = DEFAULT_SIZE) -> str:
        return testing.etag(f"{self.tag}/{name}", size)

    def requests(self, name: str | None = None) -> list[Record]:
        return [
            r
            for r in list(self.shared.records)
            if r.tag == self.tag and (name is None or r.name == name)
        ]

    def count(self, name: str | None = None) -> int:
        return len(self.requests(name))

    def statuses(self, name: str | None = None) -> list[int | None]:
        return [r.status for r in self.requests(name)]

    @property
    def peak(self) -> int:
        """Most requests of this test the server was answering at one time."""
        return self.shared.peak(self.tag)

    @property
    def active(self) -> int:
        return self.shared.active(self.tag)


# --- running downloads in tests ------------------------------------------------------------

#: Engine options that keep retries quick in tests.
FAST_ENGINE: dict[str, Any] = {"backoff": 0.01, "backoff_max": 0.05}
#: The same for ``fetch`` and friends, with the progress display off.
FAST: dict[str, Any] = {**FAST_ENGINE, "progress": False}


async def run_manager(
    dest: str | os.PathLike[str], items: Items, **options: Any
) -> tuple[Results, list[Event]]:
    """Download ``items`` with a :class:`DownloadManager`; its results and every event."""
    seen: list[Event] = []
    async with DownloadManager(dest, **{**FAST_ENGINE, **options}) as m:
        m.on(None, seen.append)
        await m.add(items)
        return await m.wait(), seen


def of_type(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def names(prefix: str, n: int, suffix: str = ".bin") -> list[str]:
    return [f"{prefix}-{i}{suffix}" for i in range(n)]


__all__ = [
    "DEFAULT_SIZE",
    "FAST",
    "FAST_ENGINE",
    "ROUTES",
    "Record",
    "RouteHandler",
    "Server",
    "SharedServer",
    "Spec",
    "names",
    "of_type",
    "route",
    "run_manager",
    "send",
]
