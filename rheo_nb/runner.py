"""Crossing between threads and event loops, both ways.

* :func:`run_sync` / :class:`LoopThread`: run a coroutine from synchronous code, also when
  the calling thread already runs a loop. A notebook cell runs inside the kernel's event
  loop, where ``asyncio.run`` refuses to start. Rather than patching that loop, the
  coroutine runs on a private loop in a worker thread while the caller waits. The wait is
  interruptible: a ``KeyboardInterrupt`` (the kernel's interrupt button, Ctrl-C) cancels
  the coroutine, waits briefly for its cleanup (partials flushed, connections closed) and
  is re-raised.
* :class:`ThreadLane`: run blocking calls (filesystem work) for one event loop on a few
  threads, handing results back in batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: How long an interrupted caller waits for the cancelled work to clean up.
CLEANUP_GRACE = 10.0
_POLL = 0.05


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A loop for rheo_nb's own use: uvloop's when it is installed (the ``speed`` extra;
    about 12% faster for many small files and for large ones, measured in
    ``benchmarks/``), asyncio's otherwise or when ``RHEO_NB_UVLOOP=0``.

    Only loops rheo_nb creates itself use it; ``await fetch(...)`` runs on the caller's.
    """
    if os.environ.get("RHEO_NB_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on :func:`new_event_loop` (Ctrl-C still cancels the coroutine)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


def in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LoopThread(Generic[T]):
    """A coroutine running on its own event loop in a daemon thread."""

    def __init__(self, make_coro: Callable[[], Coroutine[Any, Any, T]], name: str) -> None:
        self._make_coro = make_coro
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        # Running from the start: a waiter (asyncio.wrap_future) that is cancelled must not
        # cancel the future under the thread, whose set_result would then raise.
        self.future.set_running_or_notify_cancel()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        async def main() -> T:
            self._task = asyncio.current_task()
            self._loop = asyncio.get_running_loop()
            self._started.set()
            return await self._make_coro()

        try:
            self.future.set_result(run(main()))
        except BaseException as exc:  # delivered to the waiting thread, never lost
            self.future.set_exception(exc)
        finally:
            self._started.set()

    def cancel(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile: nothing left to cancel
                pass

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> T:
        """Wait for the result; an interrupt while waiting cancels the work and re-raises.

        :raises RuntimeError: called from the work's own thread (an event handler or a
            display of the job), where waiting would wait forever.
        """
        if threading.current_thread() is self._thread and not self.future.done():
            raise RuntimeError(
                "cannot wait for a job from inside it (an event handler or a display of "
                "the job runs on the job's own thread); use job.done() there, or "
                "subscribe to 'completed' / 'failed' events"
            )
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            # Short waits keep the thread responsive to KeyboardInterrupt.
            while not self.future.done():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"still running after {timeout} s")
                try:
                    return self.future.result(_POLL if remaining is None else min(_POLL, remaining))
                except concurrent.futures.TimeoutError:
                    continue
            return self.future.result()
        except KeyboardInterrupt:
            self.cancel()
            try:
                self.future.exception(CLEANUP_GRACE)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                pass
            raise


def run_sync(make_coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine made by ``make_coro`` to completion and return its result.

    With no loop running in this thread: on a new loop here (:func:`run`). Inside a running loop (a
    notebook cell): on a private loop in a worker thread, the caller blocking meanwhile.
    """
    if not in_running_loop():
        return run(make_coro())
    return LoopThread(make_coro, name="rheo_nb-sync").result()


_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class ThreadLane:
    """Blocking calls for one event loop, run on a few threads; results come back in batches.

    ``loop.run_in_executor`` costs two wake-ups and a chain of futures per call; for many
    small files (two short filesystem steps each) that overhead measured more than the
    steps themselves. Here a call is a queue entry, and a worker that finishes while the
    loop has not yet collected earlier results adds to the same hand-back, so a busy loop
    takes many results per wake-up.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int = 4) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._wake_pending = False
        self._threads = [
            threading.Thread(target=self._work, name=f"rheo_nb-files-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on a lane thread; the future resolves on the lane's loop.

        Cancelling the future does not stop a call already running.
        """
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fut, fn, args))
        return fut

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a lane thread and wait for it, even through a cancellation.

        For calls that write through a file descriptor: returning early on cancel would
        let the caller close the descriptor while the thread still writes to it. The
        cancellation is re-raised once the call is done (these calls are short).
        """
        fut = self.submit(fn, *args)
        cancelled = False
        while not fut.done():
            try:
                await asyncio.wait((fut,))
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        return fut.result()

    async def run_interruptible(
        self, fn: Callable[[threading.Event], T], *, wait: bool = False
    ) -> T:
        """Run ``fn(stop)`` on a lane thread; a cancellation sets ``stop`` and returns at once.

        For long reads (hashing a multi-GB file) that may be abandoned midway: ``fn``
        checks ``stop`` between blocks, so the thread is free again moments later.
        ``wait``: on a cancellation, wait for ``fn`` to notice ``stop`` and clean up before
        the cancellation goes on (for work that must not be seen half undone, such as an
        extraction removing its temporary folder).
        """
        stop = threading.Event()
        fut = self.submit(fn, stop)
        try:
            if not wait:
                return await fut
            await asyncio.wait((fut,))  # not ``await fut``: a cancel would cancel fut too
            return fut.result()
        except asyncio.CancelledError:
            stop.set()
            while wait and not fut.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((fut,))
            if fut.done() and not fut.cancelled():
                fut.exception()  # how it stopped does not matter now: the cancel goes on
            raise

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn, args = job
            try:
                entry = (fut, True, fn(*args))
            except BaseException as exc:  # handed to the awaiting task, never lost
                entry = (fut, False, exc)
            self._done.append(entry)
            # deque appends and a bool read are atomic under the GIL; _deliver clears the
            # flag before it drains, so an entry is never left behind without a wake-up.
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return

    def _deliver(self) -> None:
        self._wake_pending = False
        done = self._done
        while done:
            fut, ok, value = done.popleft()
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def close(self) -> None:
        """Let the threads finish the calls queued so far, then end."""
        for _ in self._threads:
            self._jobs.put(None)
