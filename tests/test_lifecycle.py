"""Interrupts and crashes: a cancelled task, a kernel interrupt during ``fetch_sync``,
``job.cancel()`` and a killed process all stop promptly, close their connections, keep a
resumable partial, report nothing as complete that is not, and the next run resumes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from faults import (
    child,
    leftovers,
    part_size,
    read_partial,
    recording_ranges,
    until,
    wait_for,
)
from server import FAST, FAST_ENGINE, Server, run_manager

import rheo_nb
from rheo_nb import Status, files, partfile
from rheo_nb.events import Cancelled, Completed
from rheo_nb.segments import MIN_SEGMENT

SIZE = 2_000_000


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


def slow_url(server: Server, name: str, size: int = SIZE) -> str:
    """Slow from the start (the run to interrupt), fast to resume (the run after)."""
    return server.route_url("slowstart", name, size, rate=400_000)


def assert_resumable(final: Path, url: str) -> int:
    """The partial an interrupt leaves: bytes on disk, a sidecar to resume, no final file."""
    assert not final.exists()
    partial = read_partial(final)
    assert partial is not None
    assert partial.size > 0
    assert partial.record is not None
    assert partial.record.url == partfile.url_key(url)
    assert partial.record.validator is not None
    assert not files.working_path(final, ".lock").exists()
    return partial.size


def assert_resumed(server: Server, name: str, final: Path, size: int = SIZE) -> None:
    last = server.requests(name)[-1]
    assert last.headers["Range"] != "bytes=0-"
    assert last.status == 206
    assert final.read_bytes() == server.content(name, size)
    assert leftovers(final.parent) == [final.name]


# --- cancelling the task that awaits fetch --------------------------------------------------------


async def test_cancelling_fetch_stops_at_once_keeps_the_partial_and_re_raises(
    server: Server, dest: Path
) -> None:
    url = slow_url(server, "task.bin")
    final = dest / "task.bin"
    task = asyncio.create_task(fetch([url], dest, chunk_size=4096))
    await until(lambda: part_size(final) > 20_000)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 2.0
    await until(lambda: server.active == 0, 5)  # the connection was closed, not left reading
    await asyncio.to_thread(assert_resumable, final, url)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert_resumed(server, "task.bin", final)


async def test_cancelling_one_download_reports_it_cancelled_and_not_complete(
    server: Server, dest: Path
) -> None:
    url = slow_url(server, "one.bin")
    final = dest / "one.bin"
    async with rheo_nb.DownloadManager(dest, **FAST_ENGINE, chunk_size=4096) as m:
        seen: list[rheo_nb.Event] = []
        m.on(None, seen.append)
        slow, quick = await m.add([url, server.url("quick.bin")])
        await until(lambda: part_size(final) > 20_000)
        assert await m.cancel(slow)
        res = await m.wait()
    assert [o.status for o in res] == [Status.CANCELLED, Status.COMPLETED]
    assert [e.download_id for e in seen if isinstance(e, Completed)] == [quick]
    assert [e.download_id for e in seen if isinstance(e, Cancelled)] == [slow]
    await asyncio.to_thread(assert_resumable, final, url)


# --- a kernel interrupt while fetch_sync blocks a running loop ------------------------------------


@pytest.mark.allow_blocking
def test_keyboard_interrupt_during_fetch_sync_in_a_running_loop_stops_and_re_raises(
    server: Server, dest: Path
) -> None:
    assert threading.current_thread() is threading.main_thread()
    url = slow_url(server, "kbi.bin")
    final = dest / "kbi.bin"
    sent: list[float] = []

    def interrupt() -> None:
        wait_for(lambda: part_size(final) > 20_000, 20)
        sent.append(time.monotonic())
        # What the kernel's interrupt button does: SIGINT to the main thread.
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    async def cell() -> rheo_nb.Results:
        return rheo_nb.fetch_sync([url], dest, **FAST, chunk_size=4096)

    # A loop like a kernel's: running in the main thread, no SIGINT handler of its own.
    loop = asyncio.new_event_loop()
    threading.Thread(target=interrupt, daemon=True).start()
    task = loop.create_task(cell())
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
        assert time.monotonic() - sent[0] < 1.5
    finally:
        if task.done() and not task.cancelled():
            task.exception()
        loop.close()
    wait_for(lambda: server.active == 0, 5)
    assert_resumable(final, url)
    res = rheo_nb.fetch_sync([url], dest, **FAST)
    assert res[0].status is Status.COMPLETED
    assert_resumed(server, "kbi.bin", final)


@pytest.mark.allow_blocking
def test_ctrl_c_during_fetch_sync_in_a_script_stops_and_re_raises(
    server: Server, dest: Path
) -> None:
    assert threading.current_thread() is threading.main_thread()
    url = slow_url(server, "script.bin")
    final = dest / "script.bin"
    sent: list[float] = []

    def interrupt() -> None:
        wait_for(lambda: part_size(final) > 20_000, 20)
        sent.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        rheo_nb.fetch_sync([url], dest, **FAST, chunk_size=4096)
    assert time.monotonic() - sent[0] < 1.5
    wait_for(lambda: server.active == 0, 5)
    assert_resumable(final, url)
    res = rheo_nb.fetch_sync([url], dest, **FAST)
    assert res[0].status is Status.COMPLETED
    assert_resumed(server, "script.bin", final)


# --- job.cancel() ---------------------------------------------------------------------------------


@pytest.mark.allow_blocking
def test_job_cancel_stops_promptly_and_keeps_what_finished(server: Server, dest: Path) -> None:
    url = slow_url(server, "job.bin")
    final = dest / "job.bin"
    job = rheo_nb.start([server.url("first.bin"), url], dest, **FAST, chunk_size=4096)
    wait_for(lambda: part_size(final) > 20_000, 20)
    t0 = time.monotonic()
    job.cancel()
    with pytest.raises((asyncio.CancelledError, concurrent.futures.CancelledError)):
        job.result(timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert job.done()
    so_far = {o.path.name: o.status for o in job.results_so_far}
    assert so_far == {"first.bin": Status.COMPLETED, "job.bin": Status.CANCELLED}
    wait_for(lambda: server.active == 0, 5)
    assert_resumable(final, url)
    res = rheo_nb.fetch_sync([url], dest, **FAST)
    assert res[0].status is Status.COMPLETED
    assert (dest / "first.bin").read_bytes() == server.content("first.bin")
    last = server.requests("job.bin")[-1]
    assert last.status == 206
    assert final.read_bytes() == server.content("job.bin", SIZE)


# --- a process killed mid-download ----------------------------------------------------------------


@pytest.mark.allow_blocking
def test_a_killed_process_leaves_a_partial_the_next_run_resumes(server: Server, dest: Path) -> None:
    url = slow_url(server, "killed.bin")
    final = dest / "killed.bin"
    proc = child(url, dest)
    try:
        wait_for(lambda: part_size(final) > 50_000, 20)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists()
    kept = read_partial(final)
    assert kept is not None
    assert kept.size > 0
    res, _ = asyncio.run(run_manager(dest, [url]))
    assert res[0].status is Status.COMPLETED
    assert server.requests("killed.bin")[-1].headers["Range"] == f"bytes={kept.size}-"
    assert final.read_bytes() == server.content("killed.bin", SIZE)
    assert leftovers(dest) == ["killed.bin"]


@pytest.mark.allow_blocking
def test_a_killed_segmented_download_is_never_taken_for_complete(
    server: Server, dest: Path
) -> None:
    size = 2 * MIN_SEGMENT + 12345
    rate: dict[str, float | None] = {"rate": 3_000_000}
    asked: list[str | None] = []

    url = server.handle("seg.bin", recording_ranges(size, '"k"', rate, asked))
    final = dest / "seg.bin"
    meta = files.working_path(final, ".json")
    proc = child(url, dest, chunk_size=1 << 20)
    try:
        wait_for(lambda: len(asked) > 1 and meta.exists(), 20)
        time.sleep(1.2)  # past the first save of every range's progress
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    # The part file was preallocated at full size: only the sidecar says what is missing.
    assert part_size(final) == size
    assert not final.exists()
    kept = read_partial(final)
    assert kept is not None
    assert kept.record is not None
    assert kept.record.segments
    missing = sum(end - start - done for start, end, done in kept.record.segments)
    assert 0 < missing < size
    asked.clear()
    rate["rate"] = None
    res = rheo_nb.fetch_sync([url], dest, **FAST)
    assert res[0].status is Status.COMPLETED
    assert all(h is not None for h in asked)
    assert final.read_bytes() == server.content("seg.bin", size)
    assert leftovers(dest) == ["seg.bin"]


# --- a cancellation that lands while bytes are being written ---------------------------------


@pytest.mark.parametrize("segmented", [False, True], ids=["one-stream", "segmented"])
async def test_a_cancel_during_a_write_never_writes_those_bytes_twice(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch, segmented: bool
) -> None:
    # The write runs in a thread and is always let finish (the descriptor must not be
    # closed under it); the bytes it wrote must then count as written, not be written
    # again by the cleanup that keeps the partial.
    size = 2 * MIN_SEGMENT + 500_000 if segmented else SIZE
    name = "seg-cancel.bin" if segmented else "cancel.bin"
    url = slow_url(server, name, size)
    final = dest / name
    real_write = partfile.write_all
    writing = threading.Event()
    release = threading.Event()

    def slow_write(fd: int, chunks: list[bytes], *args: Any, **kwargs: Any) -> int:
        n = real_write(fd, chunks, *args, **kwargs)
        if part_size(final) > 20_000 or segmented:
            writing.set()
            release.wait(5)
        return n

    monkeypatch.setattr(partfile, "write_all", slow_write)
    task = asyncio.create_task(fetch([url], dest, chunk_size=4096, segments=4 if segmented else 1))
    await asyncio.to_thread(writing.wait, 20)
    task.cancel()  # lands while a write is in the thread
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.setattr(partfile, "write_all", real_write)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED
    assert final.read_bytes() == server.content(name, size)
