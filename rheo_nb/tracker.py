"""State reduced from events: one record per download, totals, speed and ETA.

Pure bookkeeping with an injected clock: applying an event never draws anything;
displays read :meth:`Tracker.stats` and :meth:`Tracker.active` on a timer.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .events import (
    Cancelled,
    Completed,
    Event,
    Extracting,
    Failed,
    Progress,
    Queued,
    Restarted,
    Retrying,
    Skipped,
    Started,
    Status,
    Throttled,
    Validating,
)

if TYPE_CHECKING:
    from .objstore import ObjectPath

#: Speeds are averaged over this many seconds.
SPEED_WINDOW = 3.0
_SAMPLE_EVERY = 0.1
_PER_FILE_TAU = 1.0


@dataclass(slots=True)
class DownloadInfo:
    """Everything known about one download; ``m.info(download_id)`` returns one."""

    download_id: str
    url: str
    path: Path | ObjectPath
    priority: int = 0
    status: Status = Status.QUEUED
    bytes: int = 0
    total: int | None = None
    resumed_from: int = 0
    retries: int = 0
    #: Times the file started again from zero (a partial that could not be continued).
    restarts: int = 0
    #: Why it last restarted (``"the server does not support resume"``).
    restart_reason: str | None = None
    validating: bool = False
    #: Members of its archive extracted so far, and of how many (None: not known yet);
    #: None while it is not being extracted.
    extracting: tuple[int, int | None] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    speed: float = 0.0
    _last: tuple[float, int] | None = None

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return max(0.0, end - self.started_at)


@dataclass(frozen=True, slots=True)
class ClusterStats:
    """Where a call on a Dask cluster stands: ``stats.cluster`` (None for a local call)."""

    #: Workers in the cluster, and how many are running a shard of this call.
    workers: int
    busy: int
    #: Shards finished, and in all (None while a lazy input is still being read).
    shards_done: int
    shards: int | None
    #: Shards that started again on another worker after theirs died.
    reruns: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """Totals at one moment (``m.stats``)."""

    files: int
    queued: int
    running: int
    completed: int
    skipped: int
    failed: int
    cancelled: int
    #: Bytes on disk for every download (resumed and skipped bytes included, and what a
    #: failed or cancelled download left for a resume).
    bytes_done: int
    #: Sum of the sizes asked for, or None while some size is unknown. A failed or
    #: cancelled file keeps its size here: the totals tell what was done of what was asked.
    bytes_total: int | None
    #: Bytes per second over the last few seconds (transfers only).
    speed: float
    #: Seconds left, or None when it cannot be told.
    eta: float | None
    elapsed: float
    #: For a call on a Dask cluster: its workers and shards.
    cluster: ClusterStats | None = None

    @property
    def finished(self) -> int:
        """Files that will not change any more, whatever their outcome."""
        return self.completed + self.skipped + self.failed + self.cancelled

    @property
    def done(self) -> int:
        """Files on disk, complete: completed or skipped."""
        return self.completed + self.skipped


#: Finished downloads whose record :attr:`Tracker.downloads` keeps (the most recent);
#: older ones are forgotten, so that a million files cost counts, not records.
KEEP_FINISHED = 10_000


class Tracker:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: The record of every download queued or running, and of the last
        #: :data:`KEEP_FINISHED` finished ones (failed ones stay in :attr:`failures`).
        self.downloads: dict[str, DownloadInfo] = {}
        self.failures: list[DownloadInfo] = []
        self._files = 0
        #: Files announced but not yet queued (a lazy source of known length).
        self._pending = 0
        self._finished: deque[str] = deque()
        #: The last decision about each origin that slowed down or paused (by origin,
        #: ``"https://example.org"``): how it stands now.
        self.throttled: dict[str, Throttled] = {}
        self._counts = dict.fromkeys(Status, 0)
        self._running: dict[str, DownloadInfo] = {}  # in the order they started
        self._bytes_done = 0
        self._known_total = 0
        self._unknown_sizes = 0
        # Bytes of failed or cancelled files that will not arrive in this run: the ETA
        # leaves them out of the work that remains.
        self._abandoned = 0
        self._transferred = 0  # bytes received in this run: what speed is made of
        self._samples: deque[tuple[float, int]] = deque()
        self._t0: float | None = None

    def _move(self, info: DownloadInfo, status: Status) -> None:
        self._counts[info.status] -= 1
        self._counts[status] += 1
        info.status = status
        if status is Status.RUNNING:
            self._running[info.download_id] = info
        else:
            self._running.pop(info.download_id, None)

    def _set_bytes(self, info: DownloadInfo, value: int, *, transferred: bool) -> None:
        delta = value - info.bytes
        info.bytes = value
        self._bytes_done += delta
        if transferred and delta > 0:
            self._transferred += delta

    def _set_total(self, info: DownloadInfo, total: int | None) -> None:
        if info.total is None:
            self._unknown_sizes -= 1
        else:
            self._known_total -= info.total
        info.total = total
        if total is None:
            self._unknown_sizes += 1
        else:
            self._known_total += total

    def apply(self, event: Event) -> None:
        now = self.clock()
        if isinstance(event, Queued):
            if self._t0 is None:
                self._t0 = now
            info = DownloadInfo(event.download_id, event.url, event.path, event.priority)
            self.downloads[event.download_id] = info
            self._files += 1
            self._counts[Status.QUEUED] += 1
            self._unknown_sizes += 1
            return
        if isinstance(event, Throttled):  # about an origin, not about its download
            self.throttled[event.origin] = event
            return
        found = self.downloads.get(event.download_id)
        if found is None:
            return
        info = found
        if isinstance(event, Progress):
            self._set_bytes(info, event.bytes, transferred=True)
            if event.total != info.total:
                self._set_total(info, event.total)
            if info._last is not None:
                t, b = info._last
                dt = now - t
                if dt > 0:
                    rate = (event.bytes - b) / dt
                    # The first sample sets the speed: averaging it in from zero would show
                    # a fraction of the real rate for the whole of a short download.
                    alpha = 1 - math.exp(-dt / _PER_FILE_TAU) if info.speed else 1.0
                    info.speed += alpha * (rate - info.speed)
            info._last = (now, event.bytes)
            self._sample(now)
        elif isinstance(event, Started):
            if info.status is not Status.RUNNING:
                self._move(info, Status.RUNNING)
            if info.started_at is None:
                info.started_at = now
            info.resumed_from = event.resumed_from
            info.validating = False
            info.extracting = None
            self._set_bytes(info, event.resumed_from, transferred=False)
            self._set_total(info, event.total)
            info._last = (now, event.resumed_from)
        elif isinstance(event, Restarted):
            info.restarts += 1
            info.restart_reason = event.reason
            info.resumed_from = 0
            self._set_bytes(info, 0, transferred=False)
            info._last = (now, 0)
        elif isinstance(event, Retrying):
            info.retries = event.attempt
            info.error = event.error
            info.speed = 0.0
        elif isinstance(event, Validating):
            info.validating = True
        elif isinstance(event, Extracting):
            info.validating = False
            info.extracting = (event.members, event.total)
        elif isinstance(event, Completed | Skipped):
            self._finish(
                info, Status.COMPLETED if isinstance(event, Completed) else Status.SKIPPED, now
            )
            info.error = None
            self._set_bytes(info, event.bytes, transferred=isinstance(event, Completed))
            self._set_total(info, event.bytes)
            self._sample(now)
        elif isinstance(event, Failed):
            self._finish(info, Status.FAILED, now)
            info.error = event.error
            self.failures.append(info)
            self._abandon(info)
        elif isinstance(event, Cancelled):
            self._finish(info, Status.CANCELLED, now)
            self._abandon(info)

    def _abandon(self, info: DownloadInfo) -> None:
        # The size stays in the total (it was asked for); only the ETA forgets the rest.
        if info.total is not None:
            self._abandoned += max(0, info.total - info.bytes)

    def _finish(self, info: DownloadInfo, status: Status, now: float) -> None:
        self._move(info, status)
        if info.started_at is None:
            info.started_at = now
        info.finished_at = now
        info.speed = 0.0
        info.validating = False
        info.extracting = None
        self._finished.append(info.download_id)
        if len(self._finished) > KEEP_FINISHED:
            self.downloads.pop(self._finished.popleft(), None)

    def expect(self, n: int) -> None:
        """``n`` more files are coming (a lazy source of known length): count them in the
        totals (sizes unknown) until they are queued; a negative ``n`` takes back files
        announced, once they are queued or known not to come."""
        n = max(n, -self._pending)
        self._pending += n

    def _sample(self, now: float) -> None:
        samples = self._samples
        if not samples or now - samples[-1][0] >= _SAMPLE_EVERY:
            samples.append((now, self._transferred))
            while len(samples) > 2 and now - samples[1][0] >= SPEED_WINDOW:
                samples.popleft()

    def speed(self) -> float:
        now = self.clock()
        samples = self._samples
        if not samples:
            return 0.0
        t0, b0 = samples[0]
        if now - samples[-1][0] > SPEED_WINDOW:  # nothing arrived for a while
            return 0.0
        dt = now - t0
        return (self._transferred - b0) / dt if dt > 0 else 0.0

    def stats(self) -> Stats:
        now = self.clock()
        c = self._counts
        total = self._known_total if self._unknown_sizes == 0 and not self._pending else None
        speed = self.speed()
        elapsed = 0.0 if self._t0 is None else now - self._t0
        queued = c[Status.QUEUED] + self._pending
        unfinished = queued + c[Status.RUNNING]
        files = self._files + self._pending
        left = None if total is None else total - self._bytes_done - self._abandoned
        return Stats(
            files=files,
            queued=queued,
            running=c[Status.RUNNING],
            completed=c[Status.COMPLETED],
            skipped=c[Status.SKIPPED],
            failed=c[Status.FAILED],
            cancelled=c[Status.CANCELLED],
            bytes_done=self._bytes_done,
            bytes_total=total,
            speed=speed,
            eta=eta(unfinished, files - unfinished, elapsed, left, speed),
            elapsed=elapsed,
        )

    def active(self, limit: int = 5) -> list[DownloadInfo]:
        """Up to ``limit`` running downloads, the earliest started first."""
        return list(itertools.islice(self._running.values(), limit))


def eta(
    unfinished: int, finished: int, elapsed: float, bytes_left: int | None, speed: float
) -> float | None:
    """Seconds left, or None when it cannot be told: by bytes when every size is known
    and bytes are moving, else by the pace of the files finished so far."""
    if unfinished == 0:
        return 0.0 if finished else None
    if bytes_left is not None and speed > 0:
        return max(0, bytes_left) / speed
    if elapsed > 1 and finished:
        return unfinished * elapsed / finished
    return None
