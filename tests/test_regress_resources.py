"""Issue 9, defect family 6: resources and odd servers.

A low limit on open files, a legal but non-ASCII validator, and a filesystem without
working ``flock`` are facts of some machines and servers, not reasons for a download to
fail or to leave files behind.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from faults import RawRequest, RawServer, head, leftovers, raw_server
from server import FAST, Server

import rheo_nb
from rheo_nb import File, Status, testing

MiB = 1 << 20

#: A download in another process: into argv[1], with the options of the JSON object in
#: argv[2], at most argv[3] open files (0: as inherited); the URLs come on stdin as a JSON
#: list, and every outcome goes to the file argv[4] as JSON.
CHILD = """
import json, resource, sys
import rheo_nb

nofile = int(sys.argv[3])
if nofile:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
urls = json.load(sys.stdin)
options = {"progress": False, **json.loads(sys.argv[2])}
res = rheo_nb.fetch_sync(urls, sys.argv[1], **options)
with open(sys.argv[4], "w") as out:
    json.dump([[o.status.value, o.error] for o in res], out)
"""


def child(
    urls: list[str],
    dest: Path,
    options: dict[str, Any],
    *,
    nofile: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 50,
) -> list[tuple[str, str | None]]:
    """Download ``urls`` in another process; each outcome's status and error."""
    report = dest.with_name(dest.name + "-outcomes.json")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(dest), json.dumps(options), str(nofile), str(report)],
        input=json.dumps(urls),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [(status, error) for status, error in json.loads(report.read_text())]


# --- a low limit on open files --------------------------------------------------------------------


def test_a_low_open_file_limit_with_high_concurrency_still_downloads_every_file(
    server: Server, dest: Path
) -> None:
    # 256 is macOS's default; 200 downloads at once need more descriptors than that.
    names = [f"many-{i}.bin" for i in range(1000)]
    urls = [server.url(name, 4096) for name in names]
    outcomes = child(urls, dest, {"concurrency": 200}, nofile=256)
    failed = [error or status for status, error in outcomes if status != "completed"]
    # The cause without the URL or the paths it names, to count alike failures as one.
    causes = Counter(re.sub(r"^\S+: |: /[^)]*", "", e) for e in failed)
    assert failed == [], f"{len(failed)} of {len(urls)} failed: {causes.most_common(3)}"
    for name in names[::97]:
        assert (dest / name).read_bytes() == server.content(name, 4096)


# --- a non-ASCII (obs-text) strong ETag -----------------------------------------------------------

OBS_SIZE = 16 * MiB + 3 * testing.BLOCK + 17  # large enough to be split
OBS_KEY = "obs-text"


async def obs_text_etag(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """A file that takes ranges, whose strong ETag holds a latin-1 byte (legal obs-text);
    an ``If-Range`` that is not that ETag byte for byte gets the whole file."""
    etag = '"caf\xe9"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "x/y"}
    rng = testing.parse_range(request.headers.get("range"), OBS_SIZE)
    start, end, status = 0, OBS_SIZE, 200
    if rng is not None and rng[1] > 0 and request.headers.get("if-range") in (None, etag):
        start, end, status = rng[0], rng[1], 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{OBS_SIZE}"
    headers["Content-Length"] = str(end - start)
    writer.write(head(status, headers))
    for pos in range(start, end, testing.BLOCK):
        writer.write(testing.content(OBS_KEY, OBS_SIZE, pos, min(end, pos + testing.BLOCK)))
        await writer.drain()
    return True


@pytest.mark.parametrize("writer", ["C extensions", "pure Python"])
def test_a_non_ascii_etag_is_treated_as_no_validator(dest: Path, writer: str) -> None:
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if writer == "pure Python" else {}
    srv: RawServer
    with raw_server(obs_text_etag) as srv:
        outcomes = child([srv.url()], dest, {"backoff": 0.01, "backoff_max": 0.05}, env=env)
    assert outcomes == [("completed", None)]
    assert (dest / "file.bin").read_bytes() == testing.content(OBS_KEY, OBS_SIZE)
    asked = [(r.headers.get("range"), r.headers.get("if-range")) for r in srv.requests]
    assert asked == [(None, None)], f"the ETag was used as a validator: {asked}"


# --- a filesystem without flock -------------------------------------------------------------------


async def test_where_flock_fails_with_enolck_nothing_but_the_files_is_left(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    # Network mounts without a lock manager answer every flock() so; only that syscall
    # wrapper is replaced.
    monkeypatch.setattr(fcntl, "flock", no_locks)
    names = ["a.bin", "b.bin", "large.bin"]
    items: list[str | File] = [
        File(server.url("a.bin")),
        server.url("b.bin"),
        server.url("large.bin", 2 * MiB),
    ]
    res = await rheo_nb.fetch(items, dest, **FAST)
    assert [o.status for o in res] == [Status.COMPLETED] * 3, [o.error for o in res]
    assert leftovers(dest) == sorted(names)
