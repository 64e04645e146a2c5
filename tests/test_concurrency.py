"""One writer per file: duplicates in one call, two names for one path, and two tasks,
threads or processes downloading the same file into the same folder at once."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from faults import child, leftovers, part_size, until, wait_for, working_files
from server import FAST, Server, run_manager

import rheo_nb
from rheo_nb import File, Status, files


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


# --- within one call ------------------------------------------------------------------------------


async def test_the_same_url_twice_in_one_call_is_one_download(server: Server, dest: Path) -> None:
    url = server.url("twice.bin")
    res, _ = await run_manager(dest, [url, url, File(url)])
    assert [o.status for o in res] == [Status.COMPLETED]
    assert server.count("twice.bin") == 1
    assert (dest / "twice.bin").read_bytes() == server.content("twice.bin")


async def test_two_urls_for_one_path_fail_the_second_with_a_way_out(
    server: Server, dest: Path
) -> None:
    first = server.url("same.bin")
    second = server.route_url("noranges", "same.bin")  # another URL, the same file name
    res = await fetch([first, second, File(second, "other.bin")], dest)
    one, two, three = res
    assert one.status is Status.COMPLETED
    assert two.status is Status.FAILED
    assert two.error is not None
    assert "same.bin is already the path of" in two.error
    assert "File(url, path=...)" in two.error
    assert three.status is Status.COMPLETED
    assert server.count("same.bin") == 2  # the first and the third
    assert (dest / "same.bin").read_bytes() == server.content("same.bin")
    assert leftovers(dest) == ["other.bin", "same.bin"]


# --- two calls at once ----------------------------------------------------------------------------


async def test_two_tasks_on_one_file_make_one_writer_and_one_request(
    server: Server, dest: Path
) -> None:
    url = server.url("tasks.bin", 400_000, rate=800_000)
    results = await asyncio.wait_for(
        asyncio.gather(*(fetch([url], dest, chunk_size=4096) for _ in range(4))), 30
    )
    statuses = sorted(r[0].status for r in results)
    assert statuses == [Status.COMPLETED] + [Status.SKIPPED] * 3
    assert server.count("tasks.bin") == 1
    assert (dest / "tasks.bin").read_bytes() == server.content("tasks.bin", 400_000)
    assert leftovers(dest) == ["tasks.bin"]


@pytest.mark.allow_blocking
def test_two_threads_on_one_file_make_one_writer(server: Server, dest: Path) -> None:
    url = server.url("threads.bin", 400_000, rate=800_000)
    out: list[rheo_nb.Results] = []

    def run() -> None:
        out.append(rheo_nb.fetch_sync([url], dest, **FAST, chunk_size=4096))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r[0].status for r in out) == [Status.COMPLETED, Status.SKIPPED]
    assert server.count("threads.bin") == 1
    assert (dest / "threads.bin").read_bytes() == server.content("threads.bin", 400_000)
    assert leftovers(dest) == ["threads.bin"]


@pytest.mark.allow_blocking
def test_two_processes_on_one_file_make_one_writer(server: Server, dest: Path) -> None:
    size = 1_000_000
    url = server.url("procs.bin", size, rate=1_000_000)
    procs = [child(url, dest) for _ in range(2)]
    outputs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    statuses = sorted(out.split()[0] for out, _ in outputs)
    assert statuses == ["completed", "skipped"]
    assert server.count("procs.bin") == 1
    assert (dest / "procs.bin").read_bytes() == server.content("procs.bin", size)
    assert leftovers(dest) == ["procs.bin"]


async def test_without_flock_each_writer_uses_a_private_temp_name(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filesystem without flock (some network mounts answer ENOLCK): correctness must not
    # need the lock. Only the system call is faked; rheo_nb's own lock code runs as is.
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    url = server.url("nolock.bin", 300_000, rate=1_000_000)
    seen: set[str] = set()
    task = asyncio.gather(*(fetch([url], dest, chunk_size=4096) for _ in range(3)))

    def both_writing() -> bool:
        seen.update(p.name for p in working_files(dest) if p.suffix == ".part")
        return len(seen) >= 2

    await until(both_writing)
    results = await asyncio.wait_for(task, 30)
    assert all(r[0].status is Status.COMPLETED for r in results)
    assert (dest / "nolock.bin").read_bytes() == server.content("nolock.bin", 300_000)
    # No lock file, no private part file, no working folder is left behind.
    assert leftovers(dest) == ["nolock.bin"]


async def test_a_second_call_resumes_what_a_cancelled_first_call_left(
    server: Server, dest: Path
) -> None:
    size = 400_000
    url = server.url("handover.bin", size, rate=600_000)
    final = dest / "handover.bin"
    first = asyncio.create_task(fetch([url], dest, chunk_size=4096))
    await until(lambda: part_size(final) > 50_000)
    second = asyncio.create_task(fetch([url], dest, chunk_size=4096))
    await asyncio.sleep(0.1)
    assert not second.done()  # waiting for the writer lock
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    res = await asyncio.wait_for(second, 30)
    assert res[0].status is Status.COMPLETED
    assert server.requests("handover.bin")[-1].headers["Range"] != "bytes=0-"
    assert final.read_bytes() == server.content("handover.bin", size)
    assert leftovers(dest) == ["handover.bin"]


# --- a writer that died ---------------------------------------------------------------------------


@pytest.mark.allow_blocking
def test_a_stale_lock_from_a_killed_process_does_not_hold_up_the_next_run(
    server: Server, dest: Path
) -> None:
    size = 1_000_000
    url = server.route_url("slowstart", "stale.bin", size, rate=300_000)
    final = dest / "stale.bin"
    proc = child(url, dest)
    try:
        wait_for(lambda: part_size(final) > 20_000, 20)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    lock = files.working_path(final, ".lock")
    assert lock.exists()  # left behind, but nobody holds it any more
    res = rheo_nb.fetch_sync([url], dest, **FAST, timeout=10)
    assert res[0].status is Status.COMPLETED
    assert "Range" in server.requests("stale.bin")[-1].headers
    assert final.read_bytes() == server.content("stale.bin", size)
    assert not lock.exists()
    assert leftovers(dest) == ["stale.bin"]
