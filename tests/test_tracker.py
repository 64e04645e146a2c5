"""The tracker: state reduced from events, driven by a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from rheo_nb.events import (
    Cancelled,
    Completed,
    Extracting,
    Failed,
    Progress,
    Queued,
    Retrying,
    Skipped,
    Started,
    Status,
    Throttled,
    Validating,
)
from rheo_nb.tracker import SPEED_WINDOW, Tracker

P = Path("x.bin")


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> Tracker:
    return Tracker(clock)


def test_empty_tracker(tracker: Tracker) -> None:
    s = tracker.stats()
    assert (s.files, s.finished, s.bytes_done, s.bytes_total) == (0, 0, 0, 0)
    assert s.eta is None
    assert s.speed == 0.0
    assert s.elapsed == 0.0
    assert tracker.active() == []


def test_queued_downloads_are_counted_and_sizes_unknown(tracker: Tracker) -> None:
    tracker.apply(Queued("a", "u/a", P, 3))
    tracker.apply(Queued("b", "u/b", P, 0))
    s = tracker.stats()
    assert (s.files, s.queued, s.running) == (2, 2, 0)
    assert s.bytes_total is None
    assert tracker.downloads["a"].priority == 3
    assert tracker.downloads["a"].status is Status.QUEUED


def test_a_download_moves_through_its_states(tracker: Tracker, clock: FakeClock) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    clock.advance(1)
    tracker.apply(Started("a", "u", P, 1000, 0))
    info = tracker.downloads["a"]
    assert info.status is Status.RUNNING
    assert info.total == 1000
    assert info.started_at == 101
    assert tracker.stats().bytes_total == 1000
    assert tracker.active() == [info]
    clock.advance(1)
    tracker.apply(Progress("a", "u", 400, 1000))
    assert info.bytes == 400
    assert tracker.stats().bytes_done == 400
    tracker.apply(Validating("a", "u"))
    assert info.validating
    clock.advance(1)
    tracker.apply(Completed("a", "u", P, 1000, 2.0))
    s = tracker.stats()
    assert (s.completed, s.running, s.finished) == (1, 0, 1)
    assert tracker.downloads["a"].status is Status.COMPLETED
    assert not info.validating
    assert info.finished_at == 103
    assert info.elapsed == 2.0
    assert s.bytes_done == 1000 == s.bytes_total
    assert s.eta == 0.0
    assert tracker.active() == []


def test_extracting_records_members_until_the_file_is_done(tracker: Tracker) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    tracker.apply(Started("a", "u", P, 1000, 0))
    tracker.apply(Validating("a", "u"))
    tracker.apply(Extracting("a", "u", 3, 40))
    info = tracker.downloads["a"]
    assert info.extracting == (3, 40)
    assert not info.validating  # verified: now it is being extracted
    assert info.status is Status.RUNNING
    tracker.apply(Extracting("a", "u", 40, 40))
    assert info.extracting == (40, 40)
    tracker.apply(Completed("a", "u", P, 1000, 1.0))
    assert info.extracting is None
    tracker.apply(Queued("b", "u", P, 0))
    tracker.apply(Extracting("b", "u", 1, None))
    tracker.apply(Failed("b", "u", P, "member '../x': its name leads outside", 1.0))
    assert tracker.downloads["b"].extracting is None


def test_retrying_records_the_attempt_and_the_error(tracker: Tracker) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    tracker.apply(Retrying("a", "u", 2, 0.5, "HTTP 503"))
    info = tracker.downloads["a"]
    assert info.retries == 2
    assert info.error == "HTTP 503"
    tracker.apply(Started("a", "u", P, 10, 0))
    tracker.apply(Completed("a", "u", P, 10, 1.0))
    assert info.error is None


def test_failures_are_listed(tracker: Tracker) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    tracker.apply(Started("a", "u", P, 1000, 0))
    tracker.apply(Progress("a", "u", 300, 1000))
    tracker.apply(Failed("a", "u", P, "HTTP 500", 1.0))
    s = tracker.stats()
    assert s.failed == 1
    assert s.running == 0
    assert [f.download_id for f in tracker.failures] == ["a"]
    assert tracker.downloads["a"].error == "HTTP 500"
    # A failed download keeps the size asked for: the totals say what was done of it.
    assert (s.bytes_done, s.bytes_total) == (300, 1000)
    assert s.done == 0


def test_cancelled_and_skipped_are_counted(tracker: Tracker) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    tracker.apply(Queued("b", "u", P, 0))
    tracker.apply(Cancelled("a", "u", P, 0))
    tracker.apply(Skipped("b", "u", P, 500, "already downloaded"))
    s = tracker.stats()
    assert (s.cancelled, s.skipped, s.queued, s.finished) == (1, 1, 0, 2)
    assert s.bytes_done == 500
    # a was cancelled before it started: its size was never known.
    assert s.bytes_total is None
    assert s.done == 1
    # Skipped bytes were not transferred: they are no part of the speed.
    assert s.speed == 0.0


def test_resumed_bytes_count_as_done_but_not_as_speed(tracker: Tracker, clock: FakeClock) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    tracker.apply(Started("a", "u", P, 10_000, 6_000))
    info = tracker.downloads["a"]
    assert info.resumed_from == 6_000
    assert info.bytes == 6_000
    clock.advance(1.0)
    tracker.apply(Progress("a", "u", 7_000, 10_000))
    clock.advance(1.0)
    tracker.apply(Progress("a", "u", 8_000, 10_000))
    s = tracker.stats()
    assert s.bytes_done == 8_000
    assert s.speed == pytest.approx(1_000)
    assert s.eta == pytest.approx(2.0)


def test_kept_bytes_of_a_resume_never_count_as_speed(tracker: Tracker, clock: FakeClock) -> None:
    for name in "abc":
        tracker.apply(Queued(name, "u", P, 0))
    tracker.apply(Started("a", "u", P, None, 0))
    for i in range(1, 11):  # a: 1 MB/s
        clock.advance(0.1)
        tracker.apply(Progress("a", "u", i * 100_000, None))
    tracker.apply(Started("b", "u", P, 90_000_000, 80_000_000))  # 80 MB already on disk
    tracker.apply(Skipped("c", "u", P, 70_000_000, "already downloaded"))
    clock.advance(0.1)
    tracker.apply(Progress("a", "u", 1_100_000, None))
    assert tracker.stats().speed == pytest.approx(1_000_000, rel=0.05)
    assert tracker.stats().bytes_done == 151_100_000


def test_speed_is_measured_over_a_window(tracker: Tracker, clock: FakeClock) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    tracker.apply(Started("a", "u", P, None, 0))
    received = 0
    for _ in range(30):  # 3 s at 1 MB/s
        clock.advance(0.1)
        received += 100_000
        tracker.apply(Progress("a", "u", received, None))
    assert tracker.stats().speed == pytest.approx(1_000_000, rel=0.05)
    assert tracker.downloads["a"].speed == pytest.approx(1_000_000, rel=0.1)
    for _ in range(30):  # then 3 s at 4 MB/s: the old rate leaves the window
        clock.advance(0.1)
        received += 400_000
        tracker.apply(Progress("a", "u", received, None))
    assert tracker.stats().speed == pytest.approx(4_000_000, rel=0.1)


def test_speed_drops_to_zero_when_nothing_arrives(tracker: Tracker, clock: FakeClock) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    tracker.apply(Started("a", "u", P, None, 0))
    for i in range(1, 6):
        clock.advance(0.1)
        tracker.apply(Progress("a", "u", i * 1000, None))
    assert tracker.stats().speed > 0
    clock.advance(SPEED_WINDOW + 0.5)
    assert tracker.stats().speed == 0.0


def test_eta_with_unknown_sizes_falls_back_to_files(tracker: Tracker, clock: FakeClock) -> None:
    for name in "abcd":
        tracker.apply(Queued(name, "u", P, 0))
    for name in "ab":
        tracker.apply(Started(name, "u", P, None, 0))
        tracker.apply(Completed(name, "u", P, 10, 1.0))
    clock.advance(4.0)
    s = tracker.stats()
    assert s.bytes_total is None
    assert s.eta == pytest.approx(4.0)  # 2 left, 2 done in 4 s


def test_active_lists_the_earliest_started_first_up_to_the_limit(tracker: Tracker) -> None:
    for name in "abcdefg":
        tracker.apply(Queued(name, "u", P, 0))
    for name in "gfedcb":
        tracker.apply(Started(name, "u", P, None, 0))
    tracker.apply(Completed("f", "u", P, 1, 0.1))
    assert [i.download_id for i in tracker.active()] == ["g", "e", "d", "c", "b"]
    assert [i.download_id for i in tracker.active(2)] == ["g", "e"]


def test_a_restart_keeps_the_download_running_and_resets_its_bytes(tracker: Tracker) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    tracker.apply(Started("a", "u", P, 1000, 0))
    tracker.apply(Progress("a", "u", 700, 1000))
    tracker.apply(Started("a", "u", P, 1000, 0))  # the server ignored the range: from zero
    s = tracker.stats()
    assert s.running == 1
    assert s.bytes_done == 0
    assert s.bytes_total == 1000


def test_events_of_unknown_downloads_are_ignored(tracker: Tracker) -> None:
    tracker.apply(Progress("ghost", "u", 10, 10))
    tracker.apply(Completed("ghost", "u", P, 10, 1.0))
    assert tracker.stats().files == 0


def test_elapsed_runs_from_the_first_queued_event(tracker: Tracker, clock: FakeClock) -> None:
    tracker.apply(Queued("a", "u", P, 0))
    clock.advance(2.5)
    tracker.apply(Queued("b", "u", P, 0))
    assert tracker.stats().elapsed == 2.5


def test_a_throttle_is_kept_per_origin_and_changes_no_download(clock: FakeClock) -> None:
    t = Tracker(clock)
    t.apply(Queued("a", "https://example.org/a", P, 0))
    t.apply(Started("a", "https://example.org/a", P, 100, 0))
    before = t.downloads["a"]
    slowed = Throttled("a", "https://example.org/a", "https://example.org", 4, 8, "429", 0.5)
    t.apply(slowed)
    # About the origin: the download's own record is left as it was (no retry, no error).
    assert (before.status, before.retries, before.error) == (Status.RUNNING, 0, None)
    assert t.throttled == {"https://example.org": slowed}
    # The latest decision per origin; one about a download the tracker never heard of
    # (or of another call) is kept all the same.
    grown = Throttled("zz", "u", "https://example.org", 5, 4, "8 good answers in a row")
    other = Throttled("", "u", "http://127.0.0.1:8080", 1, 2, "503")
    t.apply(grown)
    t.apply(other)
    assert t.throttled == {"https://example.org": grown, "http://127.0.0.1:8080": other}
    assert t.stats().running == 1
