"""The facade: ``fetch`` (await), ``fetch_sync`` (blocking) and ``start`` (background).

All three run the same coroutine; ``fetch_sync`` and ``start`` only decide which loop and
thread it runs on. :func:`fetch`'s signature is the one list of options: the other two
take theirs from it (what ``help()``, Shift-Tab in a notebook and type checkers show), and
a test pins its names and defaults to :class:`~rheo_nb.Options`. A new option is a field
of ``Options`` and one line in ``fetch``'s signature.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeAlias, TypeVar, cast

import aiohttp

from . import format, objstore
from .auth import AuthArg
from .client import SESSION_OPTIONS, ClientFactory, NetrcArg, Verify
from .display import Display, ProgressArg, choose
from .display.view import fraction, percent
from .errors import OptionError
from .events import Status
from .items import Items, as_files, count, in_memory
from .manager import DownloadManager
from .objstore import ObjectPath
from .options import Options, check_names
from .options import storage_options as checked_storage_options
from .results import Results
from .runner import LoopThread, run_sync

if TYPE_CHECKING:  # the cluster module is imported by a call that asks for a cluster
    from .cluster import ClusterArg, ClusterRun

Dest = str | os.PathLike[str]
Client = aiohttp.ClientSession | ClientFactory | None

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def _checked(fn: F) -> F:
    """Answer a misspelt keyword with a suggestion (``concurency=4``: did you mean
    concurrency?) instead of Python's bare ``TypeError``."""
    names = set(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_names(kwargs, names - {"items", "dest"}, f"{fn.__name__}()")
        return await fn(*args, **kwargs)

    return cast(F, wrapper)


@_checked
async def fetch(
    items: Items,
    dest: Dest = ".",
    *,
    concurrency: int = 8,
    retries: int = 3,
    timeout: float = 30.0,  # noqa: ASYNC109 - per read, not a deadline for the call
    total_timeout: float | None = None,
    overwrite: bool = False,
    segments: int | Literal["auto"] = "auto",
    headers: Mapping[str, str] | None = None,
    auth: AuthArg = None,
    cookies: Mapping[str, str] | None = None,
    max_size: int | None = None,
    backoff: float = 0.5,
    backoff_max: float = 30.0,
    retry_after_max: float = 120.0,
    low_speed_limit: int = 1024,
    low_speed_time: float = 30.0,
    max_redirects: int = 10,
    chunk_size: int = 1 << 20,
    progress_interval: float = 0.1,
    content_disposition: bool = False,
    extract: bool = False,
    extract_remove: bool = False,
    max_extract_size: int | None = None,
    max_extract_files: int = 1_000_000,
    offline: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    max_rate: int | float | str | None = None,
    max_rate_per_host: int | float | str | None = None,
    requests_per_second: float | None = None,
    verify: Verify = True,
    proxy: str | None = None,
    trust_env: bool = True,
    netrc: NetrcArg = None,
    limit: int | None = None,
    limit_per_host: int | None = None,
    cluster: ClusterArg = None,
    shard_size: int | None = None,
    client: Client = None,
    progress: ProgressArg = "auto",
) -> Results:
    """Download ``items`` into ``dest`` and return one outcome per file.

    >>> results = await rheo_nb.fetch(["https://example.org/a.csv"], dest="data")  # doctest: +SKIP
    >>> results.raise_for_errors().paths                                            # doctest: +SKIP
    [PosixPath('/home/me/data/a.csv')]

    ``items``: URL strings, :class:`File` objects, a mapping ``{url: "sha256:…"}``, or
    outcomes of an earlier call (``results.failed``). ``dest`` is created when missing.
    It may be a bucket, ``"s3://bucket/prefix"``: each file then streams into an object
    under the prefix, configured by ``storage_options`` (fsspec's, as for pandas:
    ``endpoint_url``, ``key``/``secret``, ``profile``…; without them the standard AWS
    credential chains apply), and its path is the object's ``s3://`` URL.
    Files already complete at their path are skipped (``overwrite=True`` replaces them);
    partial files left by an interrupted run are resumed. One bad item never stops the
    others: its outcome says what went wrong.

    The download options (``concurrency``, ``retries``, ``timeout``, ``segments``…) are
    the fields of :class:`Options`, which says what each does; their defaults are its.

    Private sources: ``auth`` takes ``(user, password)``, :class:`BearerToken`,
    :class:`ApiKey`, :class:`DigestAuth` or :class:`OAuth2ClientCredentials`; ``headers``
    and ``cookies`` go with every request. All of them reach only the origin of each
    file's URL, never a host a redirect leads to.

    Being a good citizen: ``max_rate`` caps the bytes per second of the whole call
    (``"20MB/s"``, ``"500KiB/s"``, ``"20M"`` as curl spells it), ``max_rate_per_host``
    those of each origin, and ``requests_per_second`` spaces the requests to each origin.
    An origin that answers 429 or 503 is given fewer connections, and one that asks for
    a pause (``Retry-After``, a spent ``RateLimit`` quota) gets it.

    >>> await rheo_nb.fetch(urls, max_rate="20MB/s", requests_per_second=5)  # doctest: +SKIP

    The session: ``verify`` (``True``, a CA file, ``"system"``, an ``SSLContext``, or
    ``False``, which warns), ``proxy``, ``trust_env``, ``netrc`` and the connection limits
    ``limit`` (default: ``max(100, concurrency)``) and ``limit_per_host`` (default:
    ``concurrency``) are those of :class:`ClientFactory`; ``client`` takes a ready
    ``aiohttp.ClientSession`` (used as is, never closed) or a ``ClientFactory`` instead.

    ``cluster``: run the same call on a Dask cluster: a ``dask.distributed.Client``,
    ``"local"`` (a ``LocalCluster`` with a worker process per core, closed at the end) or
    a scheduler's address (``"tcp://scheduler:8786"``); needs ``rheo_nb[cluster]``. The
    files are cut into shards of ``shard_size`` (default: several per worker), each
    downloaded on a worker with these options (``concurrency`` downloads at once on each);
    ``dest`` must be a folder every worker can write at the same path, and
    ``limit_per_host`` holds for the whole cluster. Progress, results and cancelling work
    as for a local call.

    >>> await rheo_nb.fetch(urls, "/shared/data", cluster="tcp://sched:8786")  # doctest: +SKIP

    ``progress``: ``"auto"`` (a widget in a notebook, text on stderr elsewhere),
    ``"text"``, ``"notebook"``, ``False``, or an object with ``open(manager)`` and
    ``close(results, *, interrupted)`` methods.

    >>> token = rheo_nb.BearerToken(os.environ["TOKEN"])
    >>> await rheo_nb.fetch(urls, auth=token, verify="corp-ca.pem")  # doctest: +SKIP

    Runs on the caller's event loop (top-level ``await`` in a notebook cell).
    Cancelling the call stops every download, keeps resumable partials and re-raises.
    The progress widget's Cancel button stops every download too; the call then returns,
    the unfinished files marked cancelled.

    :raises DestinationError: ``dest`` cannot be created or written, or its bucket does
        not exist or refuses the credentials (before any download).
    :raises OptionError: an option has an unusable value, or no option has that name.
    """
    return await _run(*_prepare(locals()))


#: What runs a call: its downloads here, or its shards on a Dask cluster.
Engine: TypeAlias = "DownloadManager | ClusterRun"
Prepared: TypeAlias = "tuple[Engine, Items, Display | None]"


def _prepare(call: dict[str, Any]) -> Prepared:
    """The engine, the items and the display of one call, from ``fetch``'s arguments by
    name. Runs on the caller's thread, so a bad option fails there, and a warning points
    at the caller's line."""
    options = dict(call)
    items, dest = options.pop("items"), options.pop("dest")
    display = choose(options.pop("progress"))
    client = options.pop("client")
    cluster, shard_size = options.pop("cluster"), options.pop("shard_size")
    session = {k: v for k in SESSION_OPTIONS if (v := options.pop(k)) != _SESSION_DEFAULTS[k]}
    if cluster is None:
        if shard_size is not None:
            raise OptionError("shard_size= cuts a call into shards for a cluster: give cluster=")
        manager = DownloadManager(dest, Options.build(**options), client=client, **session)
        # Items in memory are checked here, on the caller's thread; a lazy source (a
        # Parquet manifest) goes to the manager as it is, read as the downloads go.
        return manager, as_files(items) if in_memory(items) else items, display
    if client is not None:
        raise OptionError(
            "client= is a session of this process, which a cluster's workers cannot use: "
            "give verify=, proxy=, limit_per_host=… instead, for each worker's own session"
        )
    from .cluster import ClusterRun

    run = ClusterRun(
        dest, Options.build(**options), cluster=cluster, shard_size=shard_size, session=session
    )
    # Read shard by shard on the cluster: a long or lazy input is never held whole here.
    return run, items, display


def _bind(where: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``fetch``'s arguments by name, for a call of ``where`` with ``fetch``'s parameters."""
    check_names(kwargs, set(_SIGNATURE.parameters) - {"items", "dest"}, f"{where}()")
    bound = _SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


async def _run(
    manager: Engine, files: Items, display: Display | None, *, shown: bool = False
) -> Results:
    opened = interrupted = False
    try:
        async with manager:
            if display is not None:
                display.open(manager)
                opened = True
            await manager.add(files)
            await manager.wait()
    except BaseException:
        interrupted = True
        raise
    finally:
        # A display shown before the run (start()) is closed even when the run failed
        # before opening it, so it never stays at "starting…".
        if display is not None and (opened or shown):
            display.close(manager.results(), interrupted=interrupted)
    return manager.results()


def _with_options_of(template: Callable[P, Any]) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Give the decorated function ``template``'s parameters: for ``help()`` and Shift-Tab
    (its ``__signature__``) and for type checkers (its type). Its body takes
    ``*args, **kwargs`` and hands them to :func:`_bind`."""

    def decorate(fn: Callable[..., R]) -> Callable[P, R]:
        returns = inspect.signature(fn).return_annotation
        fn.__signature__ = _SIGNATURE.replace(return_annotation=returns)  # type: ignore[attr-defined]
        return cast(Callable[P, R], fn)

    return decorate


_SIGNATURE = inspect.signature(fetch)
_SESSION_DEFAULTS = {k: _SIGNATURE.parameters[k].default for k in SESSION_OPTIONS}


def _stopped(manager: Engine) -> str:
    """What an interrupted blocking call says: what is done, what is kept, how to resume."""
    stats = manager.stats  # counts the files of a cluster call not read yet, too
    kept = sum(1 for o in manager.results() if o.status is Status.CANCELLED and o.bytes)
    where = f" in {manager.dest}" if kept else ""
    return (
        f"downloads stopped: {stats.done} of {stats.files} files done, "
        f"{kept} partial file{'s' if kept != 1 else ''} kept{where}; run it again to resume"
    )


@_with_options_of(fetch)
def fetch_sync(*args: Any, **kwargs: Any) -> Results:
    """Blocking :func:`fetch`, same arguments: for scripts, and for notebook cells too.

    >>> results = rheo_nb.fetch_sync(urls, dest="data")  # doctest: +SKIP

    Inside a running event loop (a notebook cell) the downloads run on a private loop in
    a worker thread while the cell waits; the kernel's interrupt button stops them
    (partials are kept for a resume) and raises ``KeyboardInterrupt``, whose one line
    says what was done and how to resume. The progress widget updates live but has no
    Cancel button there: a busy kernel cannot handle a click until the cell ends.
    """
    manager, files, display = _prepare(_bind("fetch_sync", args, kwargs))
    try:
        return run_sync(lambda: _run(manager, files, display))
    except KeyboardInterrupt:
        # A new exception, without the frames of the loop and threads it crossed: the
        # traceback shows the caller's line and this one, then what was done and kept.
        raise KeyboardInterrupt(_stopped(manager)) from None


class Job:
    """Downloads running in the background; returned by :func:`start`.

    >>> job = rheo_nb.start(urls, dest="data")   # doctest: +SKIP
    >>> job.done(), job.results_so_far           # doctest: +SKIP
    >>> results = await job                      # or job.result() from sync code  # doctest: +SKIP

    The work runs on a private event loop in a worker thread, so neither a busy cell nor a
    blocked kernel loop slows it down, and ``job.result()`` can block a cell safely. In a
    notebook its progress widget sits in the cell that called :func:`start` and keeps
    updating while other cells run; its Cancel button calls :meth:`cancel`.
    """

    def __init__(self, manager: Engine, files: Items, display: Display | None) -> None:
        self._manager, self._display = manager, display
        self._asked = count(files) or 0
        show = getattr(self._display, "show", None)
        if callable(show):
            # Here, on the caller's thread: the widget must land in the cell that started
            # the job, and its Cancel button must stop this job.
            show(cancel=self.cancel)
        self._thread: LoopThread[Results] = LoopThread(
            lambda: _run(self._manager, files, self._display, shown=callable(show)),
            name="rheo_nb-job",
        )

    @property
    def manager(self) -> Engine:
        """The engine of this job (events: ``job.manager.on(...)``; totals: ``.stats``):
        its :class:`DownloadManager`, or with ``cluster=`` its
        :class:`~rheo_nb.cluster.ClusterRun`.

        Handlers run on the job's thread; events that fired before you subscribed are
        already counted in ``job.manager.stats``.
        """
        return self._manager

    @property
    def display(self) -> Display | None:
        """The progress display of this job (``None`` with ``progress=False``)."""
        return self._display

    def done(self) -> bool:
        """True once every download has finished, or the job was cancelled or failed."""
        return self._thread.done()

    def cancel(self) -> None:
        """Stop every download (thread-safe, returns at once); partials are kept.

        Awaiting the job, or ``job.result()``, then raises ``asyncio.CancelledError``;
        ``job.results_so_far`` has the outcomes, the unfinished files marked cancelled.
        """
        self._thread.cancel()

    def result(self, timeout: float | None = None) -> Results:
        """Block until the job ends and return its outcomes.

        From a notebook cell too: the job runs on its own thread, so waiting cannot
        deadlock. Interrupting the wait (the kernel's ■ button, Ctrl-C) cancels the job.

        :raises TimeoutError: still running after ``timeout`` seconds (the job goes on).
        :raises asyncio.CancelledError: the job was cancelled.
        :raises KeyboardInterrupt: the wait was interrupted (the job is cancelled).
        """
        try:
            return self._thread.result(timeout)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(_stopped(self._manager)) from None

    @property
    def results_so_far(self) -> Results:
        """Outcomes of the files finished so far, in the order given."""
        return self._manager.results()

    def __await__(self) -> Generator[Any, None, Results]:
        return self._wait().__await__()

    async def _wait(self) -> Results:
        try:
            return await asyncio.wrap_future(self._thread.future)
        except asyncio.CancelledError:
            # The awaiting cell was interrupted or cancelled: like job.result(), stop the job
            # too (a no-op when the job itself was what got cancelled).
            self.cancel()
            raise

    def _ipython_display_(self) -> None:
        display = getattr(self._display, "_ipython_display_", None)
        if callable(display):
            display()
        else:
            print(repr(self))

    def __repr__(self) -> str:
        """``<Job running: 1/4 files done · 2 running · 1 queued · 6.0 MiB of 16.0 MiB (37%)>``"""
        s = self._manager.stats
        if not self.done() and s.files == 0:
            return f"<Job starting: {self._asked} file{'s' if self._asked != 1 else ''} queued>"
        state = "running"
        if self.done():
            future = self._thread.future
            state = "cancelled" if future.cancelled() else "done"
            if not future.cancelled() and isinstance(future.exception(), asyncio.CancelledError):
                state = "cancelled"
            elif not future.cancelled() and future.exception() is not None:
                state = "failed"
        if s.files == 0:  # stopped before its files were queued
            return f"<Job {state}: 0/{self._asked} files done>"
        parts = [f"{s.done}/{s.files} files done"]
        parts += [
            f"{n} {word}"
            for n, word in (
                (s.running, "running"),
                (s.queued, "queued"),
                (s.failed, "failed"),
                (s.cancelled, "cancelled"),
            )
            if n
        ]
        size = format.size(s.bytes_done)
        if s.bytes_total is not None:
            size += f" of {format.size(s.bytes_total)}"
        if state == "running":
            size += f" ({percent(fraction(s, self._manager.tracker.active(s.running)))})"
        return f"<Job {state}: {' · '.join([*parts, size])}>"


@_with_options_of(fetch)
def start(*args: Any, **kwargs: Any) -> Job:
    """Start downloading in the background and return a :class:`Job` at once.

    >>> job = rheo_nb.start(urls, dest="data")   # doctest: +SKIP
    >>> job                          # <Job running: 1/4 files done · …>  # doctest: +SKIP
    >>> job.cancel()                             # or the widget's Cancel button  # doctest: +SKIP
    >>> results = await job                      # or job.result()  # doctest: +SKIP

    Same arguments as :func:`fetch`. The downloads run on a private event loop in a
    worker thread, in a notebook as in a script, so the kernel stays free for other cells
    and a blocking cell (training a model, ``time.sleep``) does not stall them. In a
    notebook the progress widget appears in the calling cell right away.

    Two calls never write the same file at once: a later call (another job, a re-run
    cell, ``fetch``) waits for the earlier writer of a file, then finds it complete and
    reports it ``skipped``; when the earlier one was cancelled, it resumes the partial.

    :raises OptionError: an option has an unusable value, or no option has that name
        (at once, before the job starts).
    """
    return Job(*_prepare(_bind("start", args, kwargs)))


def clean(dest: str, *, storage_options: Mapping[str, Any] | None = None) -> list[ObjectPath]:
    """Abort the multipart uploads that interrupted downloads left under ``dest`` (an
    ``s3://bucket/prefix``), and return the objects they were for.

    A cancelled download into a bucket keeps its upload so that a rerun resumes it; an
    upload is billed until completed or aborted, and listings do not show it. This gives
    up on them (uploads of other tools are left alone). Blocking; works in a notebook too.

    >>> rheo_nb.clean("s3://my-bucket/data", storage_options={"profile": "lab"})  # doctest: +SKIP
    [ObjectPath('s3://my-bucket/data/imagenet/train.tar')]

    :raises OptionError: ``dest`` is not an ``s3://`` URL (a local folder's partial files
        are in its hidden ``.rheo_nb/`` folders).
    :raises DestinationError: the bucket does not exist, refuses the credentials, or is
        out of reach.
    """
    options = checked_storage_options({} if storage_options is None else storage_options)
    target = ObjectPath.of(dest) if isinstance(dest, str) and "://" in dest else None
    if target is None:
        raise OptionError(
            f"clean takes an s3:// destination, not {dest!r}: a local folder's partial "
            "files are in its hidden .rheo_nb/ folders"
        )
    return run_sync(lambda: objstore.clean(target, options))
