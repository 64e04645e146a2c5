"""Seams of the segmented path with servers that limit connections per client.

Extra connections are an optimisation: a server that refuses one (nginx's
``limit_conn`` answers it 503, an API's limiter 429) says "no split", as a server that
answers a range with the whole file does. The file then goes on, on the connection the
server did accept; it never fails for it, and no retry of the file is spent on it.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiohttp import web
from faults import NGINX, closed_port, stream
from server import FAST_ENGINE, Server, Spec, of_type, requested_range

import rheo_nb
from rheo_nb import DownloadManager, Status, testing
from rheo_nb.events import Retrying

MiB = 1 << 20
#: Large enough to be split with the default options (two ranges of at least 8 MiB).
BIG = 16 * MiB + 3 * testing.BLOCK + 17


@contextmanager
def nginx_one_connection_per_client(root: Path, state: Path, rate: int) -> Iterator[int]:
    """Debian's nginx serving ``root``, each client allowed one connection at a time
    (``limit_conn``: a second one is answered 503) at ``rate`` bytes/s; yields its port."""
    assert NGINX is not None
    port = closed_port()
    temp = "".join(
        f"{kind}_temp_path {state}/{kind}; "
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = state / "nginx.conf"
    conf.write_text(
        "daemon off; master_process off; "
        f"pid {state}/nginx.pid; error_log {state}/error.log; "
        "events { worker_connections 64; } "
        f"http {{ access_log off; {temp}"
        "limit_conn_zone $binary_remote_addr zone=client:1m; "
        f"server {{ listen 127.0.0.1:{port}; root {root}; "
        f"location / {{ limit_conn client 1; limit_rate {rate}; }} }} }}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(state), "-e", str(state / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.skipif(NGINX is None, reason="needs Debian's nginx (tests/run installs it as root)")
@pytest.mark.allow_blocking
async def test_a_large_file_from_nginx_with_one_connection_per_client_completes(
    tmp_path: Path,
) -> None:
    # The first connection streams the whole file at 6 MiB/s; the extra connection the
    # split tries is answered 503 by limit_conn. With retries=0 the file fails at once,
    # after 32 KiB, although the one connection nginx allowed was delivering it.
    root, state = tmp_path / "www", tmp_path / "nginx"
    root.mkdir()
    state.mkdir()
    (root / "big.bin").write_bytes(testing.content("limited", BIG))
    with nginx_one_connection_per_client(root, state, 6 * MiB) as port:
        res = await asyncio.wait_for(
            rheo_nb.fetch(
                [f"http://127.0.0.1:{port}/big.bin"], tmp_path / "dest", retries=0, progress=False
            ),
            30,
        )
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (tmp_path / "dest" / "big.bin").read_bytes() == testing.content("limited", BIG)


def one_connection_at_a_time(size: int, etag: str, rate: float) -> tuple[object, list[str]]:
    """A handler that serves ``size`` bytes with ranges to one connection at a time and
    answers any other ``503`` with ``Retry-After: 0``; and the statuses it answered."""
    busy = {"n": 0}
    answered: list[str] = []

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        rng = request.headers.get("Range")
        if busy["n"]:
            answered.append(f"503 {rng}")
            return web.Response(
                status=503, text="one connection per client\n", headers={"Retry-After": "0"}
            )
        busy["n"] += 1
        try:
            headers = {"ETag": etag, "Accept-Ranges": "bytes"}
            span = requested_range(request, size)
            if span is None:
                answered.append("200")
                return await stream(request, spec.key, size, headers=headers, rate=rate)
            start, end = span
            answered.append(f"206 {rng}")
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            return await stream(
                request,
                spec.key,
                size,
                start=start,
                end=end,
                status=206,
                headers=headers,
                rate=rate,
            )
        finally:
            busy["n"] -= 1

    return handler, answered


async def test_a_refused_extra_connection_never_costs_the_file_its_retries(
    server: Server, dest: Path
) -> None:
    # The server names no wait (Retry-After: 0), so no backoff slows the probing down:
    # each refusal of the extra connection is a failure of the whole file, and each
    # retry of the file probes again, until the file's retries are spent.
    handler, answered = one_connection_at_a_time(BIG, '"one"', 8 * MiB)
    url = server.handle("one.bin", handler)  # type: ignore[arg-type]
    seen: list[rheo_nb.Event] = []
    async with DownloadManager(dest, **FAST_ENGINE) as m:
        m.on("retrying", seen.append)
        await m.add([url])
        res = await asyncio.wait_for(m.wait(), 30)
    assert res[0].status is Status.COMPLETED, f"{res[0].error}; the server answered {answered}"
    assert (dest / "one.bin").read_bytes() == server.content("one.bin", BIG)
    whole = [e.error for e in of_type(seen, Retrying) if not e.error.startswith("range ")]
    assert not whole, f"the file was retried for a refused extra connection: {whole}"
