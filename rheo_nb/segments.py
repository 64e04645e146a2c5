"""Segmented downloads: range planning (pure) and the coordinator of the connections.

A large file whose server takes ranges starts as one range; each free connection takes
the second half of the range with the most left (:func:`steal`), so the file ends up cut
into contiguous ranges fetched over several connections into one preallocated part file.
Each :class:`Segment` remembers how many of its bytes are on disk, so a failed range
resumes on its own, and a partial file resumes range by range in a later run.

The coordinator (:func:`download`) is built from the same layers as a single stream:
requests from :mod:`rheo_nb.http` (with the same resume decision), the one stream loop
of :mod:`rheo_nb.stream`, the part file of :mod:`rheo_nb.partfile`, and the call's
:class:`~rheo_nb.retry.RetryPolicy` for every range.

A file with a hash and mirrors takes its ranges from several sources at once, as aria2
does: each new connection goes to the source with the fewest connections of this file
that has a free slot (the source serving the file first on a tie). A mirror's range is
asked without ``If-Range`` (its validator is its own; the hash checks the bytes), and a
mirror that fails a range for good, or answers it with anything but that range, is left
for the rest of the file; its range goes back to the others. If the file then fails its
hash, it is fetched once more from the one source alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from . import events
from .errors import DownloadError, HTTPStatusError, IntegrityError
from .http import Decision, Restart, decide, range_headers
from .items import host_key
from .partfile import Record, url_key
from .stream import Watchdog, WriteBatch, pump
from .traffic import THROTTLE_STATUSES, TokenBucket

if TYPE_CHECKING:
    from .transfer import Download

MiB = 1 << 20
#: No range is split off smaller than this: below it a new connection costs more than
#: it brings.
MIN_SEGMENT = 8 * MiB
#: Most connections one file uses on its own.
MAX_SEGMENTS = 16
#: Where ranges of a local file start (a multiple of it): whole pages of the part file.
ALIGN = 64 * 1024


@dataclass(slots=True)
class Segment:
    """Bytes ``start`` .. ``end`` (exclusive) of the file; ``done`` of them are on disk."""

    start: int
    end: int
    done: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def position(self) -> int:
        """The next byte to fetch."""
        return self.start + self.done

    @property
    def remaining(self) -> int:
        return self.end - self.position

    def as_list(self) -> list[int]:
        return [self.start, self.end, self.done]


def restore(raw: list[list[int]], total: int) -> list[Segment] | None:
    """Segments read back from a partial's sidecar, or None when they are not a valid
    cover of ``total`` bytes (then the partial is not trusted)."""
    try:
        segments = [Segment(int(a), int(b), int(d)) for a, b, d in raw]
    except (TypeError, ValueError):
        return None
    position = 0
    for s in segments:
        if s.start != position or s.end <= s.start or not 0 <= s.done <= s.size:
            return None
        position = s.end
    return segments if position == total and segments else None


def cut(
    segments: list[Segment], min_size: int = MIN_SEGMENT, align: int = ALIGN
) -> tuple[Segment, Segment] | None:
    """Where to split for an idle connection, without splitting yet: the segment with
    the most bytes left (the victim), and the new segment that would take the second
    half of what it has left, starting on a multiple of ``align`` (an object store's
    part). None when nothing is worth splitting."""
    victim = max(segments, key=lambda s: s.remaining, default=None)
    if victim is None or victim.remaining < 2 * min_size:
        return None
    middle = victim.position + victim.remaining // 2
    middle = -(-middle // align) * align
    if middle >= victim.end:
        return None
    return victim, Segment(middle, victim.end)


def steal(
    segments: list[Segment], min_size: int = MIN_SEGMENT, align: int = ALIGN
) -> Segment | None:
    """Split the segment with the most bytes left, for an idle connection (see :func:`cut`).

    The victim keeps the first half of what it has left; the returned new segment takes
    the second half. The caller inserts the new segment into its list in order.
    """
    planned = cut(segments, min_size, align)
    if planned is None:
        return None
    victim, new = planned
    victim.end = new.start
    return new


# --- the coordinator ---------------------------------------------------------------------
#
# The download's own connection feeds the first missing range. Every 0.2 s (and whenever
# a connection finishes its range) free connections take the second half of the largest
# range left, as far as this origin's free slots and a fair share among the files
# splitting on it allow. Until one range request has come back as the range asked, only
# one extra connection tries (a probe): a server that refuses ranges costs one wasted
# request, and the first connection simply goes on to the end of the file.

_RECRUIT_EVERY = 0.2
_SAVE_EVERY = 1.0
#: Under a cap, a split takes no more connections once its streams use this share of it.
_CAP_IN_USE = 0.9


@dataclass(slots=True)
class Split:
    """What the connections of one segmented download share."""

    segments: list[Segment]
    total: int
    validator: str
    url_key: str
    owned: set[int] = field(default_factory=set)  # id() of segments with a connection
    #: A range request was answered with the range asked: the server takes ranges.
    ranges_ok: bool = False
    #: A probe, or another extra connection, was refused: this file stays on the
    #: connections it has.
    refused: bool = False
    hasher: Any = None  # fed by the range at ``hashed`` while the file is contiguous
    hashed: int = 0
    #: New ranges start on a multiple of it (the destination's :meth:`alignment`).
    align: int = ALIGN
    #: Other sources of the file its ranges may also come from (with a hash only).
    mirrors: list[str] = field(default_factory=list)
    #: Some bytes came from a mirror (a failed hash is then worth one more try alone).
    mirrored: bool = False

    def record(self) -> Record:
        segments = [s.as_list() for s in self.segments]
        return Record(self.url_key, self.validator, self.total, segments)

    @property
    def done(self) -> int:
        return sum(s.done for s in self.segments)

    def first_missing(self) -> Segment | None:
        return next((s for s in self.segments if s.remaining), None)

    def take(self) -> tuple[Segment, Segment | None] | None:
        """A range for one more connection, and the range it was cut from when it is a
        probe: a cut not made yet, made only once the server answers it with a 206 (so a
        server that refuses ranges never leaves the first connection short)."""
        seg = next((s for s in self.segments if s.remaining and id(s) not in self.owned), None)
        if seg is not None:
            return seg, None
        planned = cut(self.segments, align=self.align)
        if planned is None:
            return None
        victim, new = planned
        if not self.ranges_ok:
            return new, victim
        victim.end = new.start
        self.segments.insert(self.segments.index(victim) + 1, new)
        return new, None

    def confirm(self, probe: Segment, victim: Segment) -> bool:
        """Make the cut of a probe answered with its range; False when the first
        connection has already gone past it (the probe's answer is then of no use)."""
        self.ranges_ok = True
        if victim.end != probe.end or victim.position >= probe.start:
            return False
        victim.end = probe.start
        self.segments.insert(self.segments.index(victim) + 1, probe)
        return True


def plan(
    total: int | None,
    validator: str | None,
    url: str,
    accept_ranges: str,
    segments: object,
    align: Callable[[int], int | None] = lambda total: ALIGN,
) -> Split | None:
    """The split of a fresh download, or None when it stays on one stream: too small,
    ``segments=1``, a server that offers no usable validator or no byte ranges, or a
    destination that cannot take ranges (``align(total)`` None; else new ranges start on
    its multiples)."""
    if (
        total is None
        or total < 2 * MIN_SEGMENT
        or segments == 1
        or validator is None
        or accept_ranges.lower() != "bytes"
    ):
        return None
    unit = align(total)
    if unit is None:
        return None
    return Split([Segment(0, total)], total, validator, url_key(url), align=unit)


def resumable(record: Record, size: int) -> Split | None:
    """The split a segmented partial can continue, or None (then it is not trusted)."""
    if record.total is None or record.validator is None or size != record.total:
        return None
    segments = restore(record.segments, record.total)
    if segments is None:
        return None
    return Split(segments, record.total, record.validator, record.url, ranges_ok=True)


async def download(job: Download, split: Split, first: aiohttp.ClientResponse) -> int:
    """Fetch the ranges of ``split`` not on disk yet, ``first`` (a response already open)
    feeding the first of them; then verify and commit. Returns the file's size."""
    ctx = job.ctx
    if job.planned.expected is not None and not job.one_source:
        split.mirrors = list(job.sources[job.sources.index(job.url) + 1 :])
    await job.dest.open_split(split)
    job.started(split.total, split.done)
    with ctx.limiter.splitting(job.host):
        await _coordinate(job, split, first)
    if split.done != split.total:
        raise IntegrityError(
            cause=f"length mismatch: expected {split.total} bytes, have {split.done}"
        )
    if job.planned.expected is not None:
        job.emit(events.Validating)
    try:
        return await job.dest.commit([], split.total, split)
    except IntegrityError as exc:
        if not split.mirrored:
            raise
        job.one_source = True  # a mirror's bytes may be the wrong ones: none of theirs now
        raise Restart(
            f"{exc.cause} with ranges from mirrors; fetching it from one source"
        ) from None


async def _coordinate(job: Download, split: Split, first: aiohttp.ClientResponse) -> None:
    ctx = job.ctx
    crew = _Crew(job, split)
    seg = split.first_missing()
    assert seg is not None
    crew.spawn(seg, first, None, job.url, None)
    last_save = ctx.clock()
    try:
        crew.recruit()
        while crew.tasks:
            finished, _ = await asyncio.wait(
                crew.tasks, timeout=_RECRUIT_EVERY, return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                crew.finished(task)
            crew.recruit()
            if ctx.clock() - last_save >= _SAVE_EVERY:
                last_save = ctx.clock()
                await job.dest.save(split)
    finally:
        await crew.stop()
        with contextlib.suppress(DownloadError):
            await job.dest.save(split)


class _Crew:
    """The connections of one split: for each, its range, its source, and the origin
    whose slot it borrowed (None: the download's own slot, on the file's source)."""

    def __init__(self, job: Download, split: Split) -> None:
        self.job, self.split = job, split
        self.room = _CapRoom(job.bucket(), job.ctx.clock)
        self.tasks: dict[asyncio.Task[None], tuple[Segment, str, str | None]] = {}

    def spawn(
        self,
        seg: Segment,
        resp: aiohttp.ClientResponse | None,
        victim: Segment | None,
        url: str,
        slot: str | None,
    ) -> None:
        self.split.owned.add(id(seg))
        extra = slot is not None
        task = asyncio.create_task(
            _fetch_range(self.job, self.split, seg, resp, victim, url, extra=extra)
        )
        self.tasks[task] = (seg, url, slot)

    def recruit(self) -> None:
        """More connections, as far as the caps, the probe and the free slots allow."""
        split, options = self.split, self.job.ctx.options
        cap = MAX_SEGMENTS if options.segments == "auto" else int(options.segments)
        if split.refused:
            cap = 1
        elif not split.ranges_ok:
            cap = min(cap, 2)  # the first connection and one probe
        if self.tasks:
            cap = min(cap, len(self.tasks) + self.room.now())
        while len(self.tasks) < cap:
            chosen = self.source()
            if chosen is None:
                return
            url, slot = chosen
            taken = split.take()
            if taken is None:
                if slot is not None:
                    self.job.ctx.limiter.release(slot)
                return
            seg, victim = taken
            self.spawn(seg, None, victim, url, slot)

    def source(self) -> tuple[str, str | None] | None:
        """The source of one more connection and the origin whose slot it borrowed (None:
        the download's own slot, free again); None when no source has a free slot."""
        job, busy = self.job, list(self.tasks.values())
        if all(slot is not None for _, _, slot in busy):
            return job.url, None
        limiter = job.ctx.limiter
        per_url = Counter(url for _, url, _ in busy)
        per_host = Counter(host_key(url) for _, url, _ in busy)
        candidates = [job.url, *self.split.mirrors] if self.split.ranges_ok else [job.url]
        for url in sorted(candidates, key=lambda u: per_url[u]):  # stable: the file's first
            host = job.host if url == job.url else host_key(url)
            if per_host[host] < limiter.share(host) and limiter.try_acquire(host):
                return url, host
        return None

    def finished(self, task: asyncio.Task[None]) -> None:
        seg, _, slot = self.tasks.pop(task)
        self.split.owned.discard(id(seg))
        if slot is not None:
            self.job.ctx.limiter.release(slot)
        task.result()  # a range that failed for good on the file's source fails it

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks)
        for _, _, slot in self.tasks.values():
            if slot is not None:
                self.job.ctx.limiter.release(slot)


class _CapRoom:
    """How many connections a split may add now, under a bandwidth cap: one at a time, and
    only while the streams use less than :data:`_CAP_IN_USE` of the cap (of every bucket
    they take from) over the time since the last look. A connection added while the cap
    holds the streams back only shares the same bytes more thinly; one added while the
    server holds them back brings more. Without a cap: any number."""

    __slots__ = ("_buckets", "_clock", "_seen")

    def __init__(self, bucket: TokenBucket | None, clock: Callable[[], float]) -> None:
        self._buckets: list[TokenBucket] = []
        while bucket is not None:
            self._buckets.append(bucket)
            bucket = bucket.parent
        self._clock = clock
        self._seen: tuple[float, list[int]] | None = None  # no look yet: nothing known

    def now(self) -> int:
        if not self._buckets:
            return MAX_SEGMENTS
        now, granted = self._clock(), [b.granted for b in self._buckets]
        seen, self._seen = self._seen, (now, granted)
        if seen is None or now - seen[0] <= 0:
            return 0
        elapsed = now - seen[0]
        for bucket, before, after in zip(self._buckets, seen[1], granted, strict=True):
            if after - before >= _CAP_IN_USE * bucket.rate * elapsed:
                return 0
        return 1


async def _fetch_range(
    job: Download,
    split: Split,
    seg: Segment,
    resp: aiohttp.ClientResponse | None,
    victim: Segment | None,
    url: str,
    *,
    extra: bool,
) -> None:
    """Fetch one range to its end from ``url``, retrying transient failures from where it
    stopped.

    ``victim``: this range is a probe, cut from ``victim`` only once the server answers
    it with the range asked. A range from a mirror that fails for good leaves the mirror
    (and the range, to the other sources) instead of failing the file. ``extra``: a
    connection beyond the download's own, which a refusal ends (see :func:`_retry_after`).
    """
    ctx, opts = job.ctx, job.ctx.options
    sink = job.dest.range_sink(split, seg)
    attempt = 0
    while seg.remaining > 0:
        try:
            async with Watchdog(opts.low_speed_limit, opts.low_speed_time) as dog:
                with ctx.http.errors(job.received):
                    if resp is None:
                        resp = await _open_range(
                            job, split, seg, url, dog, probe=victim is not None
                        )
                        if resp is None:
                            return  # a refused probe: the file stays on its first stream
                        if victim is not None and not split.confirm(seg, victim):
                            return
                        victim = None
                    split.mirrored |= url != job.url
                    batch = WriteBatch(ctx.write_size)
                    tail = await pump(resp.content, sink, job.meter, dog, batch, job.bucket(url))
                    if tail:
                        await sink.write(tail)
        except DownloadError as exc:
            retry = _retry_after(job, split, seg, url, exc, attempt, extra=extra)
            if retry is None:
                return
            attempt, delay = retry
            await asyncio.sleep(delay)
        finally:
            if resp is not None:
                resp.close()  # a range cut short by a split leaves bytes unread
                resp = None


def _retry_after(
    job: Download,
    split: Split,
    seg: Segment,
    url: str,
    exc: DownloadError,
    failed: int,
    *,
    extra: bool,
) -> tuple[int, float] | None:
    """The failed attempts that count and the wait before a failed range is tried again
    from ``url``. None when a mirror has failed for good (it is left for the rest of the
    file, and its range to the others), when the origin's connections were cut under
    this one (its range is handed on by the coordinator), or when an ``extra`` connection
    was refused.

    :raises DownloadError: the file's own source has failed for good.
    """
    if _refused(exc, extra=extra):
        split.refused = True
        return None
    cause = f"range {seg.position}-{seg.end - 1}: {exc.cause}"
    try:
        attempt, delay = job.ctx.policy.after(exc, failed)
    except DownloadError:
        if url == job.url:
            raise
        if url in split.mirrors:  # other connections to it may have failed first
            split.mirrors.remove(url)
        job.emit(events.Retrying, failed + 1, 0.0, f"{cause}; the range goes to another source")
        return None
    if _over_capacity(job, url, exc):
        return None
    job.emit(events.Retrying, attempt, delay, cause)
    return attempt, delay


def _refused(exc: DownloadError, *, extra: bool) -> bool:
    """An ``extra`` connection refused with a 429 or 503 that the traffic did not excuse
    (an excused one costs no retry, and the traffic's cut already limits the split).

    A server that limits connections per client (nginx's ``limit_conn``, an API's
    limiter) says "no split" so: the file goes on, on the connections it accepted, and
    the range (a probe's was never cut) goes back to them. Retrying it would only spend
    the file's retries on an optimisation.
    """
    return (
        extra
        and isinstance(exc, HTTPStatusError)
        and exc.status in THROTTLE_STATUSES
        and not exc.excused
    )


def _over_capacity(job: Download, url: str, exc: DownloadError) -> bool:
    """A range refused with a 429 or 503 for which the origin's connections were cut,
    while the origin still has more of them than it is now allowed."""
    limiter, host = job.ctx.limiter, job.host if url == job.url else host_key(url)
    return (
        isinstance(exc, HTTPStatusError)
        and exc.excused
        and limiter.in_use(host) > limiter.capacity(host)
    )


async def _open_range(
    job: Download, split: Split, seg: Segment, url: str, dog: Watchdog, *, probe: bool
) -> aiohttp.ClientResponse | None:
    """A response for the range ``seg`` still needs, checked against what was asked (its
    end may move down while the request is out: the answer is checked against the ask).
    None when a probe is refused: the server does not take ranges for this file.

    A mirror is asked without ``If-Range``: its validator is its own, and the file's hash
    checks what it sends.
    """
    asked = (seg.position, seg.end - 1)
    sent = split.validator if url == job.url else ""
    headers = {**job.headers, **range_headers(asked, sent)}
    resp = await job.ctx.http.get(url, headers, job.who, dog, job.planned.url)
    try:
        answer = decide(
            resp.status, resp.reason or "", resp.headers, asked, sent or None, split.total
        )
    except BaseException:
        resp.close()
        raise
    if answer.decision is Decision.APPEND:
        return resp
    resp.close()
    if url != job.url:
        raise DownloadError(cause=f"no usable range ({answer.reason})")
    if probe:
        split.refused = True
        return None
    raise Restart(answer.reason, no_split=True)
