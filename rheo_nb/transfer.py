"""One file's download, told in order: claim → attempts → request → resume decision →
stream or segments → verify and rename.

The layers below do the work: :mod:`rheo_nb.http` sends the request and decides what
its answer means for the bytes on disk, :mod:`rheo_nb.stream` moves the body,
:mod:`rheo_nb.partfile` holds the working bytes until :meth:`PartFile.finish` verifies
and renames them, :mod:`rheo_nb.segments` runs the ranges of a large file, and one
:class:`~rheo_nb.retry.RetryPolicy` paces every retry. Errors are named after the file
here, once (:meth:`~rheo_nb.DownloadError.attach`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from . import files, segments
from .client import HostLimiter
from .errors import DownloadError, IntegrityError, TooLargeError
from .events import (
    Cancelled,
    Completed,
    Event,
    Failed,
    Restarted,
    Retrying,
    Skipped,
    Started,
    Status,
    Validating,
)
from .format import size
from .hashing import hash_file
from .http import Answer, Client, Decision, Restart, decide, validator
from .items import Outcome, Planned
from .options import Options
from .partfile import PartFile, Partial, Record, destination_error, destination_errors, url_key
from .retry import RetryPolicy, is_transient
from .runner import ThreadLane
from .stream import Meter, Watchdog, WriteBatch, pump

_LOCK_POLL = (0.02, 0.5)  # first and longest wait between tries of a busy lock
#: Bytes all connections may hold in memory before writing, together; each connection
#: writes once it holds its share (at most ``Options.chunk_size``), which keeps memory
#: flat however many connections run.
_WRITE_BUDGET = 4 << 20
_MIN_WRITE = 128 << 10
_BUSY = -1  # another writer holds the file's lock
_NOTHING = -2  # nothing at the final path


@dataclass(slots=True)
class Context:
    """What the downloads of one call share, passed explicitly by the manager."""

    http: Client
    options: Options
    policy: RetryPolicy
    emit: Callable[[Event], None]
    dest: Path  # real path of the destination folder
    lane: ThreadLane
    limiter: HostLimiter
    clock: Callable[[], float] = time.monotonic
    #: Final paths of this call and the download writing each (server-given names too).
    paths: dict[Path, str] = field(default_factory=dict)
    #: Folders already created and found inside ``dest``: checked once per call.
    checked_dirs: set[Path] = field(default_factory=set)

    def write_size(self) -> int:
        """Bytes a connection gathers before it writes them: its share of the budget."""
        share = _WRITE_BUDGET // max(1, self.limiter.total_in_use)
        return max(_MIN_WRITE, min(self.options.chunk_size, share))


async def download(ctx: Context, p: Planned) -> Outcome:
    """Download one planned file and report its outcome; never raises but for cancellation."""
    return await Download(ctx, p).run()


class _Present(Exception):
    """The file the server named (Content-Disposition) is already complete: skip it."""

    def __init__(self, nbytes: int, reason: str) -> None:
        super().__init__(reason)
        self.nbytes = nbytes
        self.reason = reason


class _Whole:
    """The stream loop's sink for a whole body: appended to the part file, which is
    opened on the first write (a file that fits in one read never is: see finish)."""

    def __init__(self, part: PartFile, offset: int, record: Record | None) -> None:
        self.part, self.offset, self.record = part, offset, record
        self.keep_partial = record is not None

    def room(self) -> None:
        return None

    def write(self, chunks: list[bytes]) -> None:
        if self.part.fd is None:
            self.part.open(self.offset, self.record)
        self.part.append(chunks)


class Download:
    """One file's download: what it carries from attempt to attempt."""

    def __init__(self, ctx: Context, p: Planned) -> None:
        self.ctx, self.planned = ctx, p
        self.part = PartFile(p.final)
        self.meter = Meter(
            p.download_id,
            p.display_url,
            ctx.emit,
            ctx.clock,
            interval=ctx.options.progress_interval,
            max_size=ctx.options.max_size,
        )
        self.headers = {"Accept-Encoding": "identity", **p.headers}
        self.target = p.final  # the final path, or the name the server gave
        #: What a resume of the bytes on disk needs (set once a response told it).
        self.record: Callable[[], Record | None] = lambda: None
        self.partial: Partial | None = None  # found by the claim; used by the first attempt
        self.resumed = False  # this attempt continues an earlier partial
        self.no_split = False  # ranges failed once: one stream from now on
        self.locks: list[tuple[Path, int]] = []

    # --- events --------------------------------------------------------------------------

    def received(self) -> int:
        return self.meter.received

    def started(self, total: int | None, resumed_from: int) -> None:
        self.meter.total, self.meter.received = total, resumed_from
        p = self.planned
        self.ctx.emit(Started(p.download_id, p.display_url, self.target, total, resumed_from))

    def retrying(self, attempt: int, delay: float, cause: str) -> None:
        p = self.planned
        self.ctx.emit(Retrying(p.download_id, p.display_url, attempt, delay, cause))

    def validating(self) -> None:
        self.ctx.emit(Validating(self.planned.download_id, self.planned.display_url))

    def _outcome(self, status: Status, nbytes: int, t0: float, error: str | None = None) -> Outcome:
        p = self.planned
        elapsed = self.ctx.clock() - t0
        return Outcome(
            p.display_url, self.target, status, nbytes, elapsed, error, p.download_id, p.file
        )

    # --- the story -----------------------------------------------------------------------

    async def run(self) -> Outcome:
        ctx, p = self.ctx, self.planned
        t0 = ctx.clock()
        try:
            skipped = await self._claim()
            if skipped is not None:
                return self._outcome(Status.SKIPPED, skipped, t0)
            await ctx.limiter.acquire(p.host)
            try:
                nbytes = await self._attempts()
            finally:
                ctx.limiter.release(p.host)
        except _Present as present:
            with contextlib.suppress(DownloadError):
                await ctx.lane.run(self.part.discard)
            ctx.emit(
                Skipped(p.download_id, p.display_url, self.target, present.nbytes, present.reason)
            )
            return self._outcome(Status.SKIPPED, present.nbytes, t0)
        except asyncio.CancelledError:
            await self._settle(keep=True)
            ctx.emit(Cancelled(p.download_id, p.display_url, p.final, self.meter.received))
            raise
        except DownloadError as exc:
            exc.attach(p.display_url)
            await self._settle(keep=is_transient(exc))
            ctx.emit(Failed(p.download_id, p.display_url, p.final, str(exc), ctx.clock() - t0))
            return self._outcome(Status.FAILED, self.meter.received, t0, str(exc))
        finally:
            await self._unlock()
        ctx.emit(Completed(p.download_id, p.display_url, self.target, nbytes, ctx.clock() - t0))
        return self._outcome(Status.COMPLETED, nbytes, t0)

    async def _claim(self) -> int | None:
        """Become the one writer of the final path, and look at what is there already.

        Returns the size of a complete file to keep (the download is then skipped), else
        None with the lock held and any partial read.
        """
        ctx, p = self.ctx, self.planned
        keep_unverified = not ctx.options.overwrite and p.expected is None
        delay, longest = _LOCK_POLL
        while (found := await ctx.lane.run(self._look, keep_unverified)) == _BUSY:
            # Another call or process is writing this file: wait, then most likely skip it.
            await asyncio.sleep(delay)
            delay = min(longest, delay * 2)
        if found == _NOTHING or ctx.options.overwrite:
            return None
        reason = await self._verified(p.final)
        if reason is None:
            return None  # not the file asked for: download it again
        await self._unlock()
        ctx.emit(Skipped(p.download_id, p.display_url, p.final, found, reason))
        return found

    @destination_errors
    def _look(self, keep_unverified: bool) -> int:
        """Lock, then look at the final path and any partial, in one thread hop."""
        final, ctx = self.planned.final, self.ctx
        if final.parent not in ctx.checked_dirs:
            files.ensure_parent(ctx.dest, final)
            ctx.checked_dirs.add(final.parent)
        lock = files.try_lock(final)
        if lock is None:
            return _BUSY
        try:
            existing = files.existing_size(final)
            if existing is not None and keep_unverified:
                files.unlock(final, lock)
                return existing
            if lock == files.LOCK_UNSUPPORTED:
                self.part = PartFile(final, unique=True)
            else:
                self.partial = self.part.read()
        except BaseException:
            files.unlock(final, lock)
            raise
        self.locks.append((final, lock))
        return _NOTHING if existing is None else existing

    async def _verified(self, path: Path) -> str | None:
        """Why the complete file at ``path`` can be kept, or None when it cannot."""
        expected = self.planned.expected
        if expected is None:
            return "already downloaded"
        try:
            digest = await self.ctx.lane.run_interruptible(
                lambda stop: hash_file(path, expected.algorithm, stop=stop)
            )
        except OSError as exc:
            raise destination_error(exc) from exc
        if digest.hexdigest() != expected.hexdigest:
            return None
        return f"already downloaded, {expected.algorithm} verified"

    async def _attempts(self) -> int:
        ctx = self.ctx
        attempt = 0
        refetched = False
        while True:
            try:
                return await self._attempt()
            except Restart as restart:
                self.no_split |= restart.no_split
                await self._restart(restart.reason)
            except IntegrityError:
                # A resumed file that fails its check may owe it to a bad prefix from an
                # earlier run: fetch it once more from zero before calling it corrupt.
                if not self.resumed or refetched:
                    raise
                refetched = True
                await self._restart("the resumed file failed its check; fetching it again")
            except DownloadError as exc:
                attempt += 1
                delay = ctx.policy.delay(exc, attempt)
                self.retrying(attempt, delay, exc.cause)
                await asyncio.sleep(delay)

    async def _restart(self, reason: str) -> None:
        discarded = max(self.part.size, self.partial.size if self.partial else 0)
        self.partial = None
        self.resumed = False
        await self.ctx.lane.run(self.part.discard)
        if discarded:
            p = self.planned
            self.ctx.emit(Restarted(p.download_id, p.display_url, discarded, reason))

    async def _attempt(self) -> int:
        ctx, p = self.ctx, self.planned
        partial, self.partial = self.partial, None
        if partial is None and self.part.touched:  # an earlier attempt wrote some
            partial = await ctx.lane.run(self.part.read)
        record = partial.usable_for(p.url) if partial is not None else None
        if partial is not None and partial.size and record is None:
            raise Restart("the partial file cannot be trusted")
        self.resumed = False
        split: segments.Split | None = None
        asked: tuple[int, int | None] | None = None
        headers = self.headers
        if partial is not None and record is not None:
            self.part.size = partial.size
            if record.segments:
                split = None if self.no_split else segments.resumable(record, partial.size)
                seg = split.first_missing() if split is not None else None
                if split is None or seg is None:
                    raise Restart("the partial file's record does not add up")
                asked = (seg.position, seg.end - 1)
            else:
                asked = (partial.size, None)
            last = "" if asked[1] is None else str(asked[1])
            headers = {**headers, "Range": f"bytes={asked[0]}-{last}"}
            headers["If-Range"] = record.validator or ""
        opts = ctx.options
        async with Watchdog(opts.low_speed_limit, opts.low_speed_time) as dog:
            with ctx.http.errors(self.received):
                resp = await ctx.http.get(p.url, headers)
                try:
                    answer, split = await self._receive(resp, record, asked, split)
                    if split is None:
                        return await self._stream(resp, answer, record, dog)
                except BaseException:
                    resp.release()
                    raise
        # The ranges have watchdogs of their own: this attempt's stops here.
        try:
            return await segments.download(self, split, resp)
        finally:
            resp.close()

    async def _receive(
        self,
        resp: aiohttp.ClientResponse,
        record: Record | None,
        asked: tuple[int, int | None] | None,
        split: segments.Split | None,
    ) -> tuple[Answer, segments.Split | None]:
        """Decide what the answer means; the split to run, or None for one stream."""
        p, opts = self.planned, self.ctx.options
        answer = decide(
            resp.status,
            resp.reason or "",
            resp.headers,
            asked,
            record.validator if record is not None else None,
            record.total if record is not None else None,
            verifiable=p.expected is not None,
        )
        if answer.decision is Decision.RESTART:
            raise Restart(answer.reason)
        if answer.decision is Decision.FULL and asked is not None:
            await self._restart(answer.reason)  # the server ignored the range: from zero
        total = answer.total
        if opts.max_size is not None and total is not None and total > opts.max_size:
            raise TooLargeError(cause=f"file is {size(total)}, over max_size={size(opts.max_size)}")
        if opts.content_disposition and p.file.path is None and self.target == p.final:
            await self._name_from_server(resp.headers.get("Content-Disposition"))
        if answer.decision is Decision.APPEND and split is not None:
            self.resumed = True
            return answer, split
        tag = validator(resp.headers)
        if (
            answer.decision is Decision.FULL
            and total is not None
            and total >= 2 * segments.MIN_SEGMENT
            and opts.segments != 1
            and not (self.part.unique or self.no_split)
            and tag is not None
            and resp.headers.get("Accept-Ranges", "").lower() == "bytes"
        ):
            whole = segments.Segment(0, total)
            return answer, segments.Split([whole], total, tag, url_key(p.url))
        return answer, None

    async def _stream(
        self,
        resp: aiohttp.ClientResponse,
        answer: Answer,
        record: Record | None,
        dog: Watchdog,
    ) -> int:
        """The body (or the rest of it) on one connection, then verify and rename."""
        ctx, p, part = self.ctx, self.planned, self.part
        offset = 0 if answer.decision is Decision.FULL else part.size
        total = offset if answer.decision is Decision.COMPLETE else answer.total
        tag = validator(resp.headers)
        if tag is None and record is not None and answer.decision is not Decision.FULL:
            tag = record.validator
        if tag is not None and not part.unique:
            resume = Record(url_key(p.url), tag, total)
            self.record = lambda: resume
        self.resumed = offset > 0
        if p.expected is not None:
            if offset:
                await ctx.lane.run_interruptible(
                    functools.partial(part.rehash, p.expected, limit=offset)
                )
            else:
                part.hasher = p.expected.new()
        tail: list[bytes] = []
        if answer.decision is not Decision.COMPLETE:
            self.started(total, offset)
            sink = _Whole(part, offset, self.record())
            tail = await pump(
                resp.content, sink, self.meter, dog, WriteBatch(ctx.write_size), ctx.lane
            )
        if p.expected is not None:
            self.validating()
        return await ctx.lane.run(part.finish, tail, total, p.expected, self.target)

    async def _name_from_server(self, header: str | None) -> None:
        """Take the file's name from ``Content-Disposition`` (opt-in), in the same folder.

        The named path is claimed for this call (another download of the call cannot
        take it) and gets a writer lock of its own; a complete file there is skipped
        (verified against the hash when one is given), as at the URL's name.
        """
        ctx, p = self.ctx, self.planned
        name = files.name_from_disposition(header)
        if not name or name == p.final.name:
            return
        target = p.final.with_name(name)
        owner = ctx.paths.setdefault(target, p.download_id)
        if owner != p.download_id:
            raise DownloadError(
                cause=f"the server names it {name}, which is also the name of another file "
                "of this call; give it a path with File(url, path=...)"
            )
        lock = await ctx.lane.run(destination_errors(files.try_lock), target)
        if lock is None:
            raise DownloadError(
                cause=f"the server names it {name}, which another download is writing; give "
                "it a path with File(url, path=...)"
            )
        self.locks.append((target, lock))
        self.target = target
        existing = await ctx.lane.run(destination_errors(files.existing_size), target)
        if existing is None or ctx.options.overwrite:
            return
        reason = await self._verified(target)
        if reason is not None:
            raise _Present(existing, f"{reason} as {name} (the server's name)")

    # --- the end, whichever it is ------------------------------------------------------

    async def _settle(self, *, keep: bool) -> None:
        """After an early end: keep the bytes for a resume (``keep``), or let them go."""
        part = self.part
        with contextlib.suppress(DownloadError):
            if keep:
                await self.ctx.lane.run(part.keep, self.record())
            elif self.locks or part.unique:  # ours to remove: we are the file's writer
                await self.ctx.lane.run(part.discard)

    async def _unlock(self) -> None:
        locks, self.locks = self.locks, []
        if self.part.fd is not None:  # an error nobody expected: still no descriptor leaks
            with contextlib.suppress(DownloadError):
                await self.ctx.lane.run(self.part.close)
        for path, fd in reversed(locks):
            with contextlib.suppress(OSError):
                await self.ctx.lane.run(files.unlock, path, fd)
