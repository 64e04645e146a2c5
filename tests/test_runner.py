"""The thread lane's interruptible calls: what a cancel does to the work on the thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from rheo_nb.runner import ThreadLane


def slow_to_stop(entered: threading.Event, cleaned: list[str]) -> Callable[[threading.Event], None]:
    """Work that runs until told to stop, then takes a while to clean up after itself."""

    def work(stop: threading.Event) -> None:
        entered.set()
        while not stop.wait(0.01):
            pass
        time.sleep(0.2)  # removing what it wrote
        cleaned.append("done")
        raise RuntimeError("stopped midway")

    return work


@pytest.mark.parametrize("wait", [True, False])
async def test_a_cancel_waits_for_the_thread_to_clean_up_only_when_asked(wait: bool) -> None:
    lane = ThreadLane(asyncio.get_running_loop())
    entered, cleaned = threading.Event(), list[str]()
    try:
        task = asyncio.create_task(
            lane.run_interruptible(slow_to_stop(entered, cleaned), wait=wait)
        )
        assert await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # With wait, the cancel goes on once the thread is done (its error is dropped,
        # not left unretrieved); without, at once, while the thread still cleans up.
        assert cleaned == (["done"] if wait else [])
    finally:
        lane.close()


async def test_an_interruptible_call_returns_its_result_either_way() -> None:
    lane = ThreadLane(asyncio.get_running_loop())
    try:
        assert await lane.run_interruptible(lambda stop: 42, wait=True) == 42
        assert await lane.run_interruptible(lambda stop: 43) == 43
    finally:
        lane.close()
