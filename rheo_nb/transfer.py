"""One file, from request to final name: redirects, resume, streaming, verify, rename.

The body streams into ``<name>.part`` beside the final path in large writes, hashed on
the way (in the writer thread); the part file is renamed to the final name only once its
length and hash check out. Filesystem work runs in worker threads, batched so that a small
file costs two thread hops: one to prepare, one to write, verify and rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from . import files, retry
from .errors import (
    DestinationError,
    DownloadError,
    HTTPStatusError,
    IntegrityError,
    RedirectError,
    TooLargeError,
    TransferError,
)
from .events import (
    Cancelled,
    Completed,
    Event,
    Failed,
    Progress,
    Retrying,
    Skipped,
    Started,
    Status,
    Validating,
)
from .format import size
from .hashing import hash_file
from .items import SCHEMES, Planned
from .options import Options
from .results import Outcome
from .segments import MAX_SEGMENTS, MIN_SEGMENT, Segment, restore, steal

T = TypeVar("T")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Request headers that may follow a redirect to another origin; everything else the
#: caller set (Authorization, Cookie, API keys…) stays with the origin it was meant for.
_SAFE_ACROSS_ORIGINS = frozenset(
    {"accept", "accept-encoding", "accept-language", "range", "if-range", "user-agent"}
)
_LOCK_POLL = (0.02, 0.5)  # first and longest wait between tries of a busy lock
_READ_BUFSIZE = 1 << 18


@dataclass(slots=True)
class Context:
    """What a transfer needs from its manager."""

    session: aiohttp.ClientSession
    options: Options
    emit: Callable[[Event], None]
    dest: Path  # real path of the destination folder
    clock: Callable[[], float] = time.monotonic
    #: Connections per host allowed to this manager, and how many are in use: a download
    #: holds one, and a segmented download may borrow more while some are free.
    host_limit: int = 8
    connections: Counter[str] = field(default_factory=Counter)
    splitting: Counter[str] = field(default_factory=Counter)  # segmented downloads per host


class _Restart(Exception):
    """The partial cannot be trusted: drop it and start over at once (not a failure)."""


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in a thread and wait for it even through a cancellation.

    Used for calls that write through a file descriptor: returning early on cancel
    would let the caller close the descriptor while the thread still writes to it.
    The cancellation is re-raised once the thread is done (these calls are short).
    """
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    cancelled = False
    while not fut.done():
        try:
            await asyncio.wait((fut,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return fut.result()


async def _fs(url: str, fn: Callable[..., T], *args: Any) -> T:
    """A filesystem step in a thread, its ``OSError`` turned into a :class:`DestinationError`."""
    try:
        return await blocking(fn, *args)
    except OSError as exc:
        raise DestinationError(url, _os_reason(exc)) from exc


def _os_reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return f"cannot write the file ({text})"


# --- the whole download -----------------------------------------------------------------


async def download(ctx: Context, p: Planned) -> Outcome:
    """Download one planned file and report its outcome; never raises but for cancellation."""
    t0 = ctx.clock()
    state = _State(p)

    def outcome(status: Status, nbytes: int, error: str | None = None) -> Outcome:
        return Outcome(
            p.display_url, p.final, status, nbytes, ctx.clock() - t0, error, p.download_id, p.file
        )

    lock: int | None = None
    host = _host(p.url)
    ctx.connections[host] += 1
    try:
        skipped = await _check_existing(ctx, p)
        if skipped is not None:
            return outcome(Status.SKIPPED, skipped)
        lock, waited = await _acquire_lock(ctx, p)
        if waited:  # another writer just finished this file, most likely
            skipped = await _check_existing(ctx, p)
            if skipped is not None:
                return outcome(Status.SKIPPED, skipped)
        nbytes = await _with_retries(ctx, p, state, unique_part=lock == files.LOCK_UNSUPPORTED)
    except asyncio.CancelledError:
        if state.touched and not state.resumable:
            with contextlib.suppress(OSError):
                await blocking(_discard, state)
        ctx.emit(Cancelled(p.download_id, p.display_url, p.final, state.received))
        raise
    except DownloadError as exc:
        ctx.emit(Failed(p.download_id, p.display_url, p.final, str(exc), ctx.clock() - t0))
        return outcome(Status.FAILED, state.received, str(exc))
    finally:
        ctx.connections[host] -= 1
        if lock is not None:
            with contextlib.suppress(OSError):
                await blocking(files.unlock, p.final, lock)
    ctx.emit(Completed(p.download_id, p.display_url, p.final, nbytes, ctx.clock() - t0))
    return outcome(Status.COMPLETED, nbytes)


async def _check_existing(ctx: Context, p: Planned) -> int | None:
    """The size of a complete file already at the final path that can be kept, else None."""
    existing = await _fs(p.display_url, files.inspect_target, ctx.dest, p.final)
    if existing.size is None or ctx.options.overwrite:
        return None
    reason = "already downloaded"
    if p.expected is not None:
        digest = await _fs(p.display_url, hash_file, p.final, p.expected.algorithm)
        if digest.hexdigest() != p.expected.hexdigest:
            return None  # not the file asked for: download it again
        reason = f"already downloaded, {p.expected.algorithm} verified"
    ctx.emit(Skipped(p.download_id, p.display_url, p.final, existing.size, reason))
    return existing.size


async def _acquire_lock(ctx: Context, p: Planned) -> tuple[int, bool]:
    """Wait for the writer lock of the final path; also True when it had to wait."""
    delay, longest = _LOCK_POLL
    waited = False
    while True:
        fd = await _fs(p.display_url, files.try_lock, p.final)
        if fd is not None:
            return fd, waited
        waited = True
        await asyncio.sleep(delay)
        delay = min(longest, delay * 2)


async def _with_retries(ctx: Context, p: Planned, state: _State, *, unique_part: bool) -> int:
    opts = ctx.options
    if unique_part:
        state.part = p.final.with_name(f".{p.final.name}.{os.getpid()}-{id(state):x}.part")
        state.unique = True
    attempt = 0
    restarted = False
    while True:
        try:
            return await _attempt(ctx, p, state)
        except _Restart:
            await _fs(p.display_url, _discard, state)
        except IntegrityError:
            # A resumed file that fails its hash may owe it to a bad prefix from an earlier
            # run: fetch it once more from zero before calling it corrupt.
            await _fs(p.display_url, _discard, state)
            if not state.resumed or restarted:
                raise
            restarted = True
        except DownloadError as exc:
            attempt += 1
            transient = retry.is_transient(exc)
            if not transient or attempt > opts.retries:
                if not transient or (state.touched and not state.resumable):
                    await _fs(p.display_url, _discard, state)  # nothing worth resuming
                if attempt > 1:
                    exc.add_context(f"(after {attempt} attempts)")
                raise
            delay = retry.backoff(attempt, opts.backoff, opts.backoff_max)
            if isinstance(exc, HTTPStatusError) and exc.retry_after is not None:
                if exc.retry_after > opts.retry_after_max:
                    exc.add_context(
                        f"(the server asks to retry after {exc.retry_after:.0f} s, longer than "
                        f"retry_after_max={opts.retry_after_max:g} s; not waiting)"
                    )
                    raise
                delay = exc.retry_after
            ctx.emit(Retrying(p.download_id, p.display_url, attempt, delay, exc.cause))
            await asyncio.sleep(delay)


def _discard(state: _State) -> None:
    for path in (state.part, files.sidecar(state.planned.final, ".part.json")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    state.received = 0


# --- one attempt --------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    """What one download carries from attempt to attempt."""

    planned: Planned
    part: Path = field(init=False)
    received: int = 0  # bytes of the file we hold (on disk or about to be)
    resumed: bool = False  # this attempt continues an earlier partial
    unique: bool = False  # writing to a private temp name (no lock): never resumed
    resumable: bool = False  # the partial on disk has what a later resume needs
    touched: bool = False  # this run wrote to the part file
    no_split: bool = False  # ranges failed once: one stream from now on
    fd: int | None = None
    hasher: Any = None

    def __post_init__(self) -> None:
        self.part = files.sidecar(self.planned.final, ".part")


async def _attempt(ctx: Context, p: Planned, st: _State) -> int:
    key = files.url_key(p.url)
    partial = None if st.unique else await _fs(p.display_url, files.read_partial, p.final)
    if partial is None or not (partial.size > 0 and partial.url == key and partial.validator):
        partial = files.Partial(0, key)
    st.resumable = partial.size > 0
    if partial.segments and not st.no_split:
        split = _resume_split(p, partial)
        if split is None:
            raise _Restart
        return await _segmented(ctx, p, st, split, None)
    headers = {"Accept-Encoding": "identity", **p.headers}
    if partial.size:
        headers["Range"] = f"bytes={partial.size}-"
        headers["If-Range"] = partial.validator or ""
    try:
        resp = await _open(ctx, p, headers)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _network_error(ctx, p, exc, 0) from exc
    try:
        return await _receive(ctx, p, st, resp, partial)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _network_error(ctx, p, exc, st.received) from exc
    except OSError as exc:  # a socket error surfaces as ClientOSError above; this is disk
        raise DestinationError(p.display_url, _os_reason(exc)) from exc
    finally:
        resp.release()
        if st.fd is not None:
            os.close(st.fd)
            st.fd = None


async def _open(ctx: Context, p: Planned, headers: dict[str, str]) -> aiohttp.ClientResponse:
    """GET with redirects followed by hand, so that credentials never change origin."""
    opts = ctx.options
    timeout = aiohttp.ClientTimeout(
        total=opts.total_timeout, sock_connect=opts.timeout, sock_read=opts.timeout
    )
    url: str | URL = p.url
    origin = _origin(URL(p.url))
    for _ in range(opts.max_redirects + 1):
        resp = await ctx.session.get(
            url,
            headers=headers,
            allow_redirects=False,
            auto_decompress=False,
            timeout=timeout,
            read_bufsize=_READ_BUFSIZE,
        )
        if resp.status not in _REDIRECTS:
            return resp
        location = resp.headers.get("Location")
        resp.release()
        if not location:
            raise HTTPStatusError(p.display_url, resp.status, "redirect without a Location")
        try:
            target = resp.url.join(URL(location))
        except ValueError:
            raise RedirectError(p.display_url, "redirect to a malformed URL") from None
        if target.scheme not in SCHEMES:
            raise RedirectError(
                p.display_url, f"redirect to a {target.scheme or 'relative'}: URL refused"
            )
        if _origin(target) != origin:
            headers = {k: v for k, v in headers.items() if k.lower() in _SAFE_ACROSS_ORIGINS}
            origin = _origin(target)
        url = target
    raise RedirectError(p.display_url, f"more than {opts.max_redirects} redirects")


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host or "", url.port)


def _network_error(ctx: Context, p: Planned, exc: BaseException, received: int) -> DownloadError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return DownloadError(
            p.display_url,
            f"TLS certificate not trusted ({exc.certificate_error}); pass verify='ca.pem' "
            "or an ssl.SSLContext for a private CA",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransferError(p.display_url, f"cannot connect ({exc.os_error.strerror or exc})")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransferError(p.display_url, f"no connection within {ctx.options.timeout:g} s")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return TransferError(
            p.display_url, f"no data for {ctx.options.timeout:g} s after {received} bytes"
        )
    if isinstance(exc, TimeoutError):
        return TransferError(
            p.display_url,
            f"attempt took longer than total_timeout={ctx.options.total_timeout} s "
            f"({received} bytes received)",
        )
    if isinstance(
        exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
    ):
        cause = str(exc).split(". ")[0] or type(exc).__name__
        return TransferError(p.display_url, f"connection lost after {received} bytes ({cause})")
    if isinstance(exc, aiohttp.ClientResponseError):
        return DownloadError(p.display_url, f"malformed response ({exc.message})")
    if isinstance(exc, aiohttp.InvalidURL):
        return DownloadError(p.display_url, "invalid URL")
    return TransferError(p.display_url, f"{type(exc).__name__}: {exc}")


async def _receive(
    ctx: Context,
    p: Planned,
    st: _State,
    resp: aiohttp.ClientResponse,
    partial: files.Partial,
) -> int:
    opts = ctx.options
    status = resp.status
    offset = partial.size
    validator = _validator(resp)
    total: int | None
    st.resumed = False
    if status == 206 and offset:
        rng = parse_content_range(resp.headers.get("Content-Range"))
        if (
            rng is None
            or rng[0] != offset
            or rng[2] is None
            or rng[1] != rng[2] - 1
            or (partial.total is not None and rng[2] != partial.total)
            or (validator is not None and validator != partial.validator)
        ):
            raise _Restart
        total = rng[2]
        st.resumed = True
    elif status == 416 and offset:
        rng = parse_content_range(resp.headers.get("Content-Range"))
        if rng is not None and rng[2] == offset:  # the partial already is the whole file
            st.received = offset
            st.resumed = True
            return await _finish(ctx, p, st, [], offset, offset)
        raise _Restart
    elif status == 200:
        offset = 0
        total = resp.content_length
    else:
        raise HTTPStatusError(
            p.display_url,
            status,
            resp.reason or "",
            retry_after=retry.parse_retry_after(resp.headers.get("Retry-After"))
            if status in retry.TRANSIENT_STATUSES
            else None,
        )
    if opts.max_size is not None and total is not None and total > opts.max_size:
        raise TooLargeError(
            p.display_url, f"file is {size(total)}, over max_size={size(opts.max_size)}"
        )
    if status == 200 and total is not None and _splittable(ctx, st, resp, total):
        assert validator is not None
        split = _Split([Segment(0, total)], total, validator, partial.url, _host(p.url))
        return await _segmented(ctx, p, st, split, resp)
    st.received = offset
    ctx.emit(Started(p.download_id, p.display_url, p.final, total, offset))
    meta = (
        files.Partial(0, partial.url, validator, total)
        if validator is not None
        and not st.unique
        and (offset or total is None or total > opts.chunk_size)
        else None
    )
    st.resumable = meta is not None

    pending: list[bytes] = []
    pending_n = 0
    clock = ctx.clock
    interval = opts.progress_interval
    chunk_size = opts.chunk_size
    max_size = opts.max_size
    low_limit, low_time = opts.low_speed_limit, opts.low_speed_time
    last_emit = window_t = clock()
    window_b = offset
    content = resp.content
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            pending.append(chunk)
            pending_n += len(chunk)
            received = st.received + pending_n
            if max_size is not None and received > max_size:
                raise TooLargeError(
                    p.display_url, f"body is over max_size={size(max_size)}; stopped there"
                )
            if pending_n >= chunk_size:
                await _flush(p, st, pending, offset, meta)
                pending, pending_n = [], 0
            now = clock()
            if now - last_emit >= interval:
                last_emit = now
                ctx.emit(Progress(p.download_id, p.display_url, received, total))
            if low_limit and now - window_t >= low_time:
                if received - window_b < low_limit * (now - window_t):
                    raise TransferError(
                        p.display_url,
                        f"slower than {size(low_limit)}/s for {low_time:g} s "
                        "(low_speed_limit / low_speed_time)",
                    )
                window_t, window_b = now, received
    except BaseException:
        # Keep what arrived: the next attempt (or run) resumes after it.
        if pending and meta is not None:
            with contextlib.suppress(OSError):
                await _flush(p, st, pending, offset, meta)
        raise
    return await _finish(ctx, p, st, pending, offset, total)


async def _flush(
    p: Planned, st: _State, chunks: list[bytes], offset: int, meta: files.Partial | None
) -> None:
    if st.fd is None:
        st.fd, st.hasher = await blocking(_open_part, st, offset, meta)
    st.received += await blocking(files.write_all, st.fd, chunks, st.hasher)


def _open_part(st: _State, offset: int, meta: files.Partial | None) -> tuple[int, Any]:
    """Open the part file at ``offset``; hash the kept prefix when a hash is expected."""
    p = st.planned
    st.touched = True
    if meta is not None:
        files.write_meta(p.final, meta)
    hasher = None
    if p.expected is not None:
        hasher = hash_file(st.part, p.expected.algorithm, offset) if offset else p.expected.new()
    return files.open_part(st.part, offset), hasher


async def _finish(
    ctx: Context,
    p: Planned,
    st: _State,
    chunks: list[bytes],
    offset: int,
    total: int | None,
) -> int:
    if p.expected is not None:
        ctx.emit(Validating(p.download_id, p.display_url))
    try:
        nbytes = await blocking(_write_verify_commit, st, chunks, offset, total)
    except OSError as exc:
        raise DestinationError(p.display_url, _os_reason(exc)) from exc
    st.received = nbytes
    return nbytes


def _write_verify_commit(st: _State, chunks: list[bytes], offset: int, total: int | None) -> int:
    """The last write, then length and hash checks, then the rename. Blocking."""
    p = st.planned
    if st.fd is None and offset and not chunks and total == offset:  # 416: partial complete
        st.hasher = hash_file(st.part, p.expected.algorithm) if p.expected else None
        nbytes = offset
    else:
        if st.fd is None:
            st.fd, st.hasher = _open_part(st, offset, None)
        nbytes = st.received + files.write_all(st.fd, chunks, st.hasher)
        os.close(st.fd)
        st.fd = None
    if total is not None and nbytes != total:
        raise IntegrityError(
            p.display_url, f"length mismatch: expected {total} bytes, received {nbytes}"
        )
    if p.expected is not None:
        actual = st.hasher.hexdigest()
        if actual != p.expected.hexdigest:
            raise IntegrityError(
                p.display_url,
                f"{p.expected.algorithm} mismatch: expected {p.expected.hexdigest}, got {actual}",
            )
    files.commit(st.part, p.final)
    return nbytes


# --- segmented downloads ----------------------------------------------------------------
#
# A large file whose server takes ranges streams over several connections into one
# preallocated part file. The download's own connection starts on the whole file;
# every 0.2 s (and whenever a connection finishes its range) the coordinator gives free
# connections the second half of the largest range left, as far as this host's
# connection limit and a fair share among the files splitting on that host allow.
# Each range is retried and resumed on its own; the sidecar keeps every range's
# progress, so a later run resumes each of them.

_RECRUIT_EVERY = 0.2
_SAVE_EVERY = 1.0


@dataclass(slots=True)
class _Split:
    """What the connections of one segmented download share."""

    segments: list[Segment]
    total: int
    validator: str
    key: str
    host: str
    owned: set[int] = field(default_factory=set)  # id() of segments with a connection
    extra: int = 0  # connections beyond the download's own
    last_emit: float = 0.0
    hasher: Any = None  # fed by the range at offset 0 while it is contiguous
    hashed: int = 0

    def meta(self) -> files.Partial:
        segments = [s.as_list() for s in self.segments]
        return files.Partial(0, self.key, self.validator, self.total, segments)

    @property
    def done(self) -> int:
        return sum(s.done for s in self.segments)


def _splittable(ctx: Context, st: _State, resp: aiohttp.ClientResponse, total: int | None) -> bool:
    return (
        total is not None
        and total >= 2 * MIN_SEGMENT
        and ctx.options.segments != 1
        and not st.unique
        and not st.no_split
        and _validator(resp) is not None
        and resp.headers.get("Accept-Ranges", "").lower() == "bytes"
    )


def _host(url: str) -> str:
    u = URL(url)
    return f"{u.scheme}://{u.host}:{u.port}"


async def _segmented(
    ctx: Context,
    p: Planned,
    st: _State,
    split: _Split,
    first: aiohttp.ClientResponse | None,
) -> int:
    """Download the ranges of ``split`` that are not on disk yet; verify; rename."""
    fresh = first is not None
    if p.expected is not None and fresh:
        split.hasher = p.expected.new()
    st.fd = await blocking(_open_preallocated, st, split.meta(), fresh)
    st.touched = st.resumable = True
    st.received = split.done
    ctx.emit(Started(p.download_id, p.display_url, p.final, split.total, split.done))
    ctx.splitting[split.host] += 1
    workers: dict[asyncio.Task[None], Segment] = {}

    def spawn(seg: Segment, resp: aiohttp.ClientResponse | None = None) -> None:
        if workers:
            split.extra += 1
            ctx.connections[split.host] += 1
        split.owned.add(id(seg))
        task = asyncio.create_task(_run_segment(ctx, p, st, split, seg, resp))
        workers[task] = seg

    def recruit() -> None:
        opts = ctx.options
        cap = MAX_SEGMENTS if opts.segments == "auto" else int(opts.segments)
        fair = max(1, ctx.host_limit // max(1, ctx.splitting[split.host]))
        while True:
            spare = ctx.host_limit - ctx.connections[split.host]
            if workers and (spare <= 0 or len(workers) >= min(cap, fair)):
                return
            seg = next(
                (s for s in split.segments if s.remaining and id(s) not in split.owned), None
            )
            if seg is None:
                seg = steal(split.segments)
                if seg is None:
                    return
                split.segments.insert(split.segments.index(_owner_of(split, seg)) + 1, seg)
            spawn(seg)

    last_save = ctx.clock()
    try:
        if first is not None:
            spawn(split.segments[0], first)
        recruit()
        while workers:
            finished, _ = await asyncio.wait(
                workers, timeout=_RECRUIT_EVERY, return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                seg = workers.pop(task)
                split.owned.discard(id(seg))
                if split.extra:
                    split.extra -= 1
                    ctx.connections[split.host] -= 1
                task.result()  # a range that failed for good fails the file
            recruit()
            if ctx.clock() - last_save >= _SAVE_EVERY:
                last_save = ctx.clock()
                await blocking(files.write_meta, p.final, split.meta())
    finally:
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.wait(workers)
        ctx.connections[split.host] -= split.extra
        ctx.splitting[split.host] -= 1
        with contextlib.suppress(OSError):
            await blocking(files.write_meta, p.final, split.meta())
    if p.expected is not None:
        ctx.emit(Validating(p.download_id, p.display_url))
    try:
        return await blocking(_verify_segmented, st, split)
    except OSError as exc:
        raise DestinationError(p.display_url, _os_reason(exc)) from exc


def _resume_split(p: Planned, partial: files.Partial) -> _Split | None:
    if partial.total is None or partial.validator is None or partial.size != partial.total:
        return None
    segments = restore(partial.segments, partial.total)
    if segments is None:
        return None
    return _Split(segments, partial.total, partial.validator, partial.url, _host(p.url))


def _owner_of(split: _Split, new: Segment) -> Segment:
    """The segment ``new`` was cut from: the one now ending where ``new`` starts."""
    return next(s for s in split.segments if s.end == new.start)


async def _run_segment(
    ctx: Context,
    p: Planned,
    st: _State,
    split: _Split,
    seg: Segment,
    resp: aiohttp.ClientResponse | None,
) -> None:
    """Fetch one range to its end, retrying transient failures from where it stopped."""
    opts = ctx.options
    attempt = 0
    while seg.remaining > 0:
        try:
            if resp is None:
                resp = await _open_range(ctx, p, st, split, seg)
            await _stream_range(ctx, p, st, split, seg, resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error: DownloadError = _network_error(ctx, p, exc, st.received)
        except DownloadError as exc:
            error = exc
        else:
            continue
        finally:
            if resp is not None:
                resp.close()  # a range cut short by a split leaves bytes unread
                resp = None
        attempt += 1
        if not retry.is_transient(error) or attempt > opts.retries:
            raise error
        delay = retry.backoff(attempt, opts.backoff, opts.backoff_max)
        ctx.emit(
            Retrying(
                p.download_id,
                p.display_url,
                attempt,
                delay,
                f"range {seg.position}-{seg.end - 1}: {error.cause}",
            )
        )
        await asyncio.sleep(delay)


async def _open_range(
    ctx: Context, p: Planned, st: _State, split: _Split, seg: Segment
) -> aiohttp.ClientResponse:
    headers = {
        "Accept-Encoding": "identity",
        **p.headers,
        "Range": f"bytes={seg.position}-{seg.end - 1}",
        "If-Range": split.validator,
    }
    resp = await _open(ctx, p, headers)
    if resp.status == 206:
        rng = parse_content_range(resp.headers.get("Content-Range"))
        validator = _validator(resp)
        if rng == (seg.position, seg.end - 1, split.total) and validator in (None, split.validator):
            return resp
    if resp.status in (200, 206, 416):
        # Ranges refused, mangled, or the file changed: start over with one stream.
        resp.close()
        st.no_split = True
        raise _Restart
    status, reason = resp.status, resp.reason or ""
    resp.close()
    raise HTTPStatusError(p.display_url, status, reason)


async def _stream_range(
    ctx: Context,
    p: Planned,
    st: _State,
    split: _Split,
    seg: Segment,
    resp: aiohttp.ClientResponse,
) -> None:
    opts = ctx.options
    content = resp.content
    pending: list[bytes] = []
    pending_n = 0
    clock = ctx.clock
    low_limit, low_time = opts.low_speed_limit, opts.low_speed_time
    window_t, window_b = clock(), seg.done
    try:
        while True:
            # ``seg.end`` moves down when another connection takes over part of this range.
            room = seg.end - seg.position - pending_n
            if room <= 0:
                break
            chunk = await content.readany()
            if not chunk:
                raise TransferError(
                    p.display_url,
                    f"connection closed {seg.remaining - pending_n} bytes before the end of "
                    f"range {seg.start}-{seg.end - 1}",
                )
            if len(chunk) > room:
                chunk = chunk[:room]
            pending.append(chunk)
            pending_n += len(chunk)
            st.received += len(chunk)
            if pending_n >= opts.chunk_size:
                await _write_range(st, split, seg, pending)
                pending, pending_n = [], 0
            now = clock()
            if now - split.last_emit >= opts.progress_interval:
                split.last_emit = now
                ctx.emit(Progress(p.download_id, p.display_url, st.received, split.total))
            if low_limit and now - window_t >= low_time:
                got = seg.done + pending_n - window_b
                if got < low_limit * (now - window_t):
                    raise TransferError(
                        p.display_url,
                        f"slower than {size(low_limit)}/s for {low_time:g} s "
                        "(low_speed_limit / low_speed_time)",
                    )
                window_t, window_b = now, seg.done + pending_n
    finally:
        if pending:
            with contextlib.suppress(OSError):
                await _write_range(st, split, seg, pending)


async def _write_range(st: _State, split: _Split, seg: Segment, chunks: list[bytes]) -> None:
    assert st.fd is not None
    hasher = split.hasher if split.hasher is not None and seg.position == split.hashed else None
    n = await blocking(files.write_all, st.fd, chunks, hasher, seg.position)
    seg.done += n
    if hasher is not None:
        split.hashed += n


def _open_preallocated(st: _State, meta: files.Partial, fresh: bool) -> int:
    """Open the part file at its full size (space reserved when the filesystem can)."""
    files.write_meta(st.planned.final, meta)
    assert meta.total is not None
    fd = files.open_part(st.part, 0 if fresh else meta.total)
    try:
        files.preallocate(fd, meta.total)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _verify_segmented(st: _State, split: _Split) -> int:
    p = st.planned
    assert st.fd is not None
    os.close(st.fd)
    st.fd = None
    if split.done != split.total:
        raise IntegrityError(
            p.display_url, f"length mismatch: expected {split.total} bytes, have {split.done}"
        )
    if p.expected is not None:
        hasher = split.hasher or p.expected.new()
        start = split.hashed if split.hasher is not None else 0
        actual = hash_file(st.part, p.expected.algorithm, start=start, into=hasher).hexdigest()
        if actual != p.expected.hexdigest:
            raise IntegrityError(
                p.display_url,
                f"{p.expected.algorithm} mismatch: expected {p.expected.hexdigest}, got {actual}",
            )
    files.commit(st.part, p.final)
    return split.total


def _validator(resp: aiohttp.ClientResponse) -> str | None:
    """What ``If-Range`` can send back: a strong ETag, else Last-Modified."""
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.headers.get("Last-Modified")


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``"bytes 0-99/1000"`` → ``(0, 99, 1000)``; ``"bytes */1000"`` → ``(-1, -1, 1000)``;
    ``*`` as the total gives None there. Anything inconsistent gives None."""
    if not value:
        return None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    rng, slash, total_text = spec.strip().partition("/")
    if not slash:
        return None
    total: int | None
    if total_text == "*":
        total = None
    elif total_text.isdigit():
        total = int(total_text)
    else:
        return None
    if rng == "*":
        return (-1, -1, total) if total is not None else None
    first, dash, last = rng.partition("-")
    if not dash or not first.isdigit() or not last.isdigit():
        return None
    start, end = int(first), int(last)
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total
