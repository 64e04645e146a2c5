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
from typing import Any

import aiohttp

from . import events, files, segments
from .client import HostLimiter
from .errors import DownloadError, IntegrityError, TooLargeError
from .events import Status
from .format import size
from .hashing import hash_file
from .http import Answer, Client, Decision, Restart, decide, range_headers, validator
from .items import Outcome, Planned
from .options import Options
from .partfile import Appender, PartFile, Partial, Record, url_key
from .partfile import destination_error as os_error
from .partfile import destination_errors as os_errors
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


@dataclass(slots=True)
class Context:
    """What the downloads of one call share, passed explicitly by the manager."""

    http: Client
    options: Options
    policy: RetryPolicy
    emit: Callable[[events.Event], None]
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

    def emit(self, kind: Callable[..., events.Event], *args: Any) -> None:
        """Emit an event of ``kind`` about this download (its id and URL come first)."""
        self.ctx.emit(kind(self.planned.download_id, self.planned.display_url, *args))

    def received(self) -> int:
        return self.meter.received

    def started(self, total: int | None, resumed_from: int) -> None:
        self.meter.total, self.meter.received = total, resumed_from
        self.emit(events.Started, self.target, total, resumed_from)

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
            self.emit(events.Skipped, self.target, present.nbytes, present.reason)
            return self._outcome(Status.SKIPPED, present.nbytes, t0)
        except asyncio.CancelledError:
            await self._settle(keep=True)
            self.emit(events.Cancelled, p.final, self.meter.received)
            raise
        except DownloadError as exc:
            exc.attach(p.display_url)
            await self._settle(keep=is_transient(exc))
            self.emit(events.Failed, p.final, str(exc), ctx.clock() - t0)
            return self._outcome(Status.FAILED, self.meter.received, t0, str(exc))
        finally:
            await self._unlock()
        self.emit(events.Completed, self.target, nbytes, ctx.clock() - t0)
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
        if (
            found is None
            or ctx.options.overwrite
            or (reason := await self._verified(p.final)) is None
        ):
            return None
        await self._unlock()
        self.emit(events.Skipped, p.final, found, reason)
        return found

    @os_errors
    def _look(self, keep_unverified: bool) -> int | None:
        """The claim's one thread hop: lock, look at the final path, read any partial."""
        final = self.planned.final
        lock, existing = files.claim(self.ctx.dest, final, self.ctx.checked_dirs, keep_unverified)
        if lock is None:
            return _BUSY if existing is None else existing
        self.locks.append((final, lock))
        if lock == files.LOCK_UNSUPPORTED:
            self.part = PartFile(final, unique=True)
        else:
            self.partial = self.part.read()
        return existing

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
            raise os_error(exc) from exc
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
                self.emit(events.Retrying, attempt, delay, exc.cause)
                await asyncio.sleep(delay)

    async def _restart(self, reason: str) -> None:
        discarded = max(self.part.size, self.partial.size if self.partial else 0)
        self.partial = None
        self.resumed = False
        await self.ctx.lane.run(self.part.discard)
        if discarded:
            self.emit(events.Restarted, discarded, reason)

    async def _attempt(self) -> int:
        ctx, p = self.ctx, self.planned
        partial, self.partial = self.partial, None
        if partial is None and self.part.touched:  # an earlier attempt wrote some
            partial = await ctx.lane.run(self.part.read)
        self.resumed = False
        record, split, asked = self._resume_plan(partial)
        headers = self.headers
        if record is not None and asked is not None:
            headers = {**headers, **range_headers(asked, record.validator or "")}
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

    def _resume_plan(
        self, partial: Partial | None
    ) -> tuple[Record | None, segments.Split | None, tuple[int, int | None] | None]:
        """What the bytes on disk allow: their record, the split they continue (a
        segmented partial), and the range to ask for."""
        if partial is None:
            return None, None, None
        record = partial.usable_for(self.planned.url)
        if record is None:
            if partial.size:
                raise Restart("the partial file cannot be trusted")
            return None, None, None
        self.part.size = partial.size
        if not record.segments:
            return record, None, (partial.size, None)
        split = None if self.no_split else segments.resumable(record, partial.size)
        seg = split.first_missing() if split is not None else None
        if split is None or seg is None:
            raise Restart("the partial file's record does not add up")
        return record, split, (seg.position, seg.end - 1)

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
        if answer.decision is not Decision.FULL or self.part.unique or self.no_split:
            return answer, None
        tag, ranges = validator(resp.headers), resp.headers.get("Accept-Ranges", "")
        return answer, segments.plan(total, tag, url_key(p.url), ranges, opts.segments)

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
            sink = Appender(part, offset, self.record())
            tail = await pump(
                resp.content, sink, self.meter, dog, WriteBatch(ctx.write_size), ctx.lane
            )
        if p.expected is not None:
            self.emit(events.Validating)
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
        lock = await ctx.lane.run(os_errors(files.try_lock), target)
        if lock is None:
            raise DownloadError(
                cause=f"the server names it {name}, which another download is writing; give "
                "it a path with File(url, path=...)"
            )
        self.locks.append((target, lock))
        self.target = target
        existing = await ctx.lane.run(os_errors(files.existing_size), target)
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
