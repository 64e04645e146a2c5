"""The same fetch on a Dask cluster: a real LocalCluster (2 worker processes) against the
test servers on 127.0.0.1.

One cluster serves the module (``dask_client``); a test that kills a worker waits for its
nanny to bring it back. Calls pass ``cluster=dask_client``: rheo_nb connects to that
scheduler on the call's own loop. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import (
    CHAOS,
    MISSING,
    Chaos,
    closed_port,
    leftovers,
    part_size,
    wait_for,
    working_files,
)
from server import FAST, Server, names

import rheo_nb
from rheo_nb import ApiKey, BearerToken, Event, File, OptionError, Outcome, Results, Status
from rheo_nb.cluster import ClusterRun, ClusterTracker, shard_size, shares
from rheo_nb.display import Source
from rheo_nb.tracker import Stats

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.timeout(120)]

WORKERS = 2
MiB = 1 << 20
FAST_ENGINE = {k: v for k, v in FAST.items() if k != "progress"}


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def on_disk(o: Outcome) -> Path:
    """The outcome's path: a local file, in these tests."""
    assert isinstance(o.path, Path)
    return o.path


def exact(results: Results, server: Server, sizes: dict[str, int]) -> list[str]:
    """Names of the files on disk whose bytes are not their source's."""
    return [
        o.path.name
        for o in results.ok
        if on_disk(o).read_bytes() != server.content(o.path.name, sizes[o.path.name])
    ]


class Sampler:
    """A display that samples the totals on a timer, as the widget does."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.samples: list[Stats] = []
        self.events: list[Event] = []
        self.manager: Source | None = None
        self._timer: asyncio.TimerHandle | None = None

    def open(self, manager: Source) -> None:
        self.manager = manager
        manager.on(None, self.events.append)
        self._tick()

    def _tick(self) -> None:
        assert self.manager is not None
        self.samples.append(self.manager.stats)
        self._timer = asyncio.get_running_loop().call_later(self.every, self._tick)

    def close(self, results: Results, *, interrupted: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self.manager is not None
        self.samples.append(self.manager.stats)


# --- the contract --------------------------------------------------------------------------------


async def test_the_same_call_gives_the_same_outcomes_in_input_order(
    server: Server, tmp_path: Path, dask_client: Any
) -> None:
    ok = [server.url(n, 30_000) for n in names("ok", 9)]
    items: list[str | File] = [
        *ok[:3],
        "ftp://example.org/refused.bin",  # refused where the call is made
        File(ok[3], "sub/three.bin", hash=server.hash("ok-3.bin", 30_000)),
        ok[0],  # the same file again: one outcome
        server.url("gone.bin", status=404),
        File(ok[4], "ok-0.bin"),  # another file at a path already taken: refused
        *ok[5:],
    ]
    here = await rheo_nb.fetch(items, tmp_path / "here", **FAST)
    there = await rheo_nb.fetch(
        items, tmp_path / "there", cluster=dask_client, shard_size=2, **FAST
    )
    assert [(o.url, o.status) for o in there] == [(o.url, o.status) for o in here]
    assert [on_disk(o).relative_to(tmp_path / "there") for o in there if o.status.ok] == [
        on_disk(o).relative_to(tmp_path / "here") for o in here if o.status.ok
    ]
    assert [o.error for o in there.failed] == [o.error for o in here.failed]
    assert len(there) == 11
    assert there.counts() == {"completed": 8, "failed": 3}
    assert leftovers(tmp_path / "there") == leftovers(tmp_path / "here")
    for o in there.ok:
        assert (
            on_disk(o).read_bytes()
            == (tmp_path / "here" / on_disk(o).relative_to(tmp_path / "there")).read_bytes()
        )
    # A rerun skips what is complete, with the same promises.
    again = await rheo_nb.fetch(items, tmp_path / "there", cluster=dask_client, **FAST)
    assert again.counts() == {"skipped": 8, "failed": 3}


def test_fetch_sync_and_start_take_cluster_too(
    server: Server, tmp_path: Path, dask_client: Any
) -> None:
    urls = [server.url(n, 10_000) for n in names("sync", 6)]
    res = rheo_nb.fetch_sync(urls, tmp_path, cluster=dask_client, **FAST)
    assert res.counts() == {"completed": 6}
    job = rheo_nb.start(urls, tmp_path, cluster=dask_client, overwrite=True, **FAST)
    assert isinstance(job.manager, ClusterRun)
    done = job.result(60)
    assert done.counts() == {"completed": 6}
    assert job.results_so_far == done
    assert repr(job).startswith("<Job done: 6/6 files done")


@pytest.mark.slow
def test_cluster_local_starts_a_cluster_for_the_call_and_closes_it(
    server: Server, tmp_path: Path
) -> None:
    before = set(multiprocessing.active_children())
    sampler = Sampler()
    urls = [server.url(n) for n in names("local", 4)]
    res = rheo_nb.fetch_sync(urls, tmp_path, cluster="local", progress=sampler, **FAST_ENGINE)
    assert res.counts() == {"completed": 4}
    workers = {s.cluster.workers for s in sampler.samples if s.cluster is not None}
    assert workers == {os.cpu_count()}  # one worker process per core
    wait_for(lambda: set(multiprocessing.active_children()) <= before)  # all gone


# --- progress ------------------------------------------------------------------------------------


async def test_progress_reaches_the_caller_in_steps_while_the_call_runs(
    server: Server, dest: Path, dask_client: Any
) -> None:
    urls = [server.url(n, 200_000, rate=400_000) for n in names("steps", 24)]
    sampler = Sampler()
    res = await rheo_nb.fetch(
        urls,
        dest,
        cluster=dask_client,
        shard_size=12,  # a shard per worker: the steps come from the reports, not shard ends
        concurrency=2,
        progress=sampler,
        **FAST_ENGINE,
    )
    assert res.counts() == {"completed": 24}
    before_end = sampler.samples[:-1]
    steps = sorted({(s.done, s.bytes_done) for s in before_end if 0 < s.done < 24})
    assert len({done for done, _ in steps}) >= 3, steps
    assert {s.files for s in sampler.samples[1:]} == {24}
    assert any(s.cluster is not None and s.cluster.busy == WORKERS for s in before_end)
    assert any(s.running > 0 and s.speed > 0 for s in before_end)
    last = sampler.samples[-1]
    assert (last.done, last.bytes_done, last.bytes_total) == (24, 24 * 200_000, 24 * 200_000)
    assert last.cluster is not None
    assert last.cluster.shards_done == last.cluster.shards
    print(f"\nprogress: {len(steps)} distinct totals seen before the end")


# --- faults --------------------------------------------------------------------------------------

FAULTY_FILES = 3_000
FAULTY_MISSING = 10


@pytest.mark.slow
def test_thousands_of_files_with_faults_every_file_exact_every_failure_once(
    server: Server, dest: Path, dask_client: Any
) -> None:
    chaos = CHAOS[server.tag] = Chaos(rate=0.03, seed=13, stall=1.0)
    sizes: dict[str, int] = {}
    items = []
    for i in range(FAULTY_FILES):
        name = f"{MISSING}-{i}.bin" if i < FAULTY_MISSING else f"f{i:04d}.bin"
        sizes[name] = (i * 7919) % 20_000
        hashed = i % 2 == 0
        url = server.route_url("chaos", name, sizes[name], h=1 if hashed else None)
        items.append(File(url, hash=server.hash(name, sizes[name]) if hashed else None))
    sampler = Sampler(every=0.2)
    t0 = time.monotonic()
    res = rheo_nb.fetch_sync(
        items,
        dest,
        cluster=dask_client,
        concurrency=8,
        retries=3,
        timeout=0.5,
        progress=sampler,
        **FAST_ENGINE,
    )
    elapsed = time.monotonic() - t0
    assert len(res) == FAULTY_FILES
    assert exact(res, server, sizes) == []
    assert sorted(finals(dest)) == sorted(o.path.name for o in res.ok)
    # Every failure is reported once, with its URL and cause, live and in the results.
    failed = res.failed
    assert all(o.error and o.error.startswith(o.url + ": ") for o in failed)
    reported = Counter(e.download_id for e in sampler.events if isinstance(e, rheo_nb.Failed))
    assert set(reported.values()) <= {1}
    assert set(reported) == {o.download_id for o in failed}
    assert sum("HTTP 404" in (o.error or "") for o in failed) == FAULTY_MISSING
    last = sampler.samples[-1]
    assert (last.files, last.done, last.failed) == (FAULTY_FILES, len(res.ok), len(failed))
    print(
        f"\ncluster faults: {FAULTY_FILES} files in {elapsed:.1f} s on {WORKERS} workers; "
        f"faults injected {sum(chaos.injected.values())} {dict(sorted(chaos.injected.items()))}; "
        f"{res.counts()}"
    )


# --- stopping ------------------------------------------------------------------------------------


async def test_the_cancel_button_stops_every_shard_and_keeps_partials(
    server: Server, dest: Path, dask_client: Any
) -> None:
    urls = [server.url(n, 4 * MiB, rate=MiB) for n in names("button", 6)]
    sampler = Sampler()
    call = asyncio.create_task(
        rheo_nb.fetch(urls, dest, cluster=dask_client, concurrency=2, progress=sampler)
    )
    await until_(lambda: sampler.manager is not None and sampler.manager.stats.bytes_done > MiB)
    assert sampler.manager is not None
    await sampler.manager.cancel_all()  # what the widget's Cancel button does
    res = await call
    assert res.counts() == {"cancelled": 6}
    assert sum(o.bytes for o in res) > MiB
    await until_(lambda: server.active == 0)  # the workers stopped: no request goes on
    settle = server.count()
    await asyncio.sleep(0.5)
    assert server.count() == settle
    assert finals(dest) == []  # nothing incomplete at a final path
    assert kept_bytes(dest) > 0
    again = await rheo_nb.fetch(urls, dest, cluster=dask_client, **FAST)
    assert again.counts() == {"completed": 6}
    assert any("Range" in r.headers for r in server.requests()[settle:])  # resumed
    for o in again:
        assert on_disk(o).read_bytes() == server.content(o.path.name, 4 * MiB)


def test_cancelling_a_job_stops_every_shard_and_keeps_partials(
    server: Server, dest: Path, dask_client: Any
) -> None:
    urls = [server.url(n, 4 * MiB, rate=MiB) for n in names("job", 6)]
    job = rheo_nb.start(urls, dest, cluster=dask_client, concurrency=2, **FAST)
    wait_for(lambda: job.manager.stats.bytes_done > MiB, 30)
    job.cancel()  # as a kernel interrupt of job.result() does
    with pytest.raises(asyncio.CancelledError):
        job.result(30)
    wait_for(lambda: server.active == 0)
    kept = [o for o in job.results_so_far if o.status is Status.CANCELLED and o.bytes]
    assert kept, job.results_so_far
    assert all(part_size(on_disk(o)) > 0 for o in kept)
    assert finals(dest) == []


def finals(dest: Path) -> list[str]:
    return [n for n in leftovers(dest) if ".rheo_nb" not in n]


def kept_bytes(dest: Path) -> int:
    return sum(p.stat().st_size for p in working_files(dest) if p.suffix == ".part")


async def until_(predicate: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


@pytest.mark.slow
def test_a_worker_killed_mid_run_has_its_shard_rerun_and_the_run_stays_exact(
    server: Server, dest: Path, dask_client: Any
) -> None:
    n, size = 40, 600_000
    urls = [server.url(name, size, rate=600_000) for name in names("kill", n)]
    pids: dict[str, int] = dask_client.run(os.getpid)
    incomplete: list[str] = []
    stop = asyncio.Event()

    def watch() -> None:  # no file at a final path is ever short, dead worker or not
        while not stop.is_set():
            for path in dest.glob("kill-*.bin"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_size != size:
                        incomplete.append(path.name)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    job = rheo_nb.start(
        urls,
        dest,
        cluster=dask_client,
        concurrency=4,
        shard_size=10,
        chunk_size=64 << 10,  # written as it comes: a killed worker leaves partials on disk
        **FAST,
    )
    wait_for(lambda: (c := job.manager.stats.cluster) is not None and c.busy == WORKERS, 30)
    wait_for(lambda: job.manager.stats.bytes_done > 2 * size, 30)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    res = job.result(100)
    stop.set()
    watcher.join(5)
    assert incomplete == []
    assert len(res) == n
    assert res.counts().keys() <= {"completed", "skipped"}, res
    assert len({o.path for o in res}) == n
    assert exact(res, server, dict.fromkeys(names("kill", n), size)) == []
    resumed = {r.name for r in server.requests() if "Range" in r.headers}
    assert resumed  # the rerun continued what the dead worker left
    stats = job.manager.stats
    assert stats.cluster is not None
    assert stats.cluster.reruns >= 1
    assert (stats.files, stats.done) == (n, n)
    dask_client.wait_for_workers(WORKERS, timeout=60)
    print(
        f"\nkilled worker {victim}: {res.counts()}, {stats.cluster.reruns} shard(s) rerun, "
        f"{len(resumed)} partial(s) resumed"
    )


# --- politeness, secrets, destinations -----------------------------------------------------------


def test_limit_per_host_holds_for_the_whole_cluster(
    shared_server: Any, tmp_path: Path, dask_client: Any
) -> None:
    free, polite = shared_server.view(), shared_server.view()
    options: dict[str, Any] = {"cluster": dask_client, "concurrency": 4, "shard_size": 4, **FAST}
    a = rheo_nb.fetch_sync(
        [free.url(n, 10_000, delay=0.3) for n in names("free", 16)], tmp_path / "a", **options
    )
    b = rheo_nb.fetch_sync(
        [polite.url(n, 10_000, delay=0.3) for n in names("polite", 16)],
        tmp_path / "b",
        limit_per_host=3,
        **options,
    )
    assert a.counts() == b.counts() == {"completed": 16}
    print(f"\nper-host peak at the server: {free.peak} without a limit, {polite.peak} with 3")
    assert free.peak > 3  # both workers at once: the limit below is not a given
    assert 2 <= polite.peak <= 3


SECRETS = ("s3cret-pw", "t0ken-value", "k3y-value", "hdr-s3cret", "url-pa55")


@pytest.mark.parametrize(
    "auth",
    [("alice", "s3cret-pw"), BearerToken("t0ken-value"), ApiKey("k3y-value", query="api_key")],
    ids=["basic", "bearer", "apikey-query"],
)
def test_no_secret_reaches_task_keys_reprs_events_or_logs(
    server: Server, dest: Path, dask_client: Any, auth: Any
) -> None:
    base = server.base_url.replace("http://", "http://bob:url-pa55@")
    urls = [f"{base}/gen/{server.tag}/{n}?size=1000&token=url-pa55" for n in names("s", 4)]
    urls.append(server.url("gone.bin", status=404) + "&api_key=k3y-value")
    seen: list[str] = []
    job = rheo_nb.start(
        urls,
        dest,
        cluster=dask_client,
        auth=auth,
        headers={"X-Extra": "hdr-s3cret"},
        shard_size=2,
        progress=False,
        **FAST_ENGINE,
    )

    def scheduler_view(dask_scheduler: Any) -> list[str]:
        return [f"{key!r} {ts.run_spec!r}" for key, ts in dask_scheduler.tasks.items()]

    def worker_view(dask_worker: Any) -> list[str]:
        return [f"{key!r} {ts.run_spec!r}" for key, ts in dask_worker.state.tasks.items()]

    while not job.done():
        seen += dask_client.run_on_scheduler(scheduler_view)
        seen += [text for texts in dask_client.run(worker_view).values() for text in texts]
        time.sleep(0.05)
    res = job.result()
    assert res.counts() == {"completed": 4, "failed": 1}
    assert any("rheo_nb-shard" in text for text in seen)  # the tasks were seen
    seen += [repr(e) for e in dask_client.get_events().items()]
    seen += [repr(logs) for logs in dask_client.get_worker_logs().values()]
    seen.append(repr(dask_client.get_scheduler_logs()))
    seen += [repr(res), res.table(), repr(job)]
    leaks = [s for s in SECRETS for text in seen if s in text]
    assert leaks == []


def test_a_dest_the_workers_cannot_write_fails_each_file_with_a_clear_error(
    server: Server, tmp_path: Path, dask_client: Any
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    sampler = Sampler()
    urls = [server.url(n) for n in names("nowhere", 5)]
    res = rheo_nb.fetch_sync(urls, blocker, cluster=dask_client, shard_size=2, progress=sampler)
    assert res.counts() == {"failed": 5}
    for o in res:
        assert o.error is not None
        assert o.error.startswith(o.url + ": cannot write to ")
        assert "on worker tcp://127.0.0.1:" in o.error
        assert o.error.endswith("it is a file; choose another folder")
    failed = [e for e in sampler.events if isinstance(e, rheo_nb.Failed)]
    assert sorted(e.download_id for e in failed) == sorted(o.download_id for o in res)
    assert server.count() == 0
    assert blocker.read_text() == "not a folder"


def test_oauth2_tokens_are_fetched_by_each_worker_once(tmp_path: Path, dask_client: Any) -> None:
    from auth_servers import CLIENT_ID, CLIENT_SECRET, AuthServer

    with AuthServer() as a:
        auth = rheo_nb.OAuth2ClientCredentials(a.token_url, CLIENT_ID, CLIENT_SECRET)
        urls = [a.url("oauth", f"o{i}.bin") for i in range(12)]
        res = rheo_nb.fetch_sync(
            urls, tmp_path, cluster=dask_client, auth=auth, shard_size=2, **FAST
        )
        assert res.counts() == {"completed": 12}
        assert 1 <= a.token_requests <= WORKERS  # six shards, one token per worker
        assert auth._token is None  # this process asked for none


# --- options -------------------------------------------------------------------------------------


def test_without_distributed_cluster_is_an_option_error_that_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, dest: Path
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # what an import finds when missing
    with pytest.raises(OptionError, match=r"pip install 'rheo_nb\[cluster\]'"):
        rheo_nb.fetch_sync([], dest, cluster="local")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cluster": "nowhere"}, "cluster='nowhere': give a dask.distributed.Client, 'local'"),
        ({"cluster": 8786}, "cluster=int: give a dask.distributed.Client"),
        ({"shard_size": 10}, "shard_size= cuts a call into shards for a cluster: give cluster="),
        ({"cluster": "local", "shard_size": 0}, "shard_size must be an int >= 1"),
        ({"cluster": "local", "verify": ssl.create_default_context()}, "give the path of a CA"),
        ({"cluster": "local", "proxy": "nonsense"}, "proxy must be an 'http://host:port' URL"),
    ],
)
def test_bad_cluster_options_fail_before_anything_starts(
    dest: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(OptionError, match=re.escape(message)):
        rheo_nb.start(["http://127.0.0.1:9/x"], dest, **options)


async def test_a_session_of_this_process_cannot_go_to_the_workers(dest: Path) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        with pytest.raises(OptionError, match="client= is a session of this process"):
            await rheo_nb.fetch([], dest, cluster="local", client=session)


def test_an_auth_that_cannot_be_pickled_is_refused_by_name(dest: Path) -> None:
    class Local:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def describe(self) -> str:
            return "a local lock"

        async def apply(self, session: Any, request: Any) -> None: ...

        async def refresh(self, session: Any, request: Any) -> bool:
            return False

    with pytest.raises(OptionError, match="cannot be sent to a cluster's workers"):
        rheo_nb.start([], dest, cluster="local", auth=Local())


def test_an_unreachable_scheduler_is_an_option_error(dest: Path) -> None:
    address = f"tcp://127.0.0.1:{closed_port()}"
    with pytest.raises(OptionError, match="cannot reach the Dask scheduler"):
        rheo_nb.fetch_sync([], dest, cluster=address, timeout=1, progress=False)


# --- the command line ----------------------------------------------------------------------------


def test_the_command_line_runs_on_a_cluster(
    server: Server, tmp_path: Path, dask_client: Any
) -> None:
    from rheo_nb.cli import Exit, main

    address = dask_client.scheduler.address
    urls = [server.url(n) for n in names("cli", 4)]
    assert main(["get", *urls, "-o", str(tmp_path), "-q", "--cluster", address]) == Exit.OK
    assert sorted(p.name for p in tmp_path.iterdir()) == names("cli", 4)
    gone = server.url("gone.bin", status=404)
    assert main(["get", gone, "-o", str(tmp_path), "-q", "--cluster", address]) == Exit.FAILED
    assert main(["get", *urls, "--shard-size", "2"]) == Exit.USAGE
    assert main(["get", *urls, "--cluster", "nowhere"]) == Exit.USAGE


def test_the_command_line_says_in_one_line_when_the_scheduler_cannot_be_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rheo_nb.cli import Exit, main

    address = f"tcp://127.0.0.1:{closed_port()}"
    code = main(
        ["get", "http://127.0.0.1:9/x", "-o", str(tmp_path), "--timeout", "1", "--cluster", address]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == Exit.USAGE
    assert len(err) == 1
    assert err[0].startswith(f"rheo-nb: cluster='{address}': cannot reach")


def test_ctrl_c_on_a_cluster_run_exits_130_and_stops_the_workers(
    server: Server, tmp_path: Path, dask_client: Any
) -> None:
    from test_cli import command, environment

    from rheo_nb.cli import Exit

    out = tmp_path / "out"
    url = server.url("big.bin", 64 << 20, rate=4 << 20)
    proc = subprocess.Popen(
        [*command(), "get", url, "-o", str(out), "--cluster", dask_client.scheduler.address],
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    wait_for(lambda: server.count("big.bin") > 0, 30)
    time.sleep(0.5)  # some bytes arrive, as they do before anyone presses Ctrl-C
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == Exit.INTERRUPTED, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("rheo-nb: interrupted: downloads stopped: 0 of 1 files done, ")
    assert "1 partial file kept" in last
    wait_for(lambda: server.active == 0)


# --- pure parts ----------------------------------------------------------------------------------


def test_default_shards_give_each_worker_several() -> None:
    assert shard_size(20_000, 2) == 2_500
    assert shard_size(3, 2) == 1
    assert shard_size(10_000_000, 16) == 10_000  # a shard stays small
    assert shard_size(None, 2) == 10_000  # a lazy input of unknown length


def test_a_limit_is_shared_by_the_shards_running_at_once() -> None:
    assert shares(None, 3) == [None, None, None]
    assert shares(8, 3) == [3, 3, 2]
    assert shares(3, 2) == [2, 1]
    assert shares(1, 4) == [1]  # one shard at a time keeps a limit of one
    for limit in range(1, 20):
        for slots in range(1, 9):
            split = shares(limit, slots)
            assert sum(s or 0 for s in split) == limit
            assert min(s or 0 for s in split) >= 1


def report(shard: int, attempt: str, stats: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "shard": shard,
        "attempt": attempt,
        "worker": "w",
        "stats": stats,
        "active": [],
        "events": [],
        **extra,
    }


def test_a_rerun_replaces_the_totals_of_the_attempt_that_died() -> None:
    t = ClusterTracker(clock=lambda: 100.0)
    t.shard(0, 10)
    t.shard(1, 10)
    assert (t.stats().files, t.stats().queued) == (20, 20)
    failed = ["failed", "d1", "http://h/x", "/d/x", "http://h/x: HTTP 404", 0.1]
    t.report(report(0, "a", [10, 4, 2, 3, 0, 1, 0, 300, None, 50.0], events=[failed]))
    assert (t.stats().completed, t.stats().failed, t.stats().queued) == (3, 1, 14)
    # Its worker died; the rerun finds the three complete files and skips them.
    events = t.report(report(0, "b", [10, 5, 1, 0, 3, 1, 0, 300, None, 10.0], events=[failed]))
    assert events == []  # the same failure, already reported
    s = t.stats()
    assert (s.completed, s.skipped, s.failed, s.queued, s.running) == (0, 3, 1, 15, 1)
    assert s.cluster is not None
    assert s.cluster.reruns == 1
    # A late report of the dead attempt changes nothing.
    t.report(report(0, "a", [10, 0, 0, 9, 0, 1, 0, 900, None, 50.0]))
    assert t.stats().skipped == 3
    assert [f.download_id for f in t.failures] == ["d1"]


def test_a_finished_shard_counts_its_result_not_its_late_reports() -> None:
    t = ClusterTracker(clock=lambda: 5.0)
    t.shard(0, 2)
    final = Stats(2, 0, 0, 2, 0, 0, 0, 2000, 2000, 0.0, 0.0, 1.0)
    assert t.finished(0, final, []) == []
    t.report(report(0, "a", [2, 1, 1, 0, 0, 0, 0, 10, None, 9.0]))
    s = t.stats()
    assert (s.done, s.bytes_done, s.bytes_total, s.speed) == (2, 2000, 2000, 0.0)
    assert s.cluster is not None
    assert (s.cluster.shards_done, s.cluster.busy) == (1, 0)
