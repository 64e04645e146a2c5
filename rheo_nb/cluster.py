"""Scale out: one call's downloads in shards on a Dask cluster, watched from where it was made.

>>> from dask.distributed import Client                                  # doctest: +SKIP
>>> results = await rheo_nb.fetch(urls, "/shared/data", cluster=Client("tcp://sched:8786"))

Where the call is made (a notebook, a script, the command line), :class:`ClusterRun` cuts
the files into shards and submits one Dask task per shard; it stands in for the call's
:class:`~rheo_nb.DownloadManager`, so the progress widget, the text line and
:class:`~rheo_nb.Job` work as for a local call. On a worker, :func:`run_shard` downloads
one shard with a ``DownloadManager`` and the call's options, and its :class:`Relay`
reports a few times a second through Dask's structured events::

    the caller                                          a worker
    ClusterRun.add: Claims, cut into shards ──submit──► run_shard: DownloadManager
    ClusterTracker ◄── subscribe_topic ◄── scheduler ◄── Relay: log_event, ≤ 4 a second
    Results in input order ◄────────── the shard's outcomes (the task's result)

A report carries the shard's totals, a few running files, and its failures, retries and
restarts. Totals travel as snapshots, not deltas: a shard run again after its worker died
replaces the totals of the run that died, so nothing is counted twice; failures are
deduplicated by download id.

Politeness: a limit that holds for the whole call (``limit_per_host``) is split among the
shards that may run at once (:func:`shares`), and no more shards than that run at a time,
so the shares add up to the limit however the cluster grows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import itertools
import logging
import math
import os
import pickle
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

from . import auth, format, runner
from .client import ClientFactory, warn_unverified
from .errors import DestinationError, InvalidItemError, OptionError, RheoNbError
from .events import (
    Emitter,
    Event,
    EventType,
    Failed,
    Handler,
    Restarted,
    Retrying,
    Status,
    Subscription,
)
from .items import Claims, File, Items, Outcome, Planned, count, iter_files, plan, refusal
from .manager import DownloadManager
from .objstore import destination_of
from .options import Options
from .results import Results
from .tracker import SPEED_WINDOW, ClusterStats, DownloadInfo, Stats, eta

if TYPE_CHECKING:
    from distributed import Client as DaskClient

log = logging.getLogger("rheo_nb")

#: ``cluster=``: a ``dask.distributed.Client``, ``"local"`` (a ``LocalCluster`` with one
#: worker process per core, started and closed by the call), or a scheduler's address.
ClusterArg: TypeAlias = "DaskClient | str | None"

#: Default shards per worker thread: several each, so a slow shard or a lost worker does not
#: hold up the end of the call for long.
SHARDS_PER_SLOT = 4
#: Largest default shard (img2dataset's choice too): a shard's payload and outcomes stay small.
MAX_SHARD = 10_000
#: Least interval between two reports of one shard.
REPORT_INTERVAL = 0.25
#: Longest silence of a running shard: a report every second even when nothing changed
#: (a shard waiting on a slow server), so the caller can tell a quiet worker from a dead one.
HEARTBEAT = 1.0
#: Running files a report names (what the widget's rows show).
REPORT_ROWS = 5
#: Retry and restart notices one report carries at most (failures: every one).
REPORT_NOTICES = 20
#: How long a stopped call waits for its workers to stop their shards.
STOP_GRACE = 5.0

_EXTRA = "pip install 'rheo_nb[cluster]'"
_NOT_STARTED = "cancelled before it started"  # as a local call says it


def distributed() -> Any:
    """The ``distributed`` package, imported on first use.

    :raises OptionError: it is not installed, saying what to install.
    """
    try:
        return importlib.import_module("distributed")
    except ImportError:
        raise OptionError(f"cluster= needs Dask's distributed package: {_EXTRA}") from None


# --- sizes and shares (pure) ------------------------------------------------------------------


def shard_size(files: int | None, slots: int) -> int:
    """The default shard size: about :data:`SHARDS_PER_SLOT` shards per worker thread, at
    most :data:`MAX_SHARD` files (and that, when the number of files is not known)."""
    if files is None:
        return MAX_SHARD
    return max(1, min(MAX_SHARD, math.ceil(files / (SHARDS_PER_SLOT * max(1, slots)))))


def shares(limit: int | None, slots: int) -> list[int | None]:
    """Each running shard's share of a limit that holds for the whole call, one per slot.

    With no limit every slot of the cluster runs a shard (``None``: no share to keep).
    With one, no more shards run at once than the limit allows with at least 1 each, and
    the shares add up to the limit:

    >>> shares(8, 3)
    [3, 3, 2]
    >>> shares(1, 4)
    [1]
    """
    slots = max(1, slots)
    if not limit:
        return [None] * slots
    n = min(slots, limit)
    return [limit // n + (1 if i < limit % n else 0) for i in range(n)]


# --- what travels to a worker and back --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shard:
    """One task's files and everything needed to download them on a worker.

    Its ``repr`` (what Dask shows in logs and task reprs) names no file and no option:
    URLs and credentials travel inside, pickled, and are never shown.
    """

    call: str
    index: int
    files: tuple[File, ...]
    dest: str
    options: Options
    #: Settings of each worker's HTTP session (``verify``, ``proxy``, ``limit_per_host``…).
    session: Mapping[str, Any]
    interval: float = REPORT_INTERVAL

    def __repr__(self) -> str:
        return f"<rheo_nb shard {self.index}: {len(self.files)} files>"

    @property
    def key(self) -> str:
        """The task's key: what the dashboard shows (no URL, no secret)."""
        return f"rheo_nb-shard-{self.index}-{self.call}"

    @property
    def topic(self) -> str:
        return topic(self.call)


def topic(call: str) -> str:
    """The structured-event topic a call's shards report on."""
    return f"rheo_nb-{call}"


#: One file's outcome as a shard returns it: status, bytes, elapsed, error, and the path
#: on the worker ("": the path planned where the call was made). The caller has the rest
#: (URL, download id, File), and plain values pickle many times faster than an Outcome.
Row = tuple[str, int, float, str | None, str]


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What a shard's task returns: a row per file in the shard's order, and its totals."""

    rows: tuple[Row, ...]
    stats: Stats

    @classmethod
    def of(cls, outcomes: Iterable[Outcome], stats: Stats) -> ShardResult:
        rows = tuple((o.status.value, o.bytes, o.elapsed, o.error, str(o.path)) for o in outcomes)
        return cls(rows, stats)

    @classmethod
    def ended(cls, files: int, status: Status, cause: str) -> ShardResult:
        """Every file of a shard ending as ``status`` for ``cause``, none downloaded."""
        failed, cancelled = (files, 0) if status is Status.FAILED else (0, files)
        stats = Stats(files, 0, 0, 0, 0, failed, cancelled, 0, None, 0.0, 0.0, 0.0)
        return cls(((status.value, 0, 0.0, cause, ""),) * files, stats)

    def outcomes(self, planned: Sequence[Planned]) -> tuple[Outcome, ...]:
        """The outcomes of the files ``planned`` (the shard's, in its order)."""
        out = []
        for p, (status, nbytes, elapsed, error, path) in zip(planned, self.rows, strict=True):
            if status == Status.FAILED and error and not error.startswith(p.display_url):
                error = f"{p.display_url}: {error}"  # every failure names its URL
            path_ = Path(path) if path else p.final
            out.append(
                Outcome(
                    p.display_url,
                    path_,
                    Status(status),
                    nbytes,
                    elapsed,
                    error,
                    p.download_id,
                    p.file,
                )
            )
        return tuple(out)


# --- reports: a shard's progress, as msgpack-able lists ---------------------------------------

_STATS_FIELDS = (
    "files",
    "queued",
    "running",
    "completed",
    "skipped",
    "failed",
    "cancelled",
    "bytes_done",
    "bytes_total",
    "speed",
)


def _encode_stats(stats: Stats) -> list[Any]:
    return [getattr(stats, name) for name in _STATS_FIELDS]


def _decode_stats(row: list[Any]) -> Stats:
    values = dict(zip(_STATS_FIELDS, row, strict=True))
    return Stats(**values, eta=None, elapsed=0.0)


def _encode_row(info: DownloadInfo) -> list[Any]:
    return [
        info.download_id,
        info.url,
        str(info.path),
        info.bytes,
        info.total,
        info.speed,
        info.retries,
        info.restarts,
        info.validating,
    ]


def _decode_row(row: list[Any]) -> DownloadInfo:
    did, url, path, nbytes, total, speed, retries, restarts, validating = row
    info = DownloadInfo(did, url, Path(path), status=Status.RUNNING, bytes=nbytes, total=total)
    info.speed, info.retries, info.restarts, info.validating = speed, retries, restarts, validating
    return info


def _encode_event(event: Event) -> list[Any] | None:
    if isinstance(event, Failed):
        return ["failed", event.download_id, event.url, str(event.path), event.error, event.elapsed]
    if isinstance(event, Retrying):
        return ["retrying", event.download_id, event.url, event.attempt, event.delay, event.error]
    if isinstance(event, Restarted):
        return ["restarted", event.download_id, event.url, event.discarded, event.reason]
    return None


def _decode_event(row: list[Any]) -> Event:
    kind, did, url, *rest = row
    if kind == "failed":
        path, error, elapsed = rest
        return Failed(did, url, Path(path), error, elapsed)
    if kind == "retrying":
        return Retrying(did, url, *rest)
    return Restarted(did, url, *rest)


class Relay:
    """Reports one shard's progress a few times a second, on the shard's loop.

    A report is a dict of plain values (what ``Worker.log_event`` can send): the shard's
    totals, its first few running files, and the failures, retries and restarts since the
    last report. While nothing changes, only a heartbeat goes (:data:`HEARTBEAT`).
    """

    def __init__(
        self,
        manager: DownloadManager,
        send: Callable[[dict[str, Any]], object],
        shard: int,
        worker: str,
        interval: float = REPORT_INTERVAL,
    ) -> None:
        self._manager, self._send, self._interval = manager, send, interval
        self._base = {"shard": shard, "attempt": secrets.token_hex(6), "worker": worker}
        self._events: list[list[Any]] = []
        self._notices = 0
        self._last: tuple[Any, ...] | None = None
        self._sent = 0.0
        self._subscriptions = [
            manager.on(kind, self._note)
            for kind in (EventType.FAILED, EventType.RETRYING, EventType.RESTARTED)
        ]
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.report()
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def _note(self, event: Event) -> None:
        row = _encode_event(event)
        if row is None:
            return
        if row[0] != "failed":  # notices may be dropped under a flood; failures never
            self._notices += 1
            if self._notices > REPORT_NOTICES:
                return
        self._events.append(row)

    def _tick(self) -> None:
        try:
            self.report()
        except Exception:  # a report that cannot be sent must never stop the downloads
            log.exception("could not report the progress of a shard")
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def report(self, *, final: bool = False) -> None:
        stats = self._manager.stats
        active = [_encode_row(i) for i in self._manager.tracker.active(REPORT_ROWS)]
        state = (_encode_stats(stats), active)
        now = asyncio.get_running_loop().time()
        if not (final or self._events or state != self._last or now - self._sent >= HEARTBEAT):
            return
        self._last, self._sent = state, now
        events, self._events, self._notices = self._events, [], 0
        self._send({**self._base, "stats": state[0], "active": active, "events": events})

    def close(self) -> None:
        """Stop the timer and send the last report."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sub in self._subscriptions:
            sub.unsubscribe()
        self.report(final=True)


# --- the worker side --------------------------------------------------------------------------


class _Running:
    """A shard running on this worker, as :func:`stop_call` reaches it from another thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.manager: DownloadManager | None = None
        self.stopped = False
        self.ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopping: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """Thread-safe: cancel every download of the shard (partials are kept)."""
        with contextlib.suppress(RuntimeError):  # its loop has closed: nothing left to stop
            self.loop.call_soon_threadsafe(self._stop_here)

    def _stop_here(self) -> None:
        self.stopped = True
        if self.manager is not None and self._stopping is None:
            self._stopping = self.loop.create_task(self.manager.cancel_all())


_lock = threading.Lock()
_running: dict[str, set[_Running]] = {}
#: Calls stopped on this worker: a shard of one that starts later ends at once.
_stopped: set[str] = set()
#: The options of the last few calls seen on this worker: each shard arrives with a copy,
#: and the first is kept for the call's later shards, so that credentials that fetch a
#: token (OAuth2) fetch it once per worker, not once per shard.
_options: dict[str, Options] = {}
_KEPT_CALLS = 8


def _options_of(call: str, options: Options) -> Options:
    with _lock:
        kept = _options.setdefault(call, options)
        while len(_options) > _KEPT_CALLS:
            del _options[next(iter(_options))]
    return kept


@contextlib.contextmanager
def _registered(call: str, handle: _Running) -> Iterator[None]:
    with _lock:
        _running.setdefault(call, set()).add(handle)
    try:
        yield
    finally:
        with _lock:
            _running[call].discard(handle)
            if not _running[call]:
                del _running[call]
        handle.ended.set_result(None)


async def stop_call(call: str, grace: float = STOP_GRACE) -> int:
    """Stop every shard of ``call`` on this worker and wait (up to ``grace`` seconds) for
    them to end; a shard of it that starts later ends at once. Runs on a worker, sent by
    ``Client.run``. Returns how many shards were running."""
    with _lock:
        _stopped.add(call)
        handles = list(_running.get(call, ()))
    for handle in handles:
        handle.stop()
    if handles:
        await asyncio.wait([asyncio.wrap_future(h.ended) for h in handles], timeout=grace)
    return len(handles)


def run_shard(shard: Shard) -> ShardResult:
    """The task of one shard, on a Dask worker: its files, downloaded with the call's
    options by a :class:`~rheo_nb.DownloadManager` on a private event loop, reporting as
    it goes. Never raises: a problem becomes each file's outcome."""
    worker = distributed().get_worker()

    def send(report: dict[str, Any]) -> None:
        worker.log_event(shard.topic, report)

    try:
        return runner.run(_download_shard(shard, send, worker.address))
    except Exception as exc:  # a bug: each file of the shard says so, and the call goes on
        log.error("internal error in %r", shard, exc_info=exc)
        text = format.mask_urls_in(str(exc), auth.secret_params(shard.options.auth))
        cause = f"internal error on worker {worker.address} ({type(exc).__name__}: {text})"
        return ShardResult.ended(len(shard.files), Status.FAILED, cause)


async def _download_shard(
    shard: Shard, send: Callable[[dict[str, Any]], object], where: str
) -> ShardResult:
    handle = _Running(asyncio.get_running_loop())
    with _registered(shard.call, handle):
        if shard.call in _stopped:
            return ShardResult.ended(len(shard.files), Status.CANCELLED, _NOT_STARTED)
        try:
            options = _options_of(shard.call, shard.options)
            manager = DownloadManager(shard.dest, options, **shard.session)
            async with manager:
                relay = Relay(manager, send, shard.index, where, shard.interval)
                try:
                    ids = await manager.add(list(shard.files))
                    relay.start()  # its first report counts every file of the shard
                    handle.manager = manager
                    if handle.stopped:
                        await manager.cancel_all()
                    await manager.wait()
                finally:
                    relay.close()
        except DestinationError as exc:
            cause = f"cannot write to {exc.url} on worker {where}: {exc.cause}"
            return ShardResult.ended(len(shard.files), Status.FAILED, cause)
        except RheoNbError as exc:  # an option this worker cannot use (a CA file it lacks)
            cause = f"on worker {where}: {exc}"
            return ShardResult.ended(len(shard.files), Status.FAILED, cause)
        return ShardResult.of(manager.results(ids), manager.stats)


# --- the caller's side: totals from reports ---------------------------------------------------


@dataclass(slots=True)
class _ShardState:
    files: int
    attempt: str | None = None
    retired: set[str] = field(default_factory=set)
    snapshot: Stats | None = None
    active: list[DownloadInfo] = field(default_factory=list)
    worker: str | None = None
    seen: float = 0.0
    final: Stats | None = None


class ClusterTracker:
    """A cluster call's totals, added up from its shards' latest reports.

    Pure bookkeeping on an injected clock. It reads like a
    :class:`~rheo_nb.tracker.Tracker` (``stats()``, ``active()``, ``downloads``,
    ``failures``), so a display reads either the same way. A report of a shard's new
    attempt (its worker died, Dask ran it again) replaces the old attempt's totals, and a
    failure is reported once whichever attempt reports it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: The files named so far: the running ones shown, and the failed ones.
        self.downloads: dict[str, DownloadInfo] = {}
        self.failures: list[DownloadInfo] = []
        #: Workers in the cluster (kept up to date by the run).
        self.workers = 0
        #: Shards in all, once the input has been read to its end.
        self.shards: int | None = None
        #: Items in the input when known before reading it, and how many were read.
        self.expected: int | None = None
        self.read = 0
        self._shards: dict[int, _ShardState] = {}
        self._decided = dict.fromkeys((Status.FAILED, Status.CANCELLED), 0)
        self._failed: set[str] = set()
        self._reruns = 0
        self._t0: float | None = None

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = self.clock()

    def shard(self, index: int, files: int) -> None:
        """A shard of ``files`` files was submitted."""
        self.start()
        self._shards[index] = _ShardState(files)

    def decided(self, outcome: Outcome) -> list[Event]:
        """A file ended where the call was made (refused, or cancelled before its shard)."""
        self.start()
        self._decided[outcome.status] += 1
        if outcome.status is Status.FAILED:
            return self._failure(
                Failed(outcome.download_id, outcome.url, outcome.path, outcome.error or "", 0.0)
            )
        return []

    def _failure(self, event: Failed) -> list[Event]:
        if event.download_id in self._failed:
            return []
        self._failed.add(event.download_id)
        info = DownloadInfo(event.download_id, event.url, event.path, status=Status.FAILED)
        info.error = event.error
        self.failures.append(info)
        self.downloads[event.download_id] = info
        return [event]

    def report(self, report: Mapping[str, Any]) -> list[Event]:
        """Take a shard's report; return the events it brings, each failure once."""
        s = self._shards.get(report["shard"])
        attempt = report["attempt"]
        if s is None or s.final is not None or attempt in s.retired:
            return []  # late: the shard has ended, or this attempt's worker died
        if s.attempt is not None and attempt != s.attempt:
            s.retired.add(s.attempt)
            self._reruns += 1
        s.attempt, s.worker, s.seen = attempt, report["worker"], self.clock()
        s.snapshot = _decode_stats(report["stats"])
        self._show(s, [_decode_row(row) for row in report["active"]])
        events: list[Event] = []
        for row in report["events"]:
            event = _decode_event(row)
            events += self._failure(event) if isinstance(event, Failed) else [event]
        return events

    def _show(self, s: _ShardState, active: list[DownloadInfo]) -> None:
        for info in s.active:
            if info.download_id not in self._failed:
                self.downloads.pop(info.download_id, None)
        s.active = active
        self.downloads.update((info.download_id, info) for info in active)

    def finished(self, index: int, stats: Stats, outcomes: Iterable[Outcome]) -> list[Event]:
        """A shard ended: its totals are final; failures not reported yet are now."""
        s = self._shards[index]
        s.final = stats
        self._show(s, [])
        events: list[Event] = []
        for o in outcomes:
            if o.status is Status.FAILED:
                events += self._failure(
                    Failed(o.download_id, o.url, o.path, o.error or "", o.elapsed)
                )
        return events

    def stats(self) -> Stats:
        now = self.clock()
        sums = dict.fromkeys(_STATS_FIELDS[:-2], 0)
        total: int | None = 0
        speed, done, busy = 0.0, 0, set()
        for s in self._shards.values():
            shown = s.final or s.snapshot
            if shown is None:  # not started yet: all its files wait
                sums["files"] += s.files
                sums["queued"] += s.files
                total = None
                continue
            for name in sums:
                sums[name] += getattr(shown, name)
            total = (
                None if total is None or shown.bytes_total is None else total + shown.bytes_total
            )
            if s.final is not None:
                done += 1
            elif now - s.seen <= SPEED_WINDOW:  # a worker that went quiet may have died
                speed += shown.speed
                busy.add(s.worker)
        unread = max(0, (self.expected or 0) - self.read)
        sums["files"] += unread + sum(self._decided.values())
        sums["queued"] += unread
        sums["failed"] += self._decided[Status.FAILED]
        sums["cancelled"] += self._decided[Status.CANCELLED]
        if unread or any(self._decided.values()):
            total = None  # sizes that will never be known, as for a local call
        unfinished = sums["queued"] + sums["running"]
        elapsed = 0.0 if self._t0 is None else now - self._t0
        left = None if total is None else total - sums["bytes_done"]
        return Stats(
            **sums,
            bytes_total=total,
            speed=speed,
            eta=eta(unfinished, sums["files"] - unfinished, elapsed, left, speed),
            elapsed=elapsed,
            cluster=ClusterStats(
                max(self.workers, len(busy)), len(busy), done, self.shards, self._reruns
            ),
        )

    def active(self, limit: int = 5) -> list[DownloadInfo]:
        """Up to ``limit`` running files, as the shards last reported them."""
        rows = (info for i in sorted(self._shards) for info in self._shards[i].active)
        return list(itertools.islice(rows, limit))


# --- the caller's side: the run -----------------------------------------------------------------

#: What the input holds, in its order: outcomes decided where the call was made, and runs
#: of ``(shard, count)``: the next ``count`` outcomes of that shard.
_Entry = Outcome | tuple[int, int]


@dataclass(slots=True)
class _Cut:
    """The next shard's worth of the input, read in a thread."""

    planned: list[Planned] = field(default_factory=list)
    #: In input order: an outcome decided here, or None for the next file of the shard.
    entries: list[Outcome | None] = field(default_factory=list)
    read: int = 0
    end: bool = False


class ClusterRun:
    """A call's downloads on a Dask cluster, seen from where the call was made.

    :func:`rheo_nb.fetch` uses one in place of a :class:`~rheo_nb.DownloadManager` when
    ``cluster=`` is given, with the face displays and jobs read: ``async with``, ``add``,
    ``wait``, ``results``, ``cancel_all``, ``on``, ``stats`` and ``tracker``.

    >>> async with ClusterRun("/shared/data", Options(), cluster=client) as run:  # doctest: +SKIP
    ...     await run.add(urls)
    ...     results = await run.wait()

    ``cluster``: a ``dask.distributed.Client`` (its scheduler is used; the client itself is
    left as it is), ``"local"`` (a ``LocalCluster`` with one worker process per core,
    closed at the end), or a scheduler's address (``"tcp://host:8786"``). ``dest`` must be
    a folder every worker can write at that path (a shared filesystem); a relative one is
    taken from the folder where the call runs. ``session``: the settings of each worker's
    HTTP session, as for a ``ClientFactory``; ``limit_per_host`` holds for the whole call.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str],
        options: Options,
        *,
        cluster: DaskClient | str,
        shard_size: int | None = None,
        session: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dd = distributed()
        self._cluster: Any = _check_cluster(cluster, self._dd)
        if shard_size is not None and (
            isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1
        ):
            raise OptionError("shard_size must be an int >= 1, or None to choose one")
        if not isinstance(dest, str | os.PathLike):
            raise OptionError(f"dest must be a folder path, not {type(dest).__name__}")
        #: ``dest`` as the workers get it: a path, or an object-storage URL, as given.
        self._target = os.fspath(dest)
        self.dest = destination_of(dest)
        self.options = options
        self._session = dict(session or {})
        _check_travels(options, self._session)
        self.events = Emitter()
        self.tracker = ClusterTracker(clock)
        self._call = secrets.token_hex(8)
        self._shard_size = shard_size
        self._client: Any = None
        self._owned: Any = None  # the LocalCluster of cluster="local"
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._shares: list[int | None] = []
        self._claims = Claims(
            extract=options.extract, server_names=self.options.content_disposition
        )
        self._refused = 0
        self._batches: dict[str, list[_Entry]] = {}
        self._outcomes: dict[int, tuple[Outcome, ...]] = {}
        self._planned: dict[int, list[Planned]] = {}  # each shard's files, until it ends
        self._pending: dict[int, Shard] = {}  # submitted, not yet ended
        self._tasks: set[asyncio.Task[None]] = set()
        self._feeders: list[asyncio.Task[None]] = []
        self._shards = itertools.count()
        self._stopping = False

    def __repr__(self) -> str:
        s = self.tracker.stats()
        return f"<ClusterRun dest={str(self.dest)!r} files={s.files} finished={s.finished}>"

    # --- the face of a manager -----------------------------------------------------------

    def on(self, event_type: EventType | str | None, handler: Handler) -> Subscription:
        """Call ``handler(event)`` for each event of ``event_type``: failures, retries and
        restarts as the shards report them (see :mod:`rheo_nb.cluster`)."""
        return self.events.on(event_type, handler)

    @property
    def stats(self) -> Stats:
        return self.tracker.stats()

    def results(self, ids: list[str] | None = None) -> Results:
        """Outcomes of the files finished so far (of the batches ``ids`` that :meth:`add`
        returned, when given), in input order."""
        out: list[Outcome] = []
        taken: dict[int, int] = {}  # outcomes of each shard placed so far
        for batch in self._batches if ids is None else dict.fromkeys(ids):
            for entry in self._batches.get(batch, ()):
                if isinstance(entry, Outcome):
                    out.append(entry)
                    continue
                index, count = entry
                start = taken.get(index, 0)
                taken[index] = start + count
                out += self._outcomes.get(index, ())[start : start + count]
        return Results(out, dest=self.dest)

    async def add(self, items: Items) -> list[str]:
        """Start downloading ``items`` in shards; return the batch's id (for
        :meth:`results`). The input is read shard by shard as the cluster takes them."""
        if self._client is None:
            raise RuntimeError("use the run inside 'async with ClusterRun(...) as run:'")
        batch = f"batch-{len(self._batches)}"
        entries: list[_Entry] = []
        self._batches[batch] = entries
        self._feeders.append(asyncio.create_task(self._feed(items, entries)))
        return [batch]

    async def wait(self) -> Results:
        """Wait until every file added so far has ended; return all the outcomes."""
        while not all(f.done() for f in self._feeders):
            await asyncio.wait(self._feeders)
        for feeder in self._feeders:
            feeder.result()  # an input that could not be read raises here
        return self.results()

    async def cancel_all(self) -> None:
        """Stop every shard, keeping partial files; :meth:`wait` then returns, the files
        that did not finish marked cancelled."""
        if not self._stopping:
            self._stopping = True
            await self._stop_workers()

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> ClusterRun:
        if "://" not in self._target:  # a path: the same for every worker, not relative
            self._target = await asyncio.to_thread(os.path.abspath, self._target)
            self.dest = Path(self._target)
        try:
            await self._connect()
            threads = await self._client.nthreads()
            if not threads:
                await self._client.wait_for_workers(1, timeout=self.options.timeout)
                threads = await self._client.nthreads()
        except BaseException:
            await self._close()
            raise
        self.tracker.workers = len(threads)
        self._shares = shares(self._session.get("limit_per_host"), sum(threads.values()))
        for slot in range(len(self._shares)):
            self._free.put_nowait(slot)
        self._client.subscribe_topic(topic(self._call), self._on_report)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if any(not f.done() for f in self._feeders) or self._tasks:
                await self._interrupted()
        finally:
            await self._close()

    async def _connect(self) -> None:
        dd, cluster = self._dd, self._cluster
        security = None
        if cluster == "local":
            self._owned = await asyncio.to_thread(_local_cluster, dd)
            address = self._owned.scheduler_address
        elif isinstance(cluster, str):
            address = cluster
        else:
            address, security = cluster.scheduler.address, cluster.security
        try:
            self._client = await dd.Client(
                address,
                asynchronous=True,
                set_as_default=False,
                timeout=self.options.timeout,
                security=security,
            )
        except (OSError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            raise OptionError(
                f"cluster={format.mask_url(address)!r}: cannot reach the Dask scheduler ({why})"
            ) from None

    async def _interrupted(self) -> None:
        """The call ends before its files did (an interrupt, an error): stop the shards,
        give them a moment to report what they did, and count the rest cancelled."""
        self._stopping = True
        for feeder in self._feeders:
            feeder.cancel()
        await self._stop_workers()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_GRACE)
        for task in self._tasks:
            task.cancel()
        for shard in list(self._pending.values()):
            self._ended(
                shard.index, ShardResult.ended(len(shard.files), Status.CANCELLED, "cancelled")
            )

    async def _stop_workers(self) -> None:
        if self._client is None:
            return
        try:
            await asyncio.wait_for(
                self._client.run(stop_call, self._call, STOP_GRACE), STOP_GRACE + 2
            )
        except Exception as exc:  # a worker gone or unreachable: its shard ends with it
            log.warning("could not stop every worker's shards: %s", type(exc).__name__)

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(topic(self._call))
            with contextlib.suppress(Exception):
                await client.close()
        owned, self._owned = self._owned, None
        if owned is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(owned.close)

    # --- feeding the cluster -------------------------------------------------------------

    async def _feed(self, items: Items, entries: list[_Entry]) -> None:
        """Read the input shard by shard, and submit each shard when a slot is free."""
        files = iter_files(items)
        if (n := count(items)) is not None:
            self.tracker.expected = (self.tracker.expected or 0) + n
        size = self._shard_size or shard_size(self.tracker.expected, len(self._shares))
        self.tracker.start()
        while True:
            stopping = self._stopping
            cut = await asyncio.to_thread(self._cut, files, size, stopping)
            index = next(self._shards) if cut.planned else -1
            if cut.planned:  # counted from now on: queued until a worker reports on it
                self._planned[index] = cut.planned
                self.tracker.shard(index, len(cut.planned))
            self.tracker.read += cut.read
            for entry in cut.entries:
                self._record(entries, entry, index)
            if cut.planned:
                slot = await self._free.get()
                if self._stopping and not stopping:  # stopped while waiting for a slot
                    self._free.put_nowait(slot)
                    n = len(cut.planned)
                    self._ended(index, ShardResult.ended(n, Status.CANCELLED, _NOT_STARTED))
                else:
                    self._submit(index, slot)
            if cut.end:
                break
        self.tracker.shards = len(self._outcomes) + len(self._pending)
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _record(self, entries: list[_Entry], entry: Outcome | None, index: int) -> None:
        if entry is not None:
            entries.append(entry)
            for event in self.tracker.decided(entry):
                self.events.emit(event)
        elif entries and isinstance(last := entries[-1], tuple) and last[0] == index:
            entries[-1] = (index, last[1] + 1)
        else:
            entries.append((index, 1))

    def _cut(self, files: Iterator[File], size: int, cancelled: bool) -> _Cut:
        """The next shard: up to ``size`` files, each new to the call (blocking: a lazy
        input may read from disk). With ``cancelled``, the files end here instead."""
        cut = _Cut()
        secret = auth.secret_params(self.options.auth)
        for file in files:
            cut.read += 1
            planned: Planned | None = None
            try:
                planned = plan(file, self.dest, self.options.headers, secret)
                if not self._claims.take(planned):
                    continue  # the same file again: one download, one outcome
            except InvalidItemError as exc:
                self._refused += 1
                did = f"invalid-{self._refused}"
                cut.entries.append(refusal(file, str(exc), planned, self.dest, did, secret))
                continue
            if cancelled:
                p = planned
                ended = Outcome(
                    p.display_url,
                    p.final,
                    Status.CANCELLED,
                    0,
                    0.0,
                    _NOT_STARTED,
                    p.download_id,
                    file,
                )
                cut.entries.append(ended)
                continue
            cut.planned.append(planned)
            cut.entries.append(None)
            if len(cut.planned) >= size:
                return cut
        cut.end = True
        return cut

    def _submit(self, index: int, slot: int) -> None:
        share = self._shares[slot]
        session = self._session if share is None else {**self._session, "limit_per_host": share}
        files = tuple(p.file for p in self._planned[index])
        shard = Shard(self._call, index, files, self._target, self.options, session)
        self._pending[index] = shard
        task = asyncio.create_task(self._run_shard(shard, slot), name=f"rheo_nb-shard-{index}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_shard(self, shard: Shard, slot: int) -> None:
        future = self._client.submit(
            run_shard, shard, key=shard.key, pure=False, priority=-shard.index
        )
        try:
            result = await future
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the shard's workers died, or the scheduler went away
            result = ShardResult.ended(len(shard.files), Status.FAILED, _lost(exc, shard))
        finally:
            self._free.put_nowait(slot)
        if not isinstance(result, ShardResult) or len(result.rows) != len(shard.files):
            cause = "internal error: the shard's task did not return one outcome per file"
            result = ShardResult.ended(len(shard.files), Status.FAILED, cause)
        self._ended(shard.index, result)
        with contextlib.suppress(Exception):
            self.tracker.workers = len(await self._client.nthreads())

    def _ended(self, index: int, result: ShardResult) -> None:
        if index in self._outcomes:
            return
        self._pending.pop(index, None)
        outcomes = result.outcomes(self._planned.pop(index))
        self._outcomes[index] = outcomes
        for event in self.tracker.finished(index, result.stats, outcomes):
            self.events.emit(event)

    def _on_report(self, event: tuple[float, Any]) -> None:
        try:
            for e in self.tracker.report(event[1]):
                self.events.emit(e)
        except Exception:  # a report this version cannot read must not stop the call
            log.exception("could not read a shard's report")


def _lost(exc: BaseException, shard: Shard) -> str:
    """Why a shard's task gave no result, in words (a task key names no URL or secret)."""
    if type(exc).__name__ == "KilledWorker":
        return (
            "its shard did not finish: the workers running it died again and again, and "
            "Dask gave up on it (KilledWorker); partial files are kept for a rerun"
        )
    text = format.mask_urls_in(str(exc), auth.secret_params(shard.options.auth))
    return f"its shard did not finish ({type(exc).__name__}: {text})"


def _local_cluster(dd: Any) -> Any:
    """A ``LocalCluster`` with one single-threaded worker process per core. Blocking."""
    return dd.LocalCluster(
        n_workers=os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        # A port of its own: the default one may be another cluster's on this machine.
        dashboard_address=":0",
    )


def _check_cluster(cluster: object, dd: Any) -> object:
    if isinstance(cluster, dd.Client):
        return cluster
    if isinstance(cluster, str) and (cluster == "local" or ":" in cluster):
        return cluster
    shown = repr(cluster) if isinstance(cluster, str) else type(cluster).__name__
    raise OptionError(
        f"cluster={shown}: give a dask.distributed.Client, 'local' (a LocalCluster on this "
        "machine), or a scheduler address such as 'tcp://scheduler:8786'"
    )


def _check_travels(options: Options, session: Mapping[str, Any]) -> None:
    """Refuse, before anything starts, options that cannot be sent to the workers."""
    if isinstance(session.get("verify"), ssl.SSLContext):
        raise OptionError(
            "verify=<ssl.SSLContext> cannot be sent to a cluster's workers: give the path "
            "of a CA file that every worker can read, or verify='system'"
        )
    ClientFactory(timeout=options.timeout, **session)  # the same checks as a local call's
    warn_unverified(session.get("verify", True))
    for name, value in (("auth", options.auth), ("options", options), ("session", session)):
        try:
            pickle.dumps(value)
        except Exception as exc:
            shown = repr(value) if name == "auth" else "an option"
            raise OptionError(
                f"{name}: {shown} cannot be sent to a cluster's workers (it cannot be "
                f"pickled: {type(exc).__name__})"
            ) from None
