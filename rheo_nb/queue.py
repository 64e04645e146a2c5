"""The download queue: higher priority first, first in first out within a priority.

An id is queued at most once at a time; removing an id (a cancelled download) is lazy,
so it costs nothing until a worker would have picked it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class PriorityQueue(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str, T]] = []
        # id -> counter of its live heap entry: an entry left behind by remove() is stale
        # even when the id is queued again later.
        self._queued: dict[str, int] = {}
        self._counter = itertools.count()
        self._waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._queued

    def put(self, item_id: str, item: T, priority: int = 0) -> bool:
        """Queue ``item``; return False when ``item_id`` is already queued."""
        if item_id in self._queued:
            return False
        count = self._queued[item_id] = next(self._counter)
        heapq.heappush(self._heap, (-priority, count, item_id, item))
        self.wake()
        return True

    def wake(self) -> None:
        """Wake every waiter (an item was put, or more may come from elsewhere): the
        losers simply wait again, and no wake-up is lost when a woken worker is cancelled
        before it takes the item."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def remove(self, item_id: str) -> bool:
        """Drop a queued id; return False when it was not queued."""
        if item_id not in self._queued:
            return False
        del self._queued[item_id]
        return True

    def get_nowait(self) -> tuple[str, T] | None:
        while self._heap:
            _, count, item_id, item = heapq.heappop(self._heap)
            if self._queued.get(item_id) == count:
                del self._queued[item_id]
                return item_id, item
        return None

    async def get(self) -> tuple[str, T]:
        while True:
            entry = self.get_nowait()
            if entry is not None:
                return entry
            await self.wait()

    async def wait(self) -> None:
        """Until the next :meth:`put` or :meth:`wake`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)
