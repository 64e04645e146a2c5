"""One file's download, told in order: claim → attempts → request → resume decision →
stream or segments → verify and commit.

The layers below do the work: :mod:`rheo_nb.http` sends the request and decides what
its answer means for the bytes kept, :mod:`rheo_nb.stream` moves the body, a
:class:`~rheo_nb.destination.Destination` holds the bytes until they are verified and
puts the file in place, :mod:`rheo_nb.segments` runs the ranges of a large file, and one
:class:`~rheo_nb.retry.RetryPolicy` paces every retry. Errors are named after the file
here, once (:meth:`~rheo_nb.DownloadError.attach`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp

from . import events, segments
from .client import HostLimiter
from .destination import Destination, LocalDestination, Present, Resume, Skip, Unpacking
from .errors import DestinationError, DownloadError, ExtractError, IntegrityError, TooLargeError
from .events import Status
from .files import name_from_disposition
from .format import mask_url, size
from .http import Answer, Client, Decision, Restart, decide, range_headers
from .items import Outcome, Planned, host_key
from .objstore import Bucket, ObjectDestination, ObjectPath
from .options import Options
from .retry import RetryPolicy, is_transient
from .runner import ThreadLane
from .stream import Meter, Watchdog, WriteBatch, pump
from .traffic import TokenBucket, Traffic

#: Bytes all connections may hold in memory before writing, together; each connection
#: writes once it holds its share (at most ``Options.chunk_size``), which keeps memory
#: flat however many connections run.
_WRITE_BUDGET = 4 << 20
_MIN_WRITE = 128 << 10


@dataclass(slots=True)
class Context:
    """What the downloads of one call share, passed explicitly by the manager."""

    http: Client
    options: Options
    policy: RetryPolicy
    emit: Callable[[events.Event], None]
    dest: Path | None  # real path of the destination folder (None: a bucket)
    lane: ThreadLane
    limiter: HostLimiter
    clock: Callable[[], float] = time.monotonic
    #: Caps, pacing and backoff per origin (None: none of it asked for).
    traffic: Traffic | None = None
    #: Final paths of this call and the download writing each (server-given names too).
    paths: dict[Path | ObjectPath, str] = field(default_factory=dict)
    #: Folders already created and found inside ``dest``: checked once per call.
    checked_dirs: set[Path] = field(default_factory=set)

    def write_size(self) -> int:
        """Bytes a connection gathers before it writes them: its share of the budget."""
        share = _WRITE_BUDGET // max(1, self.limiter.total_in_use)
        return max(_MIN_WRITE, min(self.options.chunk_size, share))

    #: The bucket of an ``s3://`` destination, opened for the call.
    bucket: Bucket | None = None

    def destination(self, p: Planned) -> Destination:
        """Where ``p``'s bytes go: a multipart upload into the call's bucket, or a part
        file in the destination folder."""
        if isinstance(p.final, ObjectPath):
            assert self.bucket is not None
            return ObjectDestination(self.bucket, p.final, p.url, p.expected)
        assert self.dest is not None
        return LocalDestination(
            p.final, dest=self.dest, lane=self.lane, checked=self.checked_dirs, expected=p.expected
        )


async def download(ctx: Context, p: Planned) -> Outcome:
    """Download one planned file and report its outcome; never raises but for cancellation."""
    return await Download(ctx, p).run()


class _Offline(DownloadError):
    """Offline mode, and the file is not complete here (what is kept stays kept)."""


class Download:
    """One file's download: what it carries from attempt to attempt."""

    def __init__(self, ctx: Context, p: Planned) -> None:
        self.ctx, self.planned = ctx, p
        self.dest = ctx.destination(p)
        self.meter = Meter(
            p.download_id,
            p.display_url,
            ctx.emit,
            ctx.clock,
            interval=ctx.options.progress_interval,
            max_size=ctx.options.max_size,
        )
        self.headers = {"Accept-Encoding": "identity", **p.headers}
        self.sources = (p.url, *p.mirrors)
        self.who = (p.download_id, p.display_url)  # for the traffic's events
        self.url, self.host = p.url, p.host  # the source being tried (a mirror, maybe)
        self.resumed = False  # this attempt continues an earlier partial
        self.no_split = False  # ranges failed once: one stream from now on
        self.one_source = False  # ranges from mirrors failed the hash: none from them now
        self.extracted: Path | ObjectPath | None = None
        #: The archive is gone: its extraction removed it (``extract_remove``).
        self.removed = False

    # --- events --------------------------------------------------------------------------

    def emit(self, kind: Callable[..., events.Event], *args: Any) -> None:
        """Emit an event of ``kind`` about this download (its id and URL come first)."""
        self.ctx.emit(kind(self.planned.download_id, self.planned.display_url, *args))

    def received(self) -> int:
        return self.meter.received

    def bucket(self, url: str | None = None) -> TokenBucket | None:
        """The bandwidth cap the streams from ``url`` (default: the current source) take
        tokens from, if any."""
        traffic = self.ctx.traffic
        return None if traffic is None else traffic.bucket(url or self.url)

    def started(self, total: int | None, resumed_from: int) -> None:
        self.meter.total, self.meter.received = total, resumed_from
        self.emit(events.Started, self.dest.path, total, resumed_from)

    def _outcome(self, status: Status, nbytes: int, t0: float, error: str | None = None) -> Outcome:
        p = self.planned
        elapsed = self.ctx.clock() - t0
        source = None if self.url == p.url else self._shown(self.url)
        return Outcome(
            p.display_url,
            self.dest.path,
            status,
            nbytes,
            elapsed,
            error,
            p.download_id,
            p.file,
            source,
            self.extracted,
            self.removed,
        )

    def _shown(self, url: str) -> str:
        return mask_url(url, self.ctx.http.secret_params)

    # --- the story -----------------------------------------------------------------------

    async def run(self) -> Outcome:
        ctx, p = self.ctx, self.planned
        t0 = ctx.clock()
        try:
            skip = await self.dest.claim(overwrite=ctx.options.overwrite or self._not_its_own())
            unpack = self._unpacking()
            if skip is None:
                skip = await self._extracted_before(unpack)
            if skip is None:
                if ctx.options.offline:
                    raise _Offline(cause=self._offline_cause())
                try:
                    nbytes = await self._sources()
                except Present as present:
                    # Complete already under the server's name: kept, and extracted too.
                    skip = present.skip
                    await self.dest.stop(keep=False)
            if unpack is not None and not self.removed:
                self.extracted = await self.dest.extract(self._folder(), unpack)
                self.removed = unpack.remove and self.extracted is not None
        except asyncio.CancelledError:
            await self.dest.stop(keep=True)
            self.emit(events.Cancelled, p.final, self.meter.received)
            raise
        except DownloadError as exc:
            exc.attach(p.display_url)
            keep = (is_transient(exc) and self.dest.keep_failed) or isinstance(exc, _Offline)
            await self.dest.stop(keep=keep)
            self.emit(events.Failed, p.final, str(exc), ctx.clock() - t0)
            return self._outcome(Status.FAILED, self.meter.received, t0, str(exc))
        except BaseException:
            await self.dest.stop(keep=True)  # a bug: report it, but lose nothing
            raise
        if skip is not None:
            self.emit(events.Skipped, self.dest.path, skip.nbytes, skip.reason)
            return self._outcome(Status.SKIPPED, skip.nbytes, t0)
        self.emit(events.Completed, self.dest.path, nbytes, ctx.clock() - t0)
        return self._outcome(Status.COMPLETED, nbytes, t0)

    async def _sources(self) -> int:
        """The file from its URL, else from each mirror in turn: a source is left when it
        fails for good (a 404, 403, a wrong hash…) or runs out of retries."""
        p = self.planned
        sources = self.sources
        failures: list[str] = []
        for number, url in enumerate(sources, 1):
            self.url, self.host = url, p.host if number == 1 else host_key(url)
            try:
                return await self._attempts()
            except DownloadError as exc:
                if len(sources) == 1 or isinstance(exc, DestinationError | TooLargeError):
                    raise
                if isinstance(exc, IntegrityError):
                    # These bytes failed their check: none of them go on to the next source.
                    self.resumed = False
                    await self.dest.restart()
                failures.append(f"{self._shown(url)}: {exc.cause}")
                if number < len(sources):
                    cause = f"{exc.cause}; trying source {number + 1} of {len(sources)}"
                    self.emit(events.Retrying, 0, 0.0, cause)
        self.url = p.url
        raise DownloadError(cause=f"all {len(sources)} sources failed: " + "; ".join(failures))

    def _offline_cause(self) -> str:
        if not self._named_by_server():
            return "offline: not downloaded"
        # Its name is in the server's answer, and no answer can be had: say how to find it.
        return (
            "offline: not downloaded, or saved under a name its server gave "
            "(content_disposition=True), which offline mode cannot ask for: give the file "
            "its path with File(url, path=...) to find it offline"
        )

    def _named_by_server(self) -> bool:
        return self.ctx.options.content_disposition and self.planned.file.path is None

    def _not_its_own(self) -> bool:
        """The file at the path its URL suggests is another file of this call: a file
        named by its server finds its name only in the answer, and never skips on that."""
        p = self.planned
        return self._named_by_server() and self.ctx.paths.get(p.final, p.download_id) != (
            p.download_id
        )

    def _unpacking(self) -> Unpacking | None:
        """How to extract this file, when a ``File``'s or the call's ``extract`` asks."""
        p, opts = self.planned, self.ctx.options
        if not (p.extract or opts.extract):
            return None
        remove = p.file.extract_remove
        return Unpacking(
            explicit=bool(p.extract),
            remove=opts.extract_remove if remove is None else remove,
            max_size=opts.max_extract_size,
            max_files=opts.max_extract_files,
            progress=lambda members, total: self.emit(events.Extracting, members, total),
            label=p.display_url,
            claim=self._claim_target,
        )

    def _claim_target(self, target: Path | ObjectPath) -> None:
        """Take the path the archive's bytes say it extracts to (its name said where, and
        the call's claims hold that; a name can mislead: ``x.tar.gz`` may be one file)."""
        did = self.planned.download_id
        if self.ctx.paths.setdefault(target, did) != did:
            raise ExtractError(
                self.planned.display_url,
                f"it extracts into {target.name}, which is another file's path, or another "
                "archive's extraction, in this call; give it a folder with "
                "File(url, extract='folder')",
            )

    async def _extracted_before(self, unpack: Unpacking | None) -> Skip | None:
        """A skip when the file was removed by its extraction (``extract_remove``), which
        is still in place; never with ``overwrite``, which asks for the file again."""
        if unpack is None or not unpack.remove or self.ctx.options.overwrite:
            return None
        found = await self.dest.extracted(self._folder())
        if found is None:
            return None
        skip, self.extracted = found
        self.removed = True
        return skip

    def _folder(self) -> PurePosixPath | None:
        extract = self.planned.extract
        return extract if isinstance(extract, PurePosixPath) else None

    async def _attempts(self) -> int:
        """The current source, retried as the call's policy says. Each attempt holds a
        connection slot of the source's origin; a wait between attempts holds none, so a
        cut in the origin's connections (a 429) applies to the retries too."""
        attempt = 0
        refetched = False
        limiter = self.ctx.limiter
        while True:
            try:
                await limiter.acquire(self.host)
                try:
                    return await self._attempt()
                finally:
                    limiter.release(self.host)
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
                attempt, delay = self.ctx.policy.after(exc, attempt)
                self.emit(events.Retrying, attempt, delay, exc.cause)
                await asyncio.sleep(delay)

    async def _restart(self, reason: str) -> None:
        self.resumed = False
        dropped = await self.dest.restart()
        if dropped:
            self.emit(events.Restarted, dropped, reason)

    async def _attempt(self) -> int:
        ctx = self.ctx
        self.resumed = False
        resume = await self.dest.resumable(self.url, self.sources, no_split=self.no_split)
        headers = self.headers
        if resume is not None:
            headers = {**headers, **range_headers(resume.asked, resume.validator)}
        opts = ctx.options
        async with Watchdog(opts.low_speed_limit, opts.low_speed_time) as dog:
            with ctx.http.errors(self.received):
                resp = await ctx.http.get(self.url, headers, self.who, dog, self.planned.url)
                try:
                    answer, split = await self._receive(resp, resume)
                    if split is None:
                        return await self._stream(resp, answer, dog)
                except BaseException:
                    resp.release()
                    raise
        # The ranges have watchdogs of their own: this attempt's stops here.
        try:
            return await segments.download(self, split, resp)
        finally:
            resp.close()

    async def _receive(
        self, resp: aiohttp.ClientResponse, resume: Resume | None
    ) -> tuple[Answer, segments.Split | None]:
        """Decide what the answer means; the split to run, or None for one stream."""
        p, opts = self.planned, self.ctx.options
        verifiable = p.expected is not None
        if resume is None:
            answer = decide(resp.status, resp.reason or "", resp.headers, None, None)
        else:
            asked, sent, total = resume.asked, resume.validator or None, resume.total
            answer = decide(
                resp.status,
                resp.reason or "",
                resp.headers,
                asked,
                sent,
                total,
                verifiable=verifiable,
            )
            if answer.decision is Decision.FULL:
                # The range was refused (a changed file, or no range support): from zero.
                # A range from 0 is a resume too: an upload's parts are checked against it.
                await self._restart(answer.reason)
        if answer.decision is Decision.RESTART:
            raise Restart(answer.reason)
        total = answer.total
        if opts.max_size is not None and total is not None and total > opts.max_size:
            raise TooLargeError(cause=f"file is {size(total)}, over max_size={size(opts.max_size)}")
        if self._named_by_server() and self.dest.path == p.final:
            await self._rename(resp.headers.get("Content-Disposition"))
        if answer.decision is Decision.APPEND and resume is not None and resume.split:
            self.resumed = True
            return answer, resume.split
        if answer.decision is not Decision.FULL or self.no_split:
            return answer, None
        ranges = resp.headers.get("Accept-Ranges", "")
        split = segments.plan(
            total, answer.validator, self.url, ranges, opts.segments, self.dest.alignment
        )
        return answer, split

    async def _stream(self, resp: aiohttp.ClientResponse, answer: Answer, dog: Watchdog) -> int:
        """The body (or the rest of it) on one connection, then verify and commit."""
        ctx, p = self.ctx, self.planned
        sink = await self.dest.stream(self.url, answer)
        offset = self.dest.size
        self.resumed = offset > 0
        total = offset if answer.decision is Decision.COMPLETE else answer.total
        tail: list[bytes] = []
        if answer.decision is not Decision.COMPLETE:
            self.started(total, offset)
            batch = WriteBatch(ctx.write_size)
            tail = await pump(resp.content, sink, self.meter, dog, batch, self.bucket())
        if p.expected is not None:
            self.emit(events.Validating)
        return await self.dest.commit(tail, total, None)

    async def _rename(self, header: str | None) -> None:
        """Take the file's name from ``Content-Disposition`` (opt-in), in the same folder.

        The name is claimed for this call: another download of the call cannot take it.
        """
        p, paths = self.planned, self.ctx.paths
        name = name_from_disposition(header)
        # Its path was left unclaimed until now (items.Claims): claim the one it gets.
        target = p.final.with_name(name) if name else p.final
        if paths.setdefault(target, p.download_id) != p.download_id:
            said = f"the server names it {name}" if name else "the server gives it no name"
            raise DownloadError(
                cause=f"{said}, and {target.name} is also the name of another file of this "
                "call; give it a path with File(url, path=...)"
            )
        if target == p.final:
            return
        skip = await self.dest.rename(name, overwrite=self.ctx.options.overwrite)
        if skip is None:  # the name was not known before: nor was its extraction
            skip = await self._extracted_before(self._unpacking())
        if skip is not None:
            raise Present(skip)
