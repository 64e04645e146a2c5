"""Hostile input that reaches past the checks into the core: URLs whose host is no valid
DNS name, and retry counts a long run can reach.

Bad input is a failed item with a message that names it and its cause, never an
"internal error" (the status that means a bug in rheo_nb), and never a traceback on a
command-line user's terminal. Every host below fails locally, before any lookup, or
ends in ``.invalid``, which no resolver answers (RFC 6761).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from server import Server, Spec, send

import rheo_nb
from rheo_nb import File, Status

HOSTS = {
    "empty-label": "http://a..b.invalid/x",
    "label-over-63": "http://" + "a" * 64 + ".invalid/x",
    "bad-punycode": "http://xn--zz.invalid/x",
    "zero-width-space": "http://a\u200bb.invalid/x",
    "with-a-login": "http://alice:s3cret@a..b.invalid/x",
}


@pytest.mark.parametrize("url", list(HOSTS.values()), ids=list(HOSTS))
async def test_a_url_whose_host_is_no_dns_name_fails_as_bad_input(dest: Path, url: str) -> None:
    res = await asyncio.wait_for(rheo_nb.fetch([File(url)], dest, retries=0, progress=False), 10)
    error = res[0].error or ""
    assert res[0].status is Status.FAILED
    assert "internal error" not in error, error
    assert "s3cret" not in error + repr(res)


def test_the_cli_shows_no_traceback_for_a_host_that_is_no_dns_name(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("rheo-nb")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "rheo_nb"]
    env = {**os.environ, "NO_PROXY": "*", "no_proxy": "*"}
    proc = subprocess.run(
        [*cmd, "get", "-q", "-o", str(tmp_path / "d"), HOSTS["empty-label"], HOSTS["bad-punycode"]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "internal error" not in proc.stderr, proc.stderr[-3000:]


async def test_a_malformed_url_is_named_in_its_error(dest: Path) -> None:
    # "malformed URL '<malformed URL>'": in a list of thousands, which one?
    res = await rheo_nb.fetch(["http://[::1/data.csv"], dest, progress=False)
    assert res[0].status is Status.FAILED
    assert "[::1/data.csv" in (res[0].error or ""), res[0].error


async def test_retries_past_a_thousand_never_end_in_an_internal_error(
    server: Server, dest: Path
) -> None:
    # retries=10**6 is how one asks to keep trying overnight; backoff=0 only makes the
    # test quick. The 1025th wait overflows a float before it is capped.
    answered = {"n": 0}

    async def busy_then_ok(request: web.Request, spec: Spec) -> web.StreamResponse:
        answered["n"] += 1
        if answered["n"] <= 1030:
            return web.Response(status=500, text="busy\n")
        return await send(request, spec)

    url = server.handle("busy.bin", busy_then_ok)
    res = await asyncio.wait_for(
        rheo_nb.fetch([url], dest, retries=10**6, backoff=0, backoff_max=0, progress=False), 50
    )
    assert res[0].status is Status.COMPLETED, f"{res[0].error} (request {answered['n']})"
