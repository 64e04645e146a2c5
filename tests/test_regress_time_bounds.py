"""Issue 9, defect family 4: time bounds.

Whatever a server sends, an attempt that makes no progress ends: the low-speed rule covers
the whole response (interim responses, header lines, chunk framing, trailers), not only
body bytes. An interrupt takes effect promptly, even while a large file is being hashed.
A manager that has exited refuses work instead of hanging, and a job never waits for
itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from faults import RawRequest, plant_partial, raw_server, sparse
from server import FAST, FAST_ENGINE, Server

import rheo_nb
from rheo_nb import DownloadManager, File, Status
from rheo_nb.display import Source

GiB = 1 << 30
#: One byte this often keeps a read timeout from ever firing.
DRIP = 0.2
#: Options of the low-speed tests: one attempt, at least 1 KiB/s over any second.
LOW_SPEED: dict[str, Any] = {
    **FAST,
    "low_speed_limit": 1024,
    "low_speed_time": 1,
    "timeout": 5,
    "retries": 0,
}
#: Expected: the rule ends the attempt about 1 s in; a few times that is still prompt.
PROMPT = 4.0
#: Beyond this the attempt is plainly not going to end (the server drips for 30 s).
HANG = 12.0


async def drip(writer: asyncio.StreamWriter, head: bytes, step: bytes) -> bool:
    """Send ``head``, then ``step`` every DRIP seconds for at most 30 s."""
    writer.write(head)
    for _ in range(int(30 / DRIP)):
        await writer.drain()
        await asyncio.sleep(DRIP)
        writer.write(step)
    return False


CHUNKED = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: "d"\r\n\r\n'
DRIPS: dict[str, Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]] = {
    # An interim response, again and again: the final one never comes.
    "endless 100 Continue": lambda r, w: drip(
        w, b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 100 Continue\r\n\r\n"
    ),
    # A header line that grows by one byte at a time.
    "a growing header line": lambda r, w: drip(
        w, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Slow: ", b"a"
    ),
    # A chunk whose extension grows by one byte at a time: no body byte ever comes.
    "a growing chunk extension": lambda r, w: drip(w, CHUNKED + b"a;x=", b"a"),
    # The whole body, then a trailer that grows by one byte at a time.
    "a growing trailer": lambda r, w: drip(w, CHUNKED + b"a\r\n0123456789\r\n0\r\nX-T: ", b"a"),
}


@pytest.mark.parametrize("kind", list(DRIPS))
async def test_the_low_speed_rule_ends_a_response_that_drips_outside_its_body(
    dest: Path, kind: str
) -> None:
    with raw_server(DRIPS[kind]) as srv:
        t0 = time.monotonic()
        try:
            res = await asyncio.wait_for(rheo_nb.fetch([srv.url()], dest, **LOW_SPEED), HANG)
        except TimeoutError:
            pytest.fail(f"{kind}: the attempt was still running after {HANG:g} s")
        elapsed = time.monotonic() - t0
    assert res[0].status is Status.FAILED
    assert elapsed < PROMPT, f"{kind}: ended after {elapsed:.1f} s"
    assert not (dest / "file.bin").exists()


# --- an interrupt while a large file is hashed ---------------------------------------------------


def huge() -> int:
    """A size this machine takes about 4 s to hash (sha256), between 1 and 4 GiB: long
    enough to tell a prompt interrupt from one that waits for the whole file."""
    sample = bytes(32 << 20)
    t0 = time.perf_counter()
    hashlib.sha256(sample).digest()
    rate = len(sample) / (time.perf_counter() - t0)
    return int(min(4 * GiB, max(GiB, 4 * rate))) // (1 << 20) * (1 << 20)


#: An interrupt should stop the hash within one read of it; this leaves room for a slow
#: machine and still tells "prompt" from "after the whole file".
CANCEL_WITHIN = 1.0


async def cancel_latency(task: asyncio.Task[rheo_nb.Results]) -> float:
    t0 = time.monotonic()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=45)
    assert done, "the cancelled download was still running after 45 s"
    return time.monotonic() - t0


async def test_an_interrupt_while_an_existing_file_is_hashed_takes_effect_promptly(
    server: Server, dest: Path
) -> None:
    # A file of the right name but unknown content: its hash must be checked before it is
    # kept or fetched again.
    await asyncio.to_thread(sparse, dest / "huge.bin", await asyncio.to_thread(huge))
    item = File(server.url("huge.bin"), hash=server.hash("huge.bin"))
    task = asyncio.create_task(rheo_nb.fetch([item], dest, **FAST))
    await asyncio.sleep(0.5)
    assert not task.done()
    assert server.count("huge.bin") == 0  # still looking at the file on disk
    latency = await cancel_latency(task)
    assert latency < CANCEL_WITHIN, f"the interrupt took effect after {latency:.1f} s"


async def test_an_interrupt_while_a_resumed_prefix_is_hashed_takes_effect_promptly(
    server: Server, dest: Path
) -> None:
    kept = await asyncio.to_thread(huge)
    size = kept + 4 * (1 << 20)
    url = server.url("prefix.bin", size)
    await asyncio.to_thread(
        plant_partial,
        dest,
        "prefix.bin",
        url,
        b"",
        validator=server.etag("prefix.bin", size),
        total=size,
        length=kept,
    )
    # The hash of the bytes kept must be known before new ones count.
    task = asyncio.create_task(
        rheo_nb.fetch([File(url, hash="sha256:" + "0" * 64)], dest, **FAST, chunk_size=4096)
    )
    await asyncio.sleep(1.0)
    assert not task.done()
    # The kept bytes are being hashed, before or after the rest was asked for.
    asked = [r.headers.get("Range") for r in server.requests("prefix.bin")]
    assert asked in ([], [f"bytes={kept}-"]), asked
    latency = await cancel_latency(task)
    assert latency < CANCEL_WITHIN, f"the interrupt took effect after {latency:.1f} s"


# --- a manager that has exited -------------------------------------------------------------------


async def exited_manager(server: Server, dest: Path) -> DownloadManager:
    async with DownloadManager(dest, **FAST_ENGINE) as m:
        await m.add([server.url("before.bin")])
        await m.wait()
    return m


async def test_add_after_the_manager_has_exited_raises_runtime_error(
    server: Server, dest: Path
) -> None:
    m = await exited_manager(server, dest)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(m.add([server.url("after.bin")]), 5)
    assert server.count("after.bin") == 0


async def test_wait_after_the_manager_has_exited_never_hangs(server: Server, dest: Path) -> None:
    m = await exited_manager(server, dest)
    try:
        await asyncio.wait_for(m.add([server.url("after.bin")]), 5)
    except RuntimeError:
        pass  # refused: what it should do
    try:
        await asyncio.wait_for(m.wait(), 5)
    except RuntimeError:
        pass  # refused as well: fine, it did not hang
    except TimeoutError:
        pytest.fail("wait() on an exited manager was still waiting after 5 s")


# --- a job that waits for itself -----------------------------------------------------------------


def own_result(job: dict[str, rheo_nb.Job], caught: list[BaseException | None]) -> None:
    """``job.result()`` from the job's own thread; what it raised goes in ``caught``.

    A timeout keeps a deadlock from lasting forever: it then shows as TimeoutError.
    """
    try:
        job["job"].result(timeout=5)
    except BaseException as exc:
        caught.append(exc)
    else:
        caught.append(None)


def assert_refused(caught: list[BaseException | None]) -> None:
    assert caught, "the handler never ran"
    assert isinstance(caught[0], RuntimeError), (
        f"job.result() from inside the job: {caught[0]!r} (the job waited for itself)"
    )


@pytest.mark.allow_blocking  # waiting for the job from its own thread is what is tried
def test_job_result_from_the_jobs_own_event_handler_raises_runtime_error(
    server: Server, dest: Path
) -> None:
    box: dict[str, rheo_nb.Job] = {}
    caught: list[BaseException | None] = []
    ran = threading.Event()

    def on_completed(event: rheo_nb.Event) -> None:
        own_result(box, caught)
        ran.set()

    job = rheo_nb.start([server.url("j.bin", rate=200_000)], dest, **FAST)
    box["job"] = job
    job.manager.on("completed", on_completed)
    assert ran.wait(20), "the completed handler did not run"
    assert job.result(timeout=20)[0].status is Status.COMPLETED
    assert_refused(caught)


class ClosingDisplay:
    """A display that asks for the job's result when it closes (on the job's thread)."""

    def __init__(self, box: dict[str, rheo_nb.Job], caught: list[BaseException | None]) -> None:
        self.box, self.caught = box, caught

    def open(self, manager: Source) -> None:
        pass

    def close(self, results: rheo_nb.Results, *, interrupted: bool) -> None:
        own_result(self.box, self.caught)


@pytest.mark.allow_blocking  # waiting for the job from its own thread is what is tried
def test_job_result_from_the_jobs_own_display_raises_runtime_error(
    server: Server, dest: Path
) -> None:
    box: dict[str, rheo_nb.Job] = {}
    caught: list[BaseException | None] = []
    job = rheo_nb.start(
        [server.url("d.bin", rate=200_000)],
        dest,
        **{**FAST, "progress": ClosingDisplay(box, caught)},
    )
    box["job"] = job
    assert job.result(timeout=20)[0].status is Status.COMPLETED
    assert_refused(caught)
