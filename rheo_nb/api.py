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

from .auth import AuthArg
from .client import ClientFactory
from .display import Display, ProgressArg, choose
from .items import File, Items, as_files
from .manager import DownloadManager
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
    auth: AuthArg = None,
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

    Private sources: ``auth`` takes ``(user, password)``, :class:`BearerToken`,
    :class:`ApiKey`, :class:`DigestAuth` or :class:`OAuth2ClientCredentials`; ``headers``
    and ``cookies=`` go with every request. All of them reach only the origin of each
    file's URL, never a host a redirect leads to. The session options ``verify``
    (CA file, ``"system"``, ``SSLContext``), ``proxy``, ``trust_env`` and ``netrc`` are
    those of :class:`ClientFactory`.

    >>> token = rheo_nb.BearerToken(os.environ["TOKEN"])
    >>> await rheo_nb.fetch(urls, auth=token, verify="corp-ca.pem")  # doctest: +SKIP

    Runs on the caller's event loop (top-level ``await`` in a notebook cell).
    Cancelling the call stops every download, keeps resumable partials and re-raises.
    The progress widget's Cancel button stops every download too; the call then returns,
    the unfinished files marked cancelled.

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
            auth=auth,
            **options,
        )
    )


def _prepare(
    items: Items, dest: Dest, progress: ProgressArg, client: Client, **options: Any
) -> tuple[DownloadManager, list[File], Display | None]:
    manager = DownloadManager(dest, client=client, **options)
    return manager, as_files(items), choose(progress)


async def _run(
    manager: DownloadManager, files: list[File], display: Display | None, *, shown: bool = False
) -> Results:
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
        # A display shown before the run (start()) is closed even when the run failed
        # before opening it, so it never stays at "starting…".
        if display is not None and (opened or shown):
            display.close(manager.results(ids), interrupted=interrupted)
    return manager.results(ids)


def fetch_sync(items: Items, dest: Dest = ".", **options: Any) -> Results:
    """Blocking :func:`fetch`, same arguments: for scripts, and for notebook cells too.

    >>> results = rheo_nb.fetch_sync(urls, dest="data")  # doctest: +SKIP

    Inside a running event loop (a notebook cell) the downloads run on a private loop in
    a worker thread while the cell waits; the kernel's interrupt button stops them
    (partials are kept for a resume) and raises ``KeyboardInterrupt``. The progress
    widget updates live but has no Cancel button there: a busy kernel cannot handle a
    click until the cell ends.
    """
    return run_sync(lambda: fetch(items, dest, **options))


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

    def __init__(self, items: Items, dest: Dest, options: dict[str, Any]) -> None:
        progress = options.pop("progress", "auto")
        client = options.pop("client", None)
        self._manager, files, self._display = _prepare(items, dest, progress, client, **options)
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
    def manager(self) -> DownloadManager:
        """The engine of this job (events: ``job.manager.on(...)``; totals: ``.stats``).

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
        """
        return self._thread.result(timeout)

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
        s = self._manager.stats
        state = "done" if self.done() else "running"
        return f"<Job {state}: {s.finished}/{s.files} files finished, {s.failed} failed>"


def start(items: Items, dest: Dest = ".", **options: Any) -> Job:
    """Start downloading in the background and return a :class:`Job` at once.

    >>> job = rheo_nb.start(urls, dest="data")   # doctest: +SKIP
    >>> job.cancel()                             # or the widget's Cancel button  # doctest: +SKIP
    >>> results = await job                      # or job.result()  # doctest: +SKIP

    Same options as :func:`fetch`. The downloads run on a private event loop in a worker
    thread, in a notebook as in a script, so the kernel stays free for other cells and a
    blocking cell (training a model, ``time.sleep``) does not stall them. In a notebook
    the progress widget appears in the calling cell right away.

    Two calls never write the same file at once: a later call (another job, a re-run
    cell, ``fetch``) waits for the earlier writer of a file, then finds it complete and
    reports it ``skipped``; when the earlier one was cancelled, it resumes the partial.
    """
    return Job(items, dest, dict(options))
