"""Run a coroutine from synchronous code, also when the calling thread already runs a loop.

A notebook cell runs inside the kernel's event loop, where ``asyncio.run`` refuses to
start. Rather than patching that loop, the coroutine runs on a private loop in a worker
thread while the caller waits. The wait is interruptible: a ``KeyboardInterrupt`` (the
kernel's interrupt button, Ctrl-C) cancels the coroutine, waits briefly for its cleanup
(partials flushed, connections closed) and is re-raised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: How long an interrupted caller waits for the cancelled work to clean up.
CLEANUP_GRACE = 10.0
_POLL = 0.05


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
            self.future.set_result(asyncio.run(main()))
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
        """Wait for the result; an interrupt while waiting cancels the work and re-raises."""
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

    With no loop running in this thread: ``asyncio.run``. Inside a running loop (a
    notebook cell): on a private loop in a worker thread, the caller blocking meanwhile.
    """
    if not in_running_loop():
        return asyncio.run(make_coro())
    return LoopThread(make_coro, name="rheo_nb-sync").result()
