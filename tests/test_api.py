"""The facade: fetch, fetch_sync (also from a running loop), start and Job."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from server import FAST, Server, names

import rheo_nb
from rheo_nb import (
    ClientFactory,
    DestinationError,
    DownloadManager,
    DownloadsFailed,
    Event,
    File,
    OptionError,
    Options,
    Results,
    Status,
    TextProgress,
)
from rheo_nb.client import SESSION_OPTIONS
from rheo_nb.display import Source
from rheo_nb.files import working_path
from rheo_nb.runner import LoopThread, new_event_loop, run_sync


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- fetch ------------------------------------------------------------------------------------


async def test_fetch_accepts_urls_files_and_a_mapping(server: Server, dest: Path) -> None:
    a, b, c = server.url("a.bin"), server.url("b.bin"), server.url("c.bin")
    res = await rheo_nb.fetch([a, File(b, "sub/b.bin", hash=server.hash("b.bin"))], dest, **FAST)
    assert res.paths == [dest / "a.bin", dest / "sub" / "b.bin"]
    res = await rheo_nb.fetch({c: server.hash("c.bin")}, dest, **FAST)
    assert res.paths == [dest / "c.bin"]
    single = await rheo_nb.fetch(server.url("d.bin"), dest, **FAST)
    assert single.paths == [dest / "d.bin"]
    assert (dest / "sub" / "b.bin").read_bytes() == server.content("b.bin")


async def test_fetch_creates_a_missing_dest(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "new" / "nested" / "data"
    res = await rheo_nb.fetch([server.url("x.bin")], dest, **FAST)
    assert res[0].status is Status.COMPLETED
    assert res[0].path == dest.resolve() / "x.bin"
    assert listing(tmp_path / "new") == ["nested", "nested/data", "nested/data/x.bin"]


@pytest.mark.parametrize("kind", ["under-a-file", "a-file"])
async def test_a_bad_dest_fails_before_any_request(
    server: Server, tmp_path: Path, kind: str
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    dest = blocker / "data" if kind == "under-a-file" else blocker
    with pytest.raises(DestinationError, match="is a file; choose another folder"):
        await rheo_nb.fetch([server.url("x.bin")], dest, **FAST)
    assert server.count() == 0


async def test_bad_options_fail_before_any_request(server: Server, dest: Path) -> None:
    with pytest.raises(OptionError, match="concurrency"):
        await rheo_nb.fetch([server.url("x.bin")], dest, concurrency=0, **FAST)
    with pytest.raises(OptionError, match="fetch\\(\\) has no option 'colour'"):
        await rheo_nb.fetch([server.url("x.bin")], dest, colour="red", **FAST)  # type: ignore[call-arg]
    with pytest.raises(OptionError, match="progress="):
        await rheo_nb.fetch([server.url("x.bin")], dest, progress="fancy")  # type: ignore[arg-type]
    assert server.count() == 0


async def test_nothing_to_do(dest: Path) -> None:
    res = await rheo_nb.fetch([], dest, **FAST)
    assert len(res) == 0
    assert res.summary() == "0 files: nothing to do (0 B, longest 0.0s)"


async def test_a_url_given_twice_is_one_outcome(server: Server, dest: Path) -> None:
    url = server.url("twice.bin")
    res = await rheo_nb.fetch([url, url], dest, **FAST)
    assert len(res) == 1
    assert server.count("twice.bin") == 1


async def test_one_bad_url_never_sinks_the_batch(server: Server, dest: Path) -> None:
    urls = [server.url(n) for n in names("ok", 5)]
    urls.insert(2, server.url("missing.bin", status=404))
    urls.insert(4, "http://127.0.0.1:1/refused.bin")
    res = await rheo_nb.fetch(urls, dest, retries=1, **FAST)
    assert [o.status for o in res].count(Status.COMPLETED) == 5
    assert [o.url for o in res.failed] == [urls[2], urls[4]]
    assert res.failed[1].error is not None
    assert "cannot connect" in res.failed[1].error
    assert listing(dest) == sorted(names("ok", 5))


async def test_rerunning_the_failures_fetches_only_those(server: Server, dest: Path) -> None:
    flaky = File(server.url("flaky.bin", fail=1), "sub/flaky.bin", hash=server.hash("flaky.bin"))
    good = [server.url(n) for n in names("good", 3)]
    first = await rheo_nb.fetch([*good, flaky], dest, retries=0, **FAST)
    assert [o.status for o in first] == [Status.COMPLETED] * 3 + [Status.FAILED]
    again = await rheo_nb.fetch(first.failed, dest, retries=0, **FAST)
    assert [(o.path, o.status) for o in again] == [(dest / "sub/flaky.bin", Status.COMPLETED)]
    assert all(server.count(n) == 1 for n in names("good", 3))
    assert server.count("flaky.bin") == 2
    # Re-running everything now skips what is there.
    third = await rheo_nb.fetch([*good, flaky], dest, **FAST)
    assert [o.status for o in third] == [Status.SKIPPED] * 4


async def test_raise_for_errors_lists_every_failure(server: Server, dest: Path) -> None:
    urls = [server.url("a.bin", status=404), server.url("b.bin"), server.url("c.bin", status=410)]
    res = await rheo_nb.fetch(urls, dest, **FAST)
    with pytest.raises(DownloadsFailed) as info:
        res.raise_for_errors()
    assert [o.url for o in info.value.failures] == [urls[0], urls[2]]
    assert "HTTP 404" in str(info.value)
    assert "HTTP 410" in str(info.value)
    assert res.ok.raise_for_errors() == res.ok


async def test_secrets_never_appear_in_results_events_or_errors(server: Server, dest: Path) -> None:
    secret = "Sup3rS3cret"
    urls = [
        server.url("tok.bin", status=404, token=secret),
        server.url("key.bin", api_key=secret),
        server.url("sig.bin", status=500, signature=secret),
    ]
    seen: list[Event] = []
    async with DownloadManager(dest, retries=1, backoff=0.01) as m:
        m.on(None, seen.append)
        await m.add([*urls, File(f"ftp://u:{secret}@127.0.0.1/x", "x.bin")])
        res = await m.wait()
    assert res[1].status is Status.COMPLETED
    shown = [repr(res), res._repr_html_(), *map(repr, seen), *map(repr, res)]
    shown += [str(o.error) for o in res]
    with pytest.raises(DownloadsFailed) as info:
        res.raise_for_errors()
    shown.append(str(info.value))
    for text in shown:
        assert secret not in text
    assert "token=***" in repr(res)


async def test_an_injected_session_is_not_closed_by_fetch(server: Server, dest: Path) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        res = await rheo_nb.fetch([server.url("s.bin")], dest, client=session, **FAST)
        assert res[0].status is Status.COMPLETED
        assert not session.closed


async def test_cancelling_fetch_stops_it_and_keeps_the_partial(server: Server, dest: Path) -> None:
    url = server.url("slow.bin", 400_000, rate=100_000)
    task = asyncio.create_task(rheo_nb.fetch([url], dest, chunk_size=4096, **FAST))
    for _ in range(200):  # until some bytes are on disk
        await asyncio.sleep(0.02)
        if working_path(dest / "slow.bin", ".part").exists():
            break
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert not (dest / "slow.bin").exists()
    assert working_path(dest / "slow.bin", ".part").stat().st_size > 0
    assert not working_path(dest / "slow.bin", ".lock").exists()


# --- displays ----------------------------------------------------------------------------------


class Recorder:
    """A display that records how it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def open(self, manager: Source) -> None:
        self.calls.append(("open", manager.stats.files))

    def close(self, results: Results, *, interrupted: bool) -> None:
        self.calls.append(("close", (len(results), interrupted)))


async def test_a_display_object_is_opened_then_closed(server: Server, dest: Path) -> None:
    rec = Recorder()
    await rheo_nb.fetch([server.url("a.bin"), server.url("b.bin")], dest, progress=rec)
    assert rec.calls == [("open", 0), ("close", (2, False))]


async def test_text_progress_prints_failures_and_a_summary(server: Server, dest: Path) -> None:
    out = io.StringIO()
    urls = [server.url("a.bin"), server.url("gone.bin", status=404)]
    await rheo_nb.fetch(urls, dest, progress=TextProgress(out), backoff=0.01)
    text = out.getvalue()
    assert "failed: " in text
    assert "HTTP 404" in text
    assert text.splitlines()[-1].startswith("2 files: 1 completed, 1 failed (97.7 KiB")


# --- fetch_sync --------------------------------------------------------------------------------


def test_fetch_sync_without_a_loop(server: Server, dest: Path) -> None:
    res = rheo_nb.fetch_sync([server.url("s.bin")], dest, **FAST)
    assert res[0].status is Status.COMPLETED
    assert (dest / "s.bin").read_bytes() == server.content("s.bin")


@pytest.mark.allow_blocking  # blocking the caller's loop is what fetch_sync does there
async def test_fetch_sync_from_inside_a_running_loop(server: Server, dest: Path) -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    class Where:
        def open(self, manager: Source) -> None:
            threads.add(threading.get_ident())

        def close(self, results: Results, *, interrupted: bool) -> None:
            pass

    res = rheo_nb.fetch_sync(
        [server.url("a.bin"), server.url("b.bin")], dest, **{**FAST, "progress": Where()}
    )
    assert [o.status for o in res] == [Status.COMPLETED] * 2
    assert threads
    assert loop_thread not in threads  # it ran on a private loop in another thread
    # The caller's loop is intact and still usable.
    assert await asyncio.sleep(0, "fine") == "fine"


@pytest.mark.allow_blocking
async def test_fetch_sync_from_a_coroutine_reports_failures(server: Server, dest: Path) -> None:
    async def cell() -> Results:
        return rheo_nb.fetch_sync([server.url("gone.bin", status=404)], dest, **FAST)

    res = await cell()
    assert res[0].status is Status.FAILED


def test_run_sync_passes_exceptions_through(dest: Path) -> None:
    async def boom() -> None:
        raise DestinationError(str(dest), "nope")

    with pytest.raises(DestinationError, match="nope"):
        run_sync(boom)


def test_an_interrupted_wait_cancels_the_work_and_re_raises() -> None:
    cleaned = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.set()

    worker: LoopThread[None] = LoopThread(forever, name="test-interrupt")
    real_result = worker.future.result
    calls = 0

    def interrupted(timeout: float | None = None) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyboardInterrupt
        return real_result(timeout)

    worker.future.result = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        worker.result()
    assert cleaned.wait(10)
    assert worker.future.exception(10) is not None


# --- start / Job -------------------------------------------------------------------------------


def test_start_returns_a_job_at_once(server: Server, dest: Path) -> None:
    urls = [server.url(n, 200_000, rate=400_000) for n in names("job", 3)]
    job = rheo_nb.start(urls, dest, **FAST)
    assert not job.done()
    # Before its thread has queued the files, the job says what it will do (not "0/0").
    assert repr(job).startswith(("<Job starting: 3 files queued>", "<Job running: 0/3 files"))
    res = job.result(timeout=30)
    assert job.done()
    assert [o.status for o in res] == [Status.COMPLETED] * 3
    assert job.results_so_far == res
    assert job.manager.stats.completed == 3
    assert job.display is None
    assert repr(job) == "<Job done: 3/3 files done · 585.9 KiB of 585.9 KiB>"


def test_job_result_times_out_while_running(server: Server, dest: Path) -> None:
    job = rheo_nb.start([server.url("slow.bin", 400_000, rate=100_000)], dest, **FAST)
    with pytest.raises(TimeoutError):
        job.result(timeout=0.1)
    assert not job.done()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        job.result(timeout=10)


def test_job_cancel_stops_every_download_and_keeps_partials(server: Server, dest: Path) -> None:
    urls = [server.url(n, 400_000, rate=100_000) for n in names("c", 3)]
    job = rheo_nb.start(urls, dest, concurrency=2, chunk_size=4096, **FAST)
    part = working_path(dest / "c-0.bin", ".part")
    for _ in range(250):
        if part.exists() and part.stat().st_size > 0:
            break
        threading.Event().wait(0.02)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        job.result(timeout=10)
    assert job.done()
    so_far = job.results_so_far
    assert [o.status for o in so_far] == [Status.CANCELLED] * 3
    assert not any((dest / n).exists() for n in names("c", 3))
    assert part.stat().st_size > 0


def test_a_job_that_cannot_start_raises_from_result(server: Server, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    job = rheo_nb.start([server.url("x.bin")], blocker / "data", **FAST)
    with pytest.raises(DestinationError):
        job.result(timeout=30)
    assert job.done()
    assert server.count() == 0


async def test_await_a_job(server: Server, dest: Path) -> None:
    job = rheo_nb.start([server.url("a.bin"), server.url("b.bin")], dest, **FAST)
    res = await asyncio.wait_for(job, 30)
    assert [o.status for o in res] == [Status.COMPLETED] * 2
    assert job.done()


@pytest.mark.allow_blocking  # a cell blocking on job.result() is the point
async def test_job_result_can_block_a_running_loop(server: Server, dest: Path) -> None:
    job = rheo_nb.start([server.url("bg.bin", rate=1_000_000)], dest, **FAST)
    res = job.result(timeout=30)  # the job's own loop is not the one blocked here
    assert res[0].status is Status.COMPLETED
    assert (dest / "bg.bin").read_bytes() == server.content("bg.bin")


def test_private_loops_use_uvloop_when_installed_and_not_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    monkeypatch.setenv("RHEO_NB_UVLOOP", "0")
    loop = new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_fetch_sync_in_a_script_runs_on_the_private_loop(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvloop = pytest.importorskip("uvloop")
    seen: list[asyncio.AbstractEventLoop] = []

    class Spy:
        def open(self, manager: Any) -> None:
            seen.append(asyncio.get_running_loop())

        def close(self, results: Any, *, interrupted: bool) -> None:
            pass

    res = rheo_nb.fetch_sync([server.url("loop.bin", 1000)], dest, **{**FAST, "progress": Spy()})
    assert res[0].status is Status.COMPLETED
    assert isinstance(seen[0], uvloop.Loop)


# --- signatures: every option in sight, and the same for all three ------------------------


SIGNATURE_ONLY = {"items", "dest", "cluster", "shard_size", "client", "progress"}


def test_fetch_names_every_option_of_options_with_its_default() -> None:
    params = inspect.signature(rheo_nb.fetch).parameters
    for f in dataclasses.fields(Options):
        assert f.name in params, f"fetch() does not name the option {f.name}"
        param = params[f.name]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY, f.name
        # A default built by a factory (a dict) shows as None: "the default".
        default = None if f.default is dataclasses.MISSING else f.default
        assert param.default == default, f"{f.name}: {param.default!r} != {default!r}"
    # And nothing else, besides the session's settings and the call's own arguments.
    extra = set(params) - Options.names() - SIGNATURE_ONLY
    assert extra == SESSION_OPTIONS


def test_session_options_default_to_the_client_factorys() -> None:
    params = inspect.signature(rheo_nb.fetch).parameters
    factory = inspect.signature(ClientFactory).parameters
    for name in ("verify", "proxy", "trust_env", "netrc"):
        assert params[name].default == factory[name].default, name
    # The connection limits follow concurrency unless given (None).
    assert params["limit"].default is None
    assert params["limit_per_host"].default is None


@pytest.mark.parametrize("runner", [rheo_nb.fetch_sync, rheo_nb.start])
def test_fetch_sync_and_start_take_fetchs_parameters(runner: Any) -> None:
    ours = inspect.signature(runner)
    theirs = inspect.signature(rheo_nb.fetch)
    assert list(ours.parameters.values()) == list(theirs.parameters.values())
    assert ours.return_annotation in ("Results", "Job")
    assert ">>>" in (runner.__doc__ or "")


@pytest.mark.parametrize(
    ("call", "where"),
    [
        (lambda **kw: asyncio.run(rheo_nb.fetch([], **kw)), "fetch()"),
        (lambda **kw: rheo_nb.fetch_sync([], **kw), "fetch_sync()"),
        (lambda **kw: rheo_nb.start([], **kw), "start()"),
        (lambda **kw: DownloadManager(".", **kw), "DownloadManager"),
    ],
)
def test_a_misspelt_option_gets_a_suggestion(call: Any, where: str) -> None:
    expected = re.escape(f"{where} has no option 'concurency': did you mean concurrency?")
    with pytest.raises(OptionError, match=expected):
        call(concurency=4)
    with pytest.raises(OptionError, match="'limit_per_hots' \\(did you mean limit_per_host\\?\\)"):
        call(limit_per_hots=2, retires=1)
    with pytest.raises(OptionError, match="no option 'palette'; its options are auth, backoff"):
        call(palette="red")


def test_a_bad_progress_is_an_option_error(dest: Path) -> None:
    with pytest.raises(OptionError, match="progress='bar': use 'auto', 'text', 'notebook'"):
        rheo_nb.fetch_sync([], dest, progress="bar")  # type: ignore[arg-type]


def test_bad_options_of_start_fail_on_the_callers_thread(dest: Path) -> None:
    with pytest.raises(OptionError, match="concurrency"):
        rheo_nb.start(["http://127.0.0.1:9/x"], dest, concurrency=0)


# --- session options on the call -----------------------------------------------------------


async def test_session_options_work_on_the_call(server: Server, dest: Path) -> None:
    urls = [server.url(n, 100_000, rate=400_000) for n in names("perhost", 4)]
    results = await rheo_nb.fetch(urls, dest, concurrency=4, limit_per_host=1, limit=5, **FAST)
    assert len(results.ok) == 4
    assert server.peak == 1  # one connection to the host at a time, though 4 may run
    async with DownloadManager(dest, limit_per_host=3, limit=7) as m:
        connector = m._session.connector if m._session is not None else None
        assert connector is not None
        assert (connector.limit, connector.limit_per_host) == (7, 3)


async def test_session_options_and_a_ready_client_do_not_mix(dest: Path) -> None:
    factory = ClientFactory(limit_per_host=2)
    with pytest.raises(OptionError, match="limit_per_host= configure the HTTP client"):
        await rheo_nb.fetch([], dest, client=factory, limit_per_host=3)


# --- warnings point at the caller's line -----------------------------------------------------


def caught(call: Any) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return [w for w in seen if "verify=False" in str(w.message)]


def test_the_verify_false_warning_points_at_the_callers_line(server: Server, dest: Path) -> None:
    url = server.url("w.bin")
    here = inspect.currentframe()
    assert here is not None
    lines: dict[str, int] = {}

    def sync() -> None:
        lines["sync"] = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        rheo_nb.fetch_sync([url], dest, verify=False, **FAST)

    def background() -> None:
        lines["start"] = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        job = rheo_nb.start([url], dest, verify=False, **FAST)
        job.result(timeout=30)

    async def awaited() -> None:
        lines["fetch"] = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        await rheo_nb.fetch([url], dest, verify=False, **FAST)

    for key, call in (("sync", sync), ("start", background), ("fetch", lambda: run_sync(awaited))):
        (warning,) = caught(call)
        assert (warning.filename, warning.lineno) == (__file__, lines[key]), key
        assert warning.category is UserWarning


# --- an interrupted blocking call ends short ---------------------------------------------------

INTERRUPTED = """
import sys
import rheo_nb
from rheo_nb.testing import LocalServer

class Started:
    def open(self, manager):
        manager.on("progress", self.progress)
        self.said = False
    def progress(self, event):
        if not self.said:
            self.said = True
            print("downloading", flush=True)
    def close(self, results, *, interrupted):
        pass

with LocalServer() as server:
    url = server.url("big.bin", 64 << 20, rate=4 << 20)
    rheo_nb.fetch_sync([url], sys.argv[1], progress=Started())
"""


def test_an_interrupted_fetch_sync_ends_with_one_line_at_the_callers_call(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(INTERRUPTED)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "downloading\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("KeyboardInterrupt: downloads stopped: 0 of 1 files done, ")
    assert "1 partial file kept in " in last
    assert last.endswith("; run it again to resume")
    # The traceback: the script's line, and the one line of fetch_sync that re-raises.
    frames = [line for line in err.splitlines() if line.strip().startswith("File ")]
    assert len(frames) <= 2, err
    assert str(script) in frames[0]
    for noise in ("runner.py", "concurrent", "threading", "asyncio"):
        assert noise not in err, err
    assert sum(p.stat().st_size for p in (tmp_path / "data").rglob("*") if p.is_file()) > 0


# --- a job says what it is doing --------------------------------------------------------------


def test_a_jobs_repr_says_what_it_is_doing(server: Server, dest: Path) -> None:
    urls = [server.url(n, 400_000, rate=400_000) for n in names("repr", 2)]
    urls.append(server.url("gone.bin", status=404))
    job = rheo_nb.start(urls, dest, concurrency=1, retries=0, **FAST)
    deadline = time.monotonic() + 20
    while job.manager.stats.bytes_done == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    running = repr(job)
    assert re.fullmatch(
        r"<Job running: 0/3 files done · 1 running · 2 queued · [\d.]+ KiB \(\d+%\)>", running
    ), running
    job.result(timeout=30)
    assert repr(job) == "<Job done: 2/3 files done · 1 failed · 781.2 KiB>"
    stopped = rheo_nb.start([server.url("slow.bin", 8 << 20, rate=1 << 20)], dest, **FAST)
    stopped.cancel()
    with pytest.raises(asyncio.CancelledError):
        stopped.result(timeout=10)
    assert repr(stopped).startswith("<Job cancelled: 0/1 files done")
