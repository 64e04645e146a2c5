"""One read → batch → write loop, shared by a whole body and by a single range.

:func:`pump` reads a response body chunk by chunk into a :class:`WriteBatch`, hands full
batches to a :class:`Sink` (a destination's), and counts every byte on the download's
:class:`Meter` (progress, ``max_size``) and on the attempt's :class:`Watchdog` (the
low-speed rule). On a normal end it returns the last batch unwritten, so that a file
that fits in one read is written, verified and renamed in one thread hop; on any other
exit it writes what arrived when the sink keeps partials, so a resume starts after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import aiohttp

from .errors import TooLargeError, TransferError
from .events import Event, Progress
from .format import size
from .traffic import READ_SIZE, TokenBucket


class Sink(Protocol):
    """Where a body's bytes go: a part file appended to, or a range of it."""

    #: Write what arrived before an early exit (the partial is worth resuming).
    keep_partial: bool

    def room(self) -> int | None:
        """Bytes still wanted (a range that may shrink as it is split); None: all."""
        ...

    async def write(self, chunks: list[bytes]) -> None:
        """Write ``chunks``; once it returns they are counted as written, and a cancel
        while it runs must not leave half of them written and the rest lost."""
        ...


class WriteBatch:
    """Chunks held until a write is worth its syscall. Memory bound: ``limit()`` bytes
    plus one read buffer (aiohttp hands over at most its buffer size per chunk)."""

    __slots__ = ("chunks", "limit", "nbytes")

    def __init__(self, limit: Callable[[], int]) -> None:
        self.chunks: list[bytes] = []
        self.nbytes = 0
        self.limit = limit

    def add(self, chunk: bytes) -> bool:
        """Hold ``chunk``; True when the batch is due to be written."""
        self.chunks.append(chunk)
        self.nbytes += len(chunk)
        return self.nbytes >= self.limit()

    def take(self) -> list[bytes]:
        """The chunks held, and an empty batch: hand them over *before* awaiting the write,
        so that a cancel during it cannot leave them here to be written twice."""
        chunks, self.chunks, self.nbytes = self.chunks, [], 0
        return chunks


class Meter:
    """Bytes of one download so far (every connection of it), and the progress events
    they earn: at most one per ``interval`` seconds, never per chunk."""

    __slots__ = (
        "_clock",
        "_emit",
        "_interval",
        "_last",
        "download_id",
        "max_size",
        "received",
        "total",
        "url",
    )

    def __init__(
        self,
        download_id: str,
        url: str,
        emit: Callable[[Event], None],
        clock: Callable[[], float],
        *,
        interval: float,
        max_size: int | None,
    ) -> None:
        self.download_id = download_id
        self.url = url
        self.received = 0
        self.total: int | None = None
        self.max_size = max_size
        self._emit = emit
        self._clock = clock
        self._interval = interval
        self._last = clock()

    def add(self, n: int) -> None:
        if self.max_size is not None and self.received + n > self.max_size:
            raise TooLargeError(cause=f"body is over max_size={size(self.max_size)}; stopped there")
        self.received += n
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._emit(Progress(self.download_id, self.url, self.received, self.total))


class Watchdog:
    """Ends an attempt that stays slower than ``limit`` bytes/s for ``window`` seconds.

    It covers the whole response, not only the body: a timer checks the count at the end
    of every window whether or not bytes arrived, so a server that trickles headers,
    interim ``100 Continue`` answers, chunk extensions or trailers (all of which keep the
    socket busy without any body byte) is ended too. As curl's low-speed rule does, the
    first window starts when the request is sent. ``limit=0`` turns it off.

    Time the stream spends waiting for its turn (a bandwidth cap's tokens, the pacing of
    requests, a pause the server asked for: between :meth:`pause` and :meth:`resume`) is
    not the server's slowness: the rule judges ``window`` seconds of the stream's own
    time, however long they take.

    >>> async with Watchdog(1024, 30.0) as dog:       # doctest: +SKIP
    ...     dog.bytes += len(chunk)                   # the stream loop counts
    """

    __slots__ = (
        "_active",
        "_handle",
        "_last",
        "_mark",
        "_paused",
        "_task",
        "_tripped",
        "bytes",
        "limit",
        "waited",
        "window",
    )

    def __init__(self, limit: float, window: float) -> None:
        self.limit = limit
        self.window = window
        self.bytes = 0
        #: Seconds spent waiting for its turn since the last check (see :meth:`pause`).
        self.waited = 0.0
        self._paused: float | None = None
        self._mark = 0
        self._active = 0.0  # the stream's own seconds since the mark
        self._last = 0.0
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._tripped = False

    async def __aenter__(self) -> Watchdog:
        if self.limit > 0 and self.window > 0:
            self._task = asyncio.current_task()
            self._last = time.monotonic()
            self._handle = asyncio.get_running_loop().call_later(self.window, self._check)
        return self

    def pause(self) -> None:
        """Stop counting time against the server: the stream waits for its turn."""
        self._paused = time.monotonic()

    def resume(self) -> None:
        """Count time against the server again (after :meth:`pause`)."""
        if self._paused is not None:
            self.waited += time.monotonic() - self._paused
            self._paused = None

    def _check(self) -> None:
        now = time.monotonic()
        waited, self.waited = self.waited, 0.0
        if self._paused is not None:  # a wait still going on counts for its part so far
            waited += now - self._paused
            self._paused = now
        self._active += max(0.0, now - self._last - waited)
        self._last = now
        if self._active >= self.window * 0.999:  # a timer may fire a hair early
            if self.bytes - self._mark < self.limit * self._active:
                self._handle = None
                self._tripped = True
                assert self._task is not None
                self._task.cancel()
                return
            self._mark, self._active = self.bytes, 0.0
        self._handle = asyncio.get_running_loop().call_later(self.window, self._check)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._tripped and self._task is not None:
            # Our own cancellation, unless someone else cancelled the task as well.
            if self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
                raise TransferError(
                    cause=f"slower than {size(self.limit)}/s for {self.window:g} s "
                    "(low_speed_limit / low_speed_time)"
                ) from None


async def pump(
    content: aiohttp.StreamReader,
    sink: Sink,
    meter: Meter,
    dog: Watchdog,
    batch: WriteBatch,
    bucket: TokenBucket | None = None,
) -> list[bytes]:
    """Read ``content`` into ``sink`` until the body ends or the sink has no more room.

    With a ``bucket`` (a bandwidth cap), tokens are taken for the bytes about to be read
    before reading them. Returns the bytes read but not yet written (the caller writes
    them with its last step). Raises :class:`TransferError` when a range's body ends
    before the range does.
    """
    try:
        while True:
            room = sink.room()
            if room is not None:
                room -= batch.nbytes
                if room <= 0:
                    break
            if bucket is None:
                chunk, end_of_chunk = await content.readchunk()
            else:
                chunk, end_of_chunk = await _capped_read(content, bucket, dog, room), False
            if not chunk:
                if end_of_chunk:  # the boundary of a chunked body: more follows
                    continue
                if room is not None:
                    raise TransferError(
                        cause=f"connection closed {room} bytes before the end of the range"
                    )
                break
            if room is not None and len(chunk) > room:
                chunk = chunk[:room]
            n = len(chunk)
            dog.bytes += n
            meter.add(n)
            if batch.add(chunk):
                await sink.write(batch.take())
    except BaseException:
        if batch.nbytes and sink.keep_partial:
            # Keep what arrived: the next attempt (or run) resumes after it. A failure to
            # write it only loses those bytes; the error that ended the loop is the story.
            with contextlib.suppress(Exception):
                await sink.write(batch.take())
        raise
    return batch.take()


async def _capped_read(
    content: aiohttp.StreamReader, bucket: TokenBucket, dog: Watchdog, room: int | None
) -> bytes:
    """The next bytes of a capped stream: tokens first, then at most that many bytes."""
    dog.pause()
    try:
        n = await bucket.take(READ_SIZE if room is None else min(room, READ_SIZE))
    finally:
        dog.resume()
    chunk = await content.read(n)
    bucket.refund(n - len(chunk))
    return chunk
