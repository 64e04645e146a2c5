"""The engine: queue, workers, events, cancellation and its public API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from faults import closed_port
from server import DEFAULT_SIZE, FAST_ENGINE, Server, names, of_type, run_manager

from rheo_nb import (
    Cancelled,
    Completed,
    DownloadManager,
    Event,
    EventType,
    Failed,
    File,
    OptionError,
    Options,
    Progress,
    Queued,
    Retrying,
    Skipped,
    Started,
    Status,
    Validating,
    transfer,
)
from rheo_nb.files import working_path
from rheo_nb.items import BadRow
from rheo_nb.manager import ADD_BATCH, PULL_BATCH

SIZE = DEFAULT_SIZE


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def manager(dest: Path, **options: Any) -> DownloadManager:
    return DownloadManager(dest, **{**FAST_ENGINE, **options})


# --- concurrency and order -------------------------------------------------------------------


async def test_concurrency_limit_is_honoured(server: Server, dest: Path) -> None:
    urls = [server.url(n, delay=0.3) for n in names("c", 6)]
    res, _ = await run_manager(dest, urls, concurrency=2)
    assert [o.status for o in res] == [Status.COMPLETED] * 6
    assert server.peak == 2


async def test_concurrency_limit_holds_with_an_unlimited_session(
    server: Server, dest: Path
) -> None:
    # The connection pool of an injected session sets no limit: the workers must.
    urls = [server.url(n, delay=0.2) for n in names("u", 8)]
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        res, _ = await run_manager(dest, urls, concurrency=3, client=session)
    assert len(res.ok) == 8
    assert server.peak == 3


async def test_downloads_run_in_parallel(server: Server, dest: Path) -> None:
    urls = [server.url(n, delay=0.3) for n in names("p", 4)]
    await run_manager(dest, urls, concurrency=4)
    assert server.peak == 4


async def test_higher_priority_first_and_fifo_within_equal(server: Server, dest: Path) -> None:
    priorities = {"a": 0, "b": 5, "c": 1, "d": 5, "e": 0, "f": -2, "g": 1}
    items = [File(server.url(f"{n}.bin"), priority=p) for n, p in priorities.items()]
    res, events = await run_manager(dest, items, concurrency=1)
    assert len(res.ok) == 7
    assert [r.name for r in server.requests()] == [
        "b.bin",
        "d.bin",
        "c.bin",
        "g.bin",
        "a.bin",
        "e.bin",
        "f.bin",
    ]
    # Results keep the order the items were given in, whatever order they ran in.
    assert [o.path.name for o in res] == [f"{n}.bin" for n in priorities]
    assert [e.priority for e in of_type(events, Queued)] == list(priorities.values())


# --- dedupe ---------------------------------------------------------------------------------------


async def test_the_same_url_and_path_queued_twice_is_downloaded_once(
    server: Server, dest: Path
) -> None:
    url = server.url("dup.bin", rate=500_000)
    async with manager(dest) as m:
        first = await m.add([url, File(url, "dup.bin")])
        second = await m.add([url])
        res = await m.wait()
    assert first[0] == first[1] == second[0]
    assert len(res) == 1
    assert res[0].status is Status.COMPLETED
    assert server.count("dup.bin") == 1


async def test_the_same_url_to_two_paths_is_two_downloads(server: Server, dest: Path) -> None:
    url = server.url("two.bin")
    res, _ = await run_manager(dest, [File(url, "one.bin"), File(url, "two.bin")])
    assert [o.path.name for o in res] == ["one.bin", "two.bin"]
    assert len(res.ok) == 2
    assert server.count("two.bin") == 2


async def test_two_urls_for_one_path_fail_the_second(server: Server, dest: Path) -> None:
    a, b = server.url("a.bin"), server.url("b.bin")
    res, _ = await run_manager(dest, [File(a, "same.bin"), File(b, "same.bin")])
    assert [o.status for o in res] == [Status.COMPLETED, Status.FAILED]
    assert res[1].error is not None
    assert "same.bin is already the path of" in res[1].error
    assert server.count("b.bin") == 0
    assert (dest / "same.bin").read_bytes() == server.content("a.bin")


# --- events ------------------------------------------------------------------------------------


def kinds(events: list[Event]) -> list[str]:
    """Event types, with runs of progress events folded into one."""
    out: list[str] = []
    for e in events:
        if not (e.type == "progress" and out and out[-1] == "progress"):
            out.append(str(e.type))
    return out


async def test_events_of_a_verified_download(server: Server, dest: Path) -> None:
    url = server.url("ev.bin", SIZE, rate=1_000_000)
    item = File(url, hash=server.hash("ev.bin"), priority=3)
    res, events = await run_manager(dest, [item], progress_interval=0.01, chunk_size=4096)
    did = res[0].download_id
    assert kinds(events) == ["queued", "started", "progress", "validating", "completed"]
    assert {e.download_id for e in events} == {did}
    assert {e.url for e in events} == {url}
    queued, started = events[0], events[1]
    assert queued == Queued(did, url, dest / "ev.bin", 3)
    assert started == Started(did, url, dest / "ev.bin", SIZE, 0)
    assert isinstance(events[-2], Validating)
    completed = events[-1]
    assert isinstance(completed, Completed)
    assert (completed.path, completed.bytes) == (dest / "ev.bin", SIZE)
    assert completed.elapsed > 0
    assert all(e.total == SIZE for e in of_type(events, Progress))


async def test_events_of_a_retried_download(server: Server, dest: Path) -> None:
    url = server.url("retry.bin", fail=1)
    res, events = await run_manager(dest, [url], progress_interval=60)
    assert res[0].status is Status.COMPLETED
    assert kinds(events) == ["queued", "retrying", "started", "completed"]
    retrying = events[1]
    assert isinstance(retrying, Retrying)
    assert retrying.attempt == 1
    assert retrying.error.startswith("HTTP 503")
    assert 0 <= retrying.delay <= FAST_ENGINE["backoff_max"]
    assert retrying.url == url


async def test_events_of_a_failed_download(server: Server, dest: Path) -> None:
    url = server.url("gone.bin", status=404)
    res, events = await run_manager(dest, [url])
    assert kinds(events) == ["queued", "failed"]
    failed = events[1]
    assert isinstance(failed, Failed)
    assert failed.path == dest / "gone.bin"
    assert "HTTP 404" in failed.error
    assert failed.error == res[0].error


async def test_events_of_a_skipped_download(server: Server, dest: Path) -> None:
    (dest / "here.bin").write_bytes(b"12345")
    _, events = await run_manager(dest, [server.url("here.bin")])
    assert kinds(events) == ["queued", "skipped"]
    skipped = events[1]
    assert isinstance(skipped, Skipped)
    assert (skipped.bytes, skipped.reason) == (5, "already downloaded")


async def test_events_of_downloads_cancelled_queued_and_running(server: Server, dest: Path) -> None:
    seen: list[Event] = []
    running = asyncio.Event()
    slow = server.url("slow.bin", 400_000, rate=100_000)
    waiting = server.url("waiting.bin")
    async with manager(dest, concurrency=1, chunk_size=4096, progress_interval=0.01) as m:
        m.on(None, seen.append)
        m.on(EventType.PROGRESS, lambda e: running.set())
        slow_id, waiting_id = await m.add([slow, waiting])
        await asyncio.wait_for(running.wait(), 10)
        assert await m.cancel(waiting_id)
        assert await m.cancel(slow_id)
        res = await m.wait()
    assert [o.status for o in res] == [Status.CANCELLED, Status.CANCELLED]
    by_id = {did: [e for e in seen if e.download_id == did] for did in (slow_id, waiting_id)}
    assert kinds(by_id[waiting_id]) == ["queued", "cancelled"]
    assert kinds(by_id[slow_id]) == ["queued", "started", "progress", "cancelled"]
    cancelled = by_id[slow_id][-1]
    assert isinstance(cancelled, Cancelled)
    assert 0 < cancelled.bytes < 400_000
    assert of_type(by_id[waiting_id], Cancelled)[0].bytes == 0


# --- cancellation ---------------------------------------------------------------------------


async def test_cancel_a_queued_download_by_id(server: Server, dest: Path) -> None:
    async with manager(dest, concurrency=1) as m:
        ids = await m.add([server.url("first.bin", delay=0.3), server.url("second.bin")])
        assert await m.cancel(ids[1])
        res = await m.wait()
    assert [o.status for o in res] == [Status.COMPLETED, Status.CANCELLED]
    assert res[1].error == "cancelled before it started"
    assert server.count("second.bin") == 0
    assert not (dest / "second.bin").exists()


async def test_cancel_a_running_download_by_id_keeps_its_partial(
    server: Server, dest: Path
) -> None:
    progressed = asyncio.Event()
    slow = server.url("slow.bin", 400_000, rate=100_000, slowfor=1)
    async with manager(dest, chunk_size=4096, progress_interval=0.01) as m:
        # The slow file's own progress: the other file's could come before it has a byte.
        def on_progress(event: Event) -> None:
            if "slow.bin" in event.url:
                progressed.set()

        m.on("progress", on_progress)
        slow_id, _ = await m.add([slow, server.url("other.bin")])
        await asyncio.wait_for(progressed.wait(), 10)
        assert await m.cancel(slow_id)
        assert m.info(slow_id).status is Status.CANCELLED
        res = await m.wait()
        assert not await m.cancel(slow_id)  # finished: nothing to cancel
    assert [o.status for o in res] == [Status.CANCELLED, Status.COMPLETED]
    assert res[0].error == "cancelled"
    final = dest / "slow.bin"
    assert not final.exists()
    kept = working_path(final, ".part").stat().st_size
    assert 0 < kept < 400_000
    # The next run picks up where this one stopped.
    again, _ = await run_manager(dest, [slow])
    assert again[0].status is Status.COMPLETED
    assert final.read_bytes() == server.content("slow.bin", 400_000)
    assert server.requests("slow.bin")[-1].headers["Range"] == f"bytes={kept}-"


async def test_cancel_unknown_id_is_false(dest: Path) -> None:
    async with manager(dest) as m:
        assert not await m.cancel("no-such-id")


async def test_cancel_all_stops_everything(server: Server, dest: Path) -> None:
    progressed = asyncio.Event()
    urls = [server.url(n, 400_000, rate=100_000) for n in names("all", 4)]
    async with manager(dest, concurrency=2, chunk_size=4096, progress_interval=0.01) as m:
        m.on("progress", lambda e: progressed.set())
        await m.add(urls)
        await asyncio.wait_for(progressed.wait(), 10)
        await m.cancel_all()
        res = await m.wait()
    assert [o.status for o in res] == [Status.CANCELLED] * 4
    assert not any((dest / n).exists() for n in names("all", 4))


async def test_leaving_the_block_early_cancels_what_is_left(server: Server, dest: Path) -> None:
    urls = [server.url(n, 400_000, rate=100_000) for n in names("early", 3)]
    async with manager(dest, concurrency=1) as m:
        await m.add(urls)
        await asyncio.sleep(0.2)
    res = m.results()
    assert [o.status for o in res] == [Status.CANCELLED] * 3
    assert m.stats.cancelled == 3


# --- the rest of the API ----------------------------------------------------------------------


async def test_add_returns_ids_and_wait_returns_results_in_order(
    server: Server, dest: Path
) -> None:
    async with manager(dest) as m:
        ids = await m.add([server.url("x.bin"), server.url("y.bin")])
        res = await m.wait()
        more = await m.add(server.url("z.bin"))
        res_all = await m.wait()
    assert len(ids) == 2
    assert [o.download_id for o in res] == ids
    assert [o.download_id for o in res_all] == [*ids, *more]
    assert m.results(more)[0].path.name == "z.bin"


async def test_wait_with_nothing_added_returns_no_results(dest: Path) -> None:
    async with manager(dest) as m:
        assert len(await m.wait()) == 0


async def test_unsubscribe_stops_a_handler(server: Server, dest: Path) -> None:
    got: list[Event] = []
    async with manager(dest, concurrency=1) as m:
        sub = m.on("completed", got.append)
        everything = m.on(None, lambda e: None)
        await m.add(server.url("one.bin"))
        await m.wait()
        sub.unsubscribe()
        sub.unsubscribe()
        await m.add(server.url("two.bin"))
        await m.wait()
    assert [e.url for e in got] == [server.url("one.bin")]
    assert not sub.active
    assert everything.active


async def test_stats_and_info(server: Server, dest: Path) -> None:
    async with manager(dest) as m:
        ok_id, bad_id = await m.add([server.url("s.bin"), server.url("m.bin", status=404)])
        await m.wait()
        stats = m.stats
        ok = m.info(ok_id)
        bad = m.info(bad_id)
        with pytest.raises(KeyError):
            m.info("no-such-id")
    assert (stats.files, stats.completed, stats.failed, stats.finished) == (2, 1, 1, 2)
    assert (stats.queued, stats.running) == (0, 0)
    assert stats.bytes_done == SIZE
    assert (ok.status, ok.bytes, ok.total, ok.path) == (
        Status.COMPLETED,
        SIZE,
        SIZE,
        dest / "s.bin",
    )
    assert bad.status is Status.FAILED
    assert bad.error is not None
    assert "HTTP 404" in bad.error
    assert "files=2" in repr(m)


async def test_an_injected_session_is_used_and_not_closed(server: Server, dest: Path) -> None:
    async with aiohttp.ClientSession(headers={"X-From-Session": "yes"}) as session:
        res, _ = await run_manager(dest, [server.url("s.bin")], client=session)
        assert not session.closed
        assert res[0].status is Status.COMPLETED
        # Still usable afterwards.
        async with session.get(server.url("again.bin")) as resp:
            assert resp.status == 200
    assert server.requests("s.bin")[0].headers["X-From-Session"] == "yes"


async def test_the_manager_closes_the_session_it_made(server: Server, dest: Path) -> None:
    async with manager(dest) as m:
        await m.add(server.url("own.bin"))
        await m.wait()
        session = m._session
        assert session is not None
        assert not session.closed
    assert session.closed


def test_a_client_of_the_wrong_type_is_refused(dest: Path) -> None:
    with pytest.raises(OptionError, match="client must be"):
        DownloadManager(dest, client="http://proxy")  # type: ignore[arg-type]


def test_options_as_an_object_and_as_keywords(dest: Path) -> None:
    m = DownloadManager(dest, Options(retries=7), concurrency=2)
    assert (m.options.retries, m.options.concurrency) == (7, 2)
    with pytest.raises(OptionError, match="DownloadManager has no option 'colour'"):
        DownloadManager(dest, colour="red")


async def test_the_manager_must_be_entered_first(dest: Path) -> None:
    m = DownloadManager(dest)
    with pytest.raises(RuntimeError, match="async with DownloadManager"):
        await m.add(["http://127.0.0.1/x"])
    with pytest.raises(RuntimeError, match="async with DownloadManager"):
        await m.wait()


# --- one bad item never sinks the batch -----------------------------------------------------


async def test_items_that_cannot_be_planned_fail_alone(server: Server, dest: Path) -> None:
    items: list[str | File] = [
        "not a url",
        File(server.url("esc.bin"), "../escape.bin"),
        File(server.url("abs.bin"), "/etc/abs.bin"),
        File(server.url("empty.bin"), ""),
        File(server.url("hash.bin"), hash="sha256:nope"),
        "ftp://127.0.0.1/x.bin",
        server.url("good.bin"),
    ]
    res, events = await run_manager(dest, items)
    assert [o.status for o in res] == [Status.FAILED] * 6 + [Status.COMPLETED]
    errors = [o.error or "" for o in res[:6]]
    assert "whitespace" in errors[0]
    assert "outside dest" in errors[1]
    assert "absolute" in errors[2]
    assert "names no file" in errors[3]
    assert "malformed sha256" in errors[4]
    assert "unsupported URL scheme" in errors[5]
    assert server.count() == 1  # only the good one was requested
    assert len(of_type(events, Failed)) == 6
    assert listing(dest) == ["good.bin"]


async def test_bad_manifest_rows_fail_alone_and_rerun_as_failures(
    server: Server, dest: Path
) -> None:
    items: list[str | File] = [
        BadRow("", error="list.csv, line 2: no url"),
        server.url("good.bin"),
        File(server.url("m.bin"), mirrors=["ftp://m.example/m.bin"]),
    ]
    res, _ = await run_manager(dest, items)
    assert [o.status for o in res] == [Status.FAILED, Status.COMPLETED, Status.FAILED]
    assert res[0].error == "list.csv, line 2: no url"
    assert "unsupported URL scheme" in (res[2].error or "")
    again, _ = await run_manager(dest, res.failed)
    assert [o.error for o in again] == [o.error for o in res.failed]


async def test_add_takes_a_list_in_batches_and_lets_the_loop_run(dest: Path) -> None:
    """A long add gives the loop back: other tasks run while items are being queued."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    items = [File(f"http://127.0.0.1:9/{i}.bin") for i in range(3 * ADD_BATCH)]
    async with manager(dest, concurrency=1) as m:
        await m.cancel_all()
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = ticks
        ids = await m.add(items)
        task.cancel()
        await m.cancel_all()
    assert len(ids) == 3 * ADD_BATCH
    assert ticks - start >= 3


async def test_a_lazy_source_is_read_as_the_downloads_go(dest: Path) -> None:
    """A generator (or a Parquet manifest) is never read all at once: add() returns at
    once, and the workers read it a batch at a time."""
    read = 0

    port = closed_port()

    def rows() -> Iterator[File]:
        nonlocal read
        for i in range(20 * PULL_BATCH):
            read += 1
            yield File(f"http://127.0.0.1:{port}/{i}.bin")

    async with manager(dest, concurrency=1, retries=0) as m:
        assert await m.add(rows()) == []
        assert read == 0  # nothing read yet: the workers read as they go
        while len(m.results()) < 5:  # noqa: ASYNC110 - waits for a few to finish
            await asyncio.sleep(0.01)
        assert PULL_BATCH <= read <= 3 * PULL_BATCH
        await m.cancel_all()
        results = m.results()
    assert 5 <= len(results) <= read  # in the order read; the unread rows never started
    assert [o.url.rsplit("/", 1)[1] for o in results] == [f"{i}.bin" for i in range(len(results))]


async def test_every_failure_is_reported_with_its_url_and_cause(server: Server, dest: Path) -> None:
    items: list[str | File] = [
        server.url("a.bin", status=404),
        server.url("b.bin"),
        File(server.url("c.bin"), hash="md5:" + "0" * 32),
        server.url("d.bin", status=500),
        server.url("e.bin"),
    ]
    res, _ = await run_manager(dest, items, retries=1)
    assert [o.status for o in res] == [
        Status.FAILED,
        Status.COMPLETED,
        Status.FAILED,
        Status.FAILED,
        Status.COMPLETED,
    ]
    for o, cause in zip(res.failed, ["HTTP 404", "md5 mismatch", "HTTP 500"], strict=True):
        assert o.error is not None
        assert o.error.startswith(o.url)
        assert cause in o.error


async def test_an_internal_error_fails_one_file_and_the_batch_goes_on(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = transfer.download

    async def buggy(ctx: transfer.Context, p: Any) -> Any:
        if p.final.name == "bug.bin":
            raise ZeroDivisionError("a bug")
        return await real(ctx, p)

    monkeypatch.setattr(transfer, "download", buggy)
    with caplog.at_level(logging.ERROR, logger="rheo_nb"):
        res, events = await run_manager(dest, [server.url("bug.bin"), server.url("fine.bin")])
    assert [o.status for o in res] == [Status.FAILED, Status.COMPLETED]
    assert res[0].error is not None
    assert "internal error (ZeroDivisionError: a bug)" in res[0].error
    assert of_type(events, Failed)[0].download_id == res[0].download_id
    assert "internal error downloading" in caplog.text
