"""The download queue: priority, FIFO within a priority, dedupe, lazy removal, waiting."""

from __future__ import annotations

import asyncio

from rheo_nb.queue import PriorityQueue


def drain(q: PriorityQueue[str]) -> list[str]:
    out = []
    while (entry := q.get_nowait()) is not None:
        out.append(entry[1])
    return out


def test_higher_priority_first_and_fifo_within_a_priority() -> None:
    q: PriorityQueue[str] = PriorityQueue()
    for item_id, prio in [("a", 0), ("b", 5), ("c", 1), ("d", 5), ("e", 0), ("f", -3)]:
        q.put(item_id, item_id.upper(), prio)
    assert drain(q) == ["B", "D", "C", "A", "E", "F"]


def test_an_id_is_queued_once() -> None:
    q: PriorityQueue[str] = PriorityQueue()
    assert q.put("a", "first")
    assert not q.put("a", "second", priority=9)
    assert len(q) == 1
    assert "a" in q
    assert drain(q) == ["first"]
    assert len(q) == 0
    assert "a" not in q


def test_an_id_can_be_queued_again_once_taken() -> None:
    q: PriorityQueue[str] = PriorityQueue()
    q.put("a", "first")
    assert drain(q) == ["first"]
    assert q.put("a", "again")
    assert drain(q) == ["again"]


def test_removed_ids_are_never_handed_out() -> None:
    q: PriorityQueue[str] = PriorityQueue()
    q.put("a", "A")
    q.put("b", "B")
    assert q.remove("a")
    assert not q.remove("a")
    assert not q.remove("never")
    assert len(q) == 1
    assert drain(q) == ["B"]


def test_an_id_queued_again_after_removal_gives_the_new_item() -> None:
    q: PriorityQueue[str] = PriorityQueue()
    q.put("a", "old", priority=5)
    q.remove("a")
    q.put("a", "new", priority=0)
    q.put("b", "B", priority=1)
    assert drain(q) == ["B", "new"]


async def test_get_waits_for_a_put() -> None:
    q: PriorityQueue[str] = PriorityQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.put("a", "A")
    assert await asyncio.wait_for(getter, 5) == ("a", "A")


async def test_a_cancelled_waiter_does_not_swallow_the_wake_up() -> None:
    q: PriorityQueue[str] = PriorityQueue()
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put("a", "A")
    first.cancel()
    assert await asyncio.wait_for(second, 5) == ("a", "A")
    assert first.cancelled()


async def test_each_item_goes_to_one_waiter() -> None:
    q: PriorityQueue[int] = PriorityQueue()
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for i in range(3):
        q.put(str(i), i)
    got = await asyncio.wait_for(asyncio.gather(*getters), 5)
    assert sorted(item for _, item in got) == [0, 1, 2]
