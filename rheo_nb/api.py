"""The facade: ``fetch`` (await), ``fetch_sync`` (blocking) and ``start`` (background).

All three run the same coroutine, :func:`fetch`; the other two only decide which loop
and thread it runs on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator
from typing import Any

import aiohttp

from .client import ClientFactory
from .display import Display, ProgressArg, choose
from .items import File, Items, as_files
from .manager import DownloadManager
from .options import Options
from .results import Results
from .runner import LoopThread, run_sync

Dest = str | os.PathLike[str]
Client = aiohttp.ClientSession | ClientFactory | None


async def fetch(
    items: Items,
    dest: Dest = ".",
    *,
    concurrency: int = 8,
    retries: int = 3,
    timeout: float = 30.0,  # noqa: ASYNC109 - per read, not a deadline for the call
    overwrite: bool = False,
    progress: ProgressArg = "auto",
    headers: dict[str, str] | None = None,
    client: Client = None,
    **options: Any,
) -> Results:
    """Download ``items`` into ``dest`` and return one outcome per file.

    >>> results = await rheo_nb.fetch(["https://example.org/a.csv"], dest="data")  # doctest: +SKIP
    >>> results.raise_for_errors().paths                                            # doctest: +SKIP
    [PosixPath('/home/me/data/a.csv')]

    ``items``: URL strings, :class:`File` objects, a mapping ``{url: "sha256:…"}``, or
    outcomes of an earlier call (``results.failed``). ``dest`` is created when missing.
    ``timeout`` is how long to wait for a connection or for the next bytes of a body.
    Files already complete at their path are skipped (``overwrite=True`` replaces them);
    partial files left by an interrupted run are resumed. One bad item never stops the
    others: its outcome says what went wrong. More options: :class:`Options`.

    Runs on the caller's event loop (top-level ``await`` in a notebook cell).
    Cancelling the call stops every download, keeps resumable partials and re-raises.

    :raises DestinationError: ``dest`` cannot be created or written (before any request).
    :raises OptionError: an option has an unusable value.
    """
    return await _run(
        *_prepare(
            items,
            dest,
            progress,
            client,
            concurrency=concurrency,
            retries=retries,
            timeout=timeout,
            overwrite=overwrite,
            headers=headers,
            **options,
        )
    )


def _prepare(
    items: Items, dest: Dest, progress: ProgressArg, client: Client, **options: Any
) -> tuple[DownloadManager, list[File], Display | None]:
    manager = DownloadManager(dest, Options.build(**options), client=client)
    return manager, as_files(items), choose(progress)


async def _run(manager: DownloadManager, files: list[File], display: Display | None) -> Results:
    ids: list[str] = []
    opened = interrupted = False
    try:
        async with manager:
            if display is not None:
                display.open(manager)
                opened = True
            ids = await manager.add(files)
            await manager.wait()
    except BaseException:
        interrupted = True
        raise
    finally:
        if opened and display is not None:
            display.close(manager.results(ids), interrupted=interrupted)
    return manager.results(ids)


def fetch_sync(items: Items, dest: Dest = ".", **options: Any) -> Results:
    """Blocking :func:`fetch`, same arguments: for scripts, and for notebook cells too.

    >>> results = rheo_nb.fetch_sync(urls, dest="data")  # doctest: +SKIP

    Inside a running event loop (a notebook cell) the downloads run on a private loop in
    a worker thread while the cell waits; the kernel's interrupt button stops them
    (partials are kept for a resume) and raises ``KeyboardInterrupt``.
    """
    return run_sync(lambda: fetch(items, dest, **options))


class Job:
    """Downloads running in the background; returned by :func:`start`.

    >>> job = rheo_nb.start(urls, dest="data")   # doctest: +SKIP
    >>> job.done(), job.results_so_far           # doctest: +SKIP
    >>> results = await job                      # or job.result() from sync code

    The work runs on a private event loop in a worker thread, so neither a busy cell nor a
    blocked kernel loop slows it down, and ``job.result()`` can block a cell safely.
    """

    def __init__(self, items: Items, dest: Dest, options: dict[str, Any]) -> None:
        progress = options.pop("progress", "auto")
        client = options.pop("client", None)
        self._manager, files, self._display = _prepare(items, dest, progress, client, **options)
        self._thread: LoopThread[Results] = LoopThread(
            lambda: _run(self._manager, files, self._display), name="rheo_nb-job"
        )

    @property
    def manager(self) -> DownloadManager:
        """The engine of this job (events: ``job.manager.on(...)``; totals: ``.stats``)."""
        return self._manager

    @property
    def display(self) -> Any:
        return self._display

    def done(self) -> bool:
        return self._thread.done()

    def cancel(self) -> None:
        """Stop every download (thread-safe, returns at once); partials are kept."""
        self._thread.cancel()

    def result(self, timeout: float | None = None) -> Results:
        """Wait for the outcomes. :raises TimeoutError: still running after ``timeout`` s;
        ``asyncio.CancelledError`` when the job was cancelled."""
        return self._thread.result(timeout)

    @property
    def results_so_far(self) -> Results:
        return self._manager.results()

    def __await__(self) -> Generator[Any, None, Results]:
        return asyncio.wrap_future(self._thread.future).__await__()

    def _ipython_display_(self) -> None:
        display = getattr(self._display, "_ipython_display_", None)
        if display is not None:
            display()
        else:
            print(repr(self))

    def __repr__(self) -> str:
        s = self._manager.stats
        state = "done" if self.done() else "running"
        return f"<Job {state}: {s.finished}/{s.files} files finished, {s.failed} failed>"


def start(items: Items, dest: Dest = ".", **options: Any) -> Job:
    """Start downloading in the background and return a :class:`Job` at once.

    >>> job = rheo_nb.start(urls, dest="data")   # doctest: +SKIP
    >>> job                                     # in a notebook: its live progress widget
    >>> results = await job

    Same options as :func:`fetch`.
    """
    return Job(items, dest, dict(options))
