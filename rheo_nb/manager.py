"""The download engine: a priority queue, a pool of workers, events and a tracker."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from . import auth, files, format, transfer
from .client import SESSION_OPTIONS, ClientFactory, HostLimiter, Network, warn_unverified
from .errors import DestinationError, InvalidItemError, OptionError
from .events import (
    Cancelled,
    Emitter,
    Event,
    EventType,
    Failed,
    Handler,
    Queued,
    Status,
    Subscription,
)
from .http import Client
from .items import Claims, File, Items, Outcome, Planned, in_memory, iter_files, plan, refusal
from .objstore import Bucket, ObjectPath, destination_of
from .options import Options, check_names
from .queue import PriorityQueue
from .results import Results
from .retry import RetryPolicy
from .runner import ThreadLane
from .tracker import DownloadInfo, Stats, Tracker
from .traffic import Traffic

log = logging.getLogger("rheo_nb")

#: Items queued by :meth:`DownloadManager.add` between two yields to the event loop.
ADD_BATCH = 1024
#: Items read from a lazy source at a time.
PULL_BATCH = 256


class DownloadManager:
    """Downloads files into ``dest`` (a folder, or ``s3://bucket/prefix``) with a pool of
    workers, emitting typed events.

    >>> async with DownloadManager("data", concurrency=4) as m:     # doctest: +SKIP
    ...     m.on("completed", lambda e: print("done:", e.path))
    ...     await m.add(["https://example.org/a.csv", File(url_b, hash="sha256:…")])
    ...     results = await m.wait()

    Options are those of :class:`~rheo_nb.Options`, as an object or as keywords. ``client``
    is an ``aiohttp.ClientSession`` (used as is, never closed here) or a
    :class:`~rheo_nb.ClientFactory`; by default one is built from the options and from
    the session keywords of :class:`~rheo_nb.ClientFactory` (``verify``, ``proxy``,
    ``trust_env``, ``netrc``, ``limit``, ``limit_per_host``), which cannot be combined
    with ``client``. A manager belongs to the event loop that entered it.

    An ``s3://bucket/prefix`` destination is opened (one S3 client, the bucket and the
    credentials checked by one request) when the manager is entered, and closed when it
    exits; ``storage_options`` configure it.
    """

    def __init__(
        self,
        dest: str | os.PathLike[str] = ".",
        options: Options | None = None,
        *,
        client: aiohttp.ClientSession | ClientFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        **option_changes: Any,
    ) -> None:
        self.dest: Path | ObjectPath = destination_of(dest)
        # None is each session setting's default: leave it to the ClientFactory.
        session_options = {
            k: v
            for k in SESSION_OPTIONS.intersection(option_changes)
            if (v := option_changes.pop(k)) is not None
        }
        check_names(option_changes, Options.names() | SESSION_OPTIONS, "DownloadManager")
        self.options = Options.build(options, **option_changes)
        if self.options.storage_options and not isinstance(self.dest, ObjectPath):
            raise OptionError(
                f"storage_options are for s3:// destinations; dest {str(self.dest)!r} is a "
                "local folder"
            )
        if client is not None and not isinstance(client, aiohttp.ClientSession | ClientFactory):
            raise OptionError("client must be an aiohttp.ClientSession or a rheo_nb.ClientFactory")
        if client is not None and session_options:
            given = ", ".join(f"{k}=" for k in sorted(session_options))
            where = (
                "a ready aiohttp.ClientSession is used as is"
                if isinstance(client, aiohttp.ClientSession)
                else "pass them to the ClientFactory instead"
            )
            raise OptionError(f"{given} configure the HTTP client, but client= was given: {where}")
        self._client = client
        self._factory: ClientFactory | None = None
        if client is None:
            # Built now, so that a bad verify= or proxy= fails the call before any work.
            defaults = {
                "limit": max(100, self.options.concurrency),
                "limit_per_host": self.options.concurrency,
            }
            self._factory = ClientFactory(
                timeout=self.options.timeout,
                total_timeout=self.options.total_timeout,
                **{**defaults, **session_options},
            )
        factory = client if isinstance(client, ClientFactory) else self._factory
        if factory is not None:
            warn_unverified(factory.verify)
        self._clock = clock
        self.events = Emitter()
        self.tracker = Tracker(clock)
        self._queue: PriorityQueue[Planned] = PriorityQueue()
        self._claims = Claims(
            extract=self.options.extract, server_names=self.options.content_disposition
        )
        self._lazy: deque[_Lazy] = deque()
        self._pulling = False
        self._outcomes: dict[str, Outcome] = {}
        self._order: list[str] = []
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._unfinished = 0
        self._idle: asyncio.Event | None = None
        self._taskgroup: asyncio.TaskGroup | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._owns_session = False
        self._ctx: transfer.Context | None = None
        self._lane: ThreadLane | None = None
        self._bucket: Bucket | None = None
        self._invalid = 0
        self._closed = False

    def __repr__(self) -> str:
        s = self.tracker.stats()
        return (
            f"<DownloadManager dest={str(self.dest)!r} files={s.files} running={s.running} "
            f"finished={s.finished}>"
        )

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        dest_real = None
        if isinstance(self.dest, ObjectPath):
            # One request checks the bucket and the credentials before any download.
            bucket = Bucket(self.dest, self.options.storage_options)
            self._bucket = await bucket.__aenter__()
        else:
            dest_real = await asyncio.to_thread(_prepare_dest, self.dest)
            self.dest = dest_real
        try:
            return await self._enter(dest_real)
        except BaseException:
            await self._close_bucket()
            raise

    async def _enter(self, dest_real: Path | None) -> Self:
        network = Network()
        if isinstance(self._client, aiohttp.ClientSession):
            session, factory = self._client, None
            per_host = getattr(session.connector, "limit_per_host", 0)
        else:
            factory = self._client or self._factory
            assert factory is not None
            per_host = factory.limit_per_host
        limiter = HostLimiter(per_host or self.options.concurrency)
        traffic = Traffic(self.options, emit=self._emit, slots=limiter)
        if factory is None:
            self._session = session
        else:
            network = await asyncio.to_thread(factory.network)
            # A capped call's sockets have receive buffers sized from the cap's shares.
            self._session = factory.create(network, socket_factory=traffic.socket_factory)
            self._owns_session = True
        secrets = auth.secret_params(self.options.auth)
        self._lane = ThreadLane(asyncio.get_running_loop())
        self._ctx = transfer.Context(
            http=Client(self._session, self.options, network, secrets, traffic),
            options=self.options,
            policy=RetryPolicy.from_options(self.options),
            emit=self._emit,
            dest=dest_real,
            lane=self._lane,
            limiter=limiter,
            clock=self._clock,
            paths=self._claims.paths,
            traffic=traffic,
            bucket=self._bucket,
        )
        self._idle = asyncio.Event()
        self._idle.set()
        self._taskgroup = asyncio.TaskGroup()
        await self._taskgroup.__aenter__()
        self._workers = [
            self._taskgroup.create_task(self._worker(), name=f"rheo_nb-worker-{i}")
            for i in range(_workers(self.options.concurrency))
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            for w in self._workers:
                w.cancel()
            assert self._taskgroup is not None
            await self._taskgroup.__aexit__(exc_type, exc, tb)
            return None
        finally:
            self._closed = True
            self._drop_queued()
            if self._lane is not None:
                if self._ctx is not None and self._ctx.checked_dirs:
                    folders = list(self._ctx.checked_dirs)
                    with contextlib.suppress(Exception):
                        await self._lane.run(_remove_workdirs, folders)
                self._lane.close()
            try:
                if self._owns_session and self._session is not None:
                    await self._session.close()
            finally:
                await self._close_bucket()

    async def _close_bucket(self) -> None:
        bucket, self._bucket = self._bucket, None
        if bucket is not None:
            await bucket.close()

    def _drop_queued(self) -> None:
        # A lazy source's unread items never started: they are not counted any more, and
        # a rerun of the same source finds what is complete and resumes the rest.
        while self._lazy:
            self.tracker.expect(-self._lazy.popleft().announced)
        while (entry := self._queue.get_nowait()) is not None:
            self._cancel_queued(entry[0])
        if self._idle is not None:
            self._check_idle()

    # --- public API ------------------------------------------------------------------------

    def on(self, event_type: EventType | str | None, handler: Handler) -> Subscription:
        """Call ``handler(event)`` for each event of ``event_type`` (``None`` or ``"*"``: all)."""
        return self.events.on(event_type, handler)

    async def add(self, items: Items) -> list[str]:
        """Queue downloads; return their ids in the order given.

        An item that cannot be downloaded as given (bad URL, unsafe path, bad hash spec,
        a path another item already uses) is reported as failed at once; the others go on.
        The same item queued again is one download; the same URL and path with another
        hash, other headers or other mirrors is refused, since only one of them could be
        honoured.

        A list, a tuple or a mapping is queued now, ``ADD_BATCH`` at a time, the loop
        given back between batches. Any other iterable (a generator, a Parquet manifest of
        a million rows) is a lazy source: it is read on a worker thread as the downloads
        go, a batch at a time, so its items are never all in memory at once. ``add``
        returns at once for it, with no ids (they are not known yet): its outcomes come in
        :meth:`results` in the order of the source. Its length, when it has one, counts in
        the totals from the start.
        """
        self._require_open()
        if not in_memory(items):
            announced = len(items) if isinstance(items, Sized) else 0
            self._lazy.append(_Lazy(iter_files(items), announced))
            self.tracker.expect(announced)
            assert self._idle is not None
            self._idle.clear()
            self._queue.wake()
            return []
        ids: list[str] = []
        files = iter_files(items)
        while batch := list(islice(files, ADD_BATCH)):
            ids.extend(self._queue_one(file) for file in batch)
            await asyncio.sleep(0)
        return ids

    def _queue_one(self, file: File) -> str:
        planned: Planned | None = None
        try:
            planned = plan(
                file, self.dest, self.options.headers, auth.secret_params(self.options.auth)
            )
            new = self._claims.take(planned)
        except InvalidItemError as exc:
            return self._reject(file, str(exc), planned)
        did = planned.download_id
        if not new:
            return did  # the same file again: one download, one outcome
        self._order.append(did)
        self._unfinished += 1
        assert self._idle is not None
        self._idle.clear()
        self._emit(Queued(did, planned.display_url, planned.final, file.priority))
        self._queue.put(did, planned, file.priority)
        return did

    async def _take(self) -> tuple[str, Planned]:
        """The next download for a worker: from the queue, else from the lazy sources."""
        while True:
            entry = self._queue.get_nowait()
            if entry is not None:
                return entry
            if self._lazy:
                await self._pull()
            else:
                await self._queue.wait()

    async def _pull(self) -> None:
        """Queue the next batch of the first lazy source (one worker reads; the others
        wait for what it queues)."""
        if self._pulling:
            await self._queue.wait()
            return
        self._pulling = True
        try:
            source = self._lazy[0]
            batch: list[File] = []
            broke: Exception | None = None
            try:
                await asyncio.to_thread(_read_into, batch, source.files, PULL_BATCH)
            except Exception as exc:  # a manifest that breaks halfway: the rest cannot come
                broke = exc  # what it yielded before is in the batch, and is downloaded
            taken = min(len(batch), source.announced)
            source.announced -= taken
            self.tracker.expect(-taken)
            if broke is not None or len(batch) < PULL_BATCH:
                # The source is done: what it announced and did not yield never comes.
                self._lazy.popleft()
                self.tracker.expect(-source.announced)
            for file in batch:
                self._queue_one(file)
            if broke is not None:
                text = format.mask_urls_in(str(broke), auth.secret_params(self.options.auth))
                self._reject(File(""), f"reading the items stopped: {text}")
            self._check_idle()
        finally:
            self._pulling = False
            self._queue.wake()

    async def wait(self) -> Results:
        """Wait until every download added so far has finished; return all their outcomes."""
        self._require_open()
        assert self._idle is not None
        await self._idle.wait()
        return self.results()

    def results(self, ids: list[str] | None = None) -> Results:
        """Outcomes of finished downloads (of ``ids`` when given, in that order, once each)."""
        order = self._order if ids is None else list(dict.fromkeys(ids))
        return Results([self._outcomes[i] for i in order if i in self._outcomes], dest=self.dest)

    async def cancel(self, download_id: str) -> bool:
        """Cancel one download, queued or running. Returns False when it had finished."""
        if download_id in self._queue:
            self._queue.remove(download_id)
            self._cancel_queued(download_id)
            return True
        task = self._running.get(download_id)
        if task is None:
            return False
        task.cancel()
        await asyncio.wait((task,))
        return True

    async def cancel_all(self) -> None:
        self._drop_queued()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    @property
    def stats(self) -> Stats:
        return self.tracker.stats()

    def info(self, download_id: str) -> DownloadInfo:
        """The live record of one download. :raises KeyError: for an unknown id."""
        return self.tracker.downloads[download_id]

    # --- internals -------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                "this DownloadManager is closed (its 'async with' block has ended): start a new one"
            )
        if self._ctx is None:
            raise RuntimeError("use the manager inside 'async with DownloadManager(...) as m:'")

    def _emit(self, event: Event) -> None:
        self.tracker.apply(event)
        self.events.emit(event)

    def _reject(self, file: File, error: str, planned: Planned | None = None) -> str:
        self._invalid += 1
        did = f"invalid-{self._invalid}"
        secrets = auth.secret_params(self.options.auth)
        outcome = refusal(file, error, planned, self.dest, did, secrets)
        self._order.append(did)
        self._emit(Queued(did, outcome.url, outcome.path, 0))
        self._emit(Failed(did, outcome.url, outcome.path, outcome.error or error, 0.0))
        self._outcomes[did] = outcome
        return did

    def _cancel_queued(self, did: str) -> None:
        p = self._claims.active[did]
        self._emit(Cancelled(did, p.display_url, p.final, 0))
        self._done(
            did,
            Outcome(
                p.display_url,
                p.final,
                Status.CANCELLED,
                0,
                0.0,
                "cancelled before it started",
                did,
                p.file,
            ),
        )

    def _done(self, did: str, outcome: Outcome) -> None:
        self._outcomes[did] = outcome
        self._claims.release(did)  # the outcome keeps what is still worth keeping
        self._unfinished -= 1
        self._check_idle()

    def _check_idle(self) -> None:
        if self._unfinished == 0 and not self._lazy:
            assert self._idle is not None
            self._idle.set()

    async def _worker(self) -> None:
        assert self._ctx is not None
        ctx = self._ctx
        me = asyncio.current_task()
        assert me is not None
        while True:
            did, planned = await self._take()
            task = asyncio.create_task(transfer.download(ctx, planned), name=f"rheo_nb:{did}")
            self._running[did] = task
            try:
                # Awaiting the task itself (cheaper than asyncio.wait for every file) also
                # passes a cancel of this worker on to the download.
                await task
            except BaseException:
                if me.cancelling():  # this worker is stopping, not just this download
                    task.cancel()
                    while not task.done():  # its cleanup is short; a second cancel waits too
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.wait((task,))
                    self._settle(did, planned, task)
                    raise
            finally:
                self._running.pop(did, None)
            self._settle(did, planned, task)

    def _settle(self, did: str, p: Planned, task: asyncio.Task[Outcome]) -> None:
        if did in self._outcomes:
            return
        if task.cancelled():
            info = self.tracker.downloads.get(did)
            if info is not None and not info.status.finished:  # cancelled before it ran
                self._emit(Cancelled(did, p.display_url, p.final, info.bytes))
            nbytes = info.bytes if info else 0
            elapsed = info.elapsed if info else 0.0
            outcome = Outcome(
                p.display_url, p.final, Status.CANCELLED, nbytes, elapsed, "cancelled", did, p.file
            )
        elif (exc := task.exception()) is not None:
            # A bug, not a download problem: report it on this file, keep the batch going.
            log.error("internal error downloading %s", p.display_url, exc_info=exc)
            # Its text may quote a request URL, with a password or an API key in it.
            text = format.mask_urls_in(str(exc), auth.secret_params(self.options.auth))
            error = f"{p.display_url}: internal error ({type(exc).__name__}: {text})"
            self._emit(Failed(did, p.display_url, p.final, error, 0.0))
            outcome = Outcome(p.display_url, p.final, Status.FAILED, 0, 0.0, error, did, p.file)
        else:
            outcome = task.result()
        self._done(did, outcome)


@dataclass(slots=True)
class _Lazy:
    """A lazy source of items, read as the downloads go."""

    files: Iterator[File]
    #: Items announced to the tracker (the source's length) and not yet read.
    announced: int


def _read_into(batch: list[File], files: Iterator[File], n: int) -> None:
    """Append up to ``n`` items of ``files`` to ``batch``, one at a time: when the source
    raises, what it yielded before stays in ``batch``. Blocking."""
    for file in islice(files, n):
        batch.append(file)  # noqa: PERF402 - list() would drop them when the source raises


def _workers(concurrency: int) -> int:
    """Workers for ``concurrency``, bounded by the open-file limit.

    Each running download holds up to three descriptors (its socket, its part file, its
    lock); above the soft ``RLIMIT_NOFILE`` (256 by default on macOS) opening more would
    fail with "Too many open files" instead of waiting its turn.
    """
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return concurrency
    if soft == resource.RLIM_INFINITY:
        return concurrency
    return max(1, min(concurrency, (soft - _RESERVED_FDS) // 3))


#: Descriptors left to the rest of the process (the loop, the lane, the caller's files).
_RESERVED_FDS = 64


def _remove_workdirs(folders: list[Path]) -> None:
    for folder in folders:
        files.remove_workdir(folder)


def _prepare_dest(dest: Path) -> Path:
    """Create ``dest`` and prove it writable, before any request is made. Blocking.

    :raises DestinationError: saying in words what is wrong and what to do.
    """
    try:
        if dest.exists() and not dest.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(dest))
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest, prefix=".rheo_nb-probe-"):
            pass
    except OSError as exc:
        raise DestinationError(str(dest), _dest_problem(dest, exc)) from exc
    return Path(os.path.realpath(dest))


def _dest_problem(dest: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        # dest itself, or a folder above it, is a file.
        blocker = next((p for p in (dest, *dest.parents) if p.exists() and not p.is_dir()), dest)
        where = "it" if blocker == dest else f"{blocker}, a folder above it,"
        return f"cannot be the destination folder: {where} is a file; choose another folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "cannot write there (permission denied); choose a folder you can write to"
    if exc.errno == errno.EROFS:
        return "cannot write there (read-only file system); choose another folder"
    if exc.errno == errno.ENOSPC:
        return "cannot write there (no space left on the device); free some space"
    return f"cannot be used as the destination folder ({exc.strerror or exc})"
