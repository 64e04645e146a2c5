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
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from . import auth, files, format, retry
from .client import Network
from .errors import (
    DestinationError,
    DownloadError,
    HTTPStatusError,
    IntegrityError,
    OptionError,
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
from .runner import ThreadLane
from .segments import MAX_SEGMENTS, MIN_SEGMENT, Segment, restore, steal

T = TypeVar("T")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Request headers that may follow a redirect to another origin; everything else the
#: caller set (Authorization, Cookie, API keys…) stays with the origin it was meant for.
_SAFE_ACROSS_ORIGINS = frozenset(
    {"accept", "accept-encoding", "accept-language", "range", "if-range", "user-agent"}
)
_LOCK_POLL = (0.02, 0.5)  # first and longest wait between tries of a busy lock
_READ_BUFSIZE = 1 << 17
#: Bytes all connections may hold in memory before writing, together; each connection
#: writes once it holds its share (at most ``Options.chunk_size``), which keeps memory
#: flat however many connections run.
_WRITE_BUDGET = 4 << 20
_MIN_WRITE = 128 << 10


@dataclass(slots=True)
class Context:
    """What a transfer needs from its manager."""

    session: aiohttp.ClientSession
    options: Options
    emit: Callable[[Event], None]
    dest: Path  # real path of the destination folder
    clock: Callable[[], float] = time.monotonic
    #: Proxy and .netrc settings read once per call (empty: the session decides).
    network: Network = field(default_factory=Network)
    #: Connections per host allowed to this manager, and how many are in use: a download
    #: holds one, and a segmented download may borrow more while some are free.
    host_limit: int = 8
    connections: Counter[str] = field(default_factory=Counter)
    splitting: Counter[str] = field(default_factory=Counter)  # segmented downloads per host
    #: Folders already created and found inside ``dest``: checked once per call, not per file.
    checked_dirs: set[Path] = field(default_factory=set)

    def write_size(self) -> int:
        """Bytes a connection gathers before it writes them: its share of the budget."""
        share = _WRITE_BUDGET // max(1, sum(self.connections.values()))
        return max(_MIN_WRITE, min(self.options.chunk_size, share))


#: The manager's thread lane for filesystem calls (the loop's default executor without one).
LANE: ContextVar[ThreadLane | None] = ContextVar("rheo_nb_lane", default=None)


class _Restart(Exception):
    """The partial cannot be trusted: drop it and start over at once (not a failure)."""


class _Present(Exception):
    """The file the server named (Content-Disposition) is already complete: skip it."""

    def __init__(self, size: int, reason: str) -> None:
        super().__init__(reason)
        self.size = size
        self.reason = reason


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in a thread and wait for it even through a cancellation.

    Used for calls that write through a file descriptor: returning early on cancel
    would let the caller close the descriptor while the thread still writes to it.
    The cancellation is re-raised once the thread is done (these calls are short).
    """
    lane = LANE.get()
    fut: asyncio.Future[T] = (
        lane.submit(fn, *args)
        if lane is not None
        else asyncio.get_running_loop().run_in_executor(None, fn, *args)
    )
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
    st = _State(p, checked_dirs=ctx.checked_dirs)

    def outcome(status: Status, nbytes: int, error: str | None = None) -> Outcome:
        path = st.target or p.final
        return Outcome(
            p.display_url, path, status, nbytes, ctx.clock() - t0, error, p.download_id, p.file
        )

    host = p.host
    ctx.connections[host] += 1
    try:
        skipped = await _claim(ctx, p, st)
        if skipped is not None:
            return outcome(Status.SKIPPED, skipped)
        nbytes = await _with_retries(ctx, p, st)
    except _Present as present:
        with contextlib.suppress(OSError):
            await blocking(_discard, st)  # a partial of the same file, now not needed
        assert st.target is not None
        ctx.emit(Skipped(p.download_id, p.display_url, st.target, present.size, present.reason))
        return outcome(Status.SKIPPED, present.size)
    except asyncio.CancelledError:
        if st.touched and not st.resumable:
            with contextlib.suppress(OSError):
                await blocking(_discard, st)
        ctx.emit(Cancelled(p.download_id, p.display_url, p.final, st.received))
        raise
    except DownloadError as exc:
        ctx.emit(Failed(p.download_id, p.display_url, p.final, str(exc), ctx.clock() - t0))
        return outcome(Status.FAILED, st.received, str(exc))
    finally:
        ctx.connections[host] -= 1
        if st.lock is not None:
            with contextlib.suppress(OSError):
                await blocking(files.unlock, p.final, st.lock)
            st.lock = None
        if st.target_lock is not None and st.target is not None:
            with contextlib.suppress(OSError):
                await blocking(files.unlock, st.target, st.target_lock)
    path = st.target or p.final
    ctx.emit(Completed(p.download_id, p.display_url, path, nbytes, ctx.clock() - t0))
    return outcome(Status.COMPLETED, nbytes)


async def _claim(ctx: Context, p: Planned, st: _State) -> int | None:
    """Become the one writer of the final path, and look at what is there already.

    Returns the size of a complete file to keep (the download is then skipped), else
    None with the lock held and ``st.partial`` read.
    """
    keep_unverified = not ctx.options.overwrite and p.expected is None
    delay, longest = _LOCK_POLL
    while (claim := await _fs(p.display_url, _look, ctx.dest, st, keep_unverified)) is None:
        # Another call or process is writing this file: wait, then most likely skip it.
        await asyncio.sleep(delay)
        delay = min(longest, delay * 2)
    if claim == _NOTHING or ctx.options.overwrite:
        return None
    reason = "already downloaded"
    if p.expected is not None:
        digest = await _fs(p.display_url, hash_file, p.final, p.expected.algorithm)
        if digest.hexdigest() != p.expected.hexdigest:
            return None  # not the file asked for: download it again
        reason = f"already downloaded, {p.expected.algorithm} verified"
        if st.lock is not None:
            await _fs(p.display_url, files.unlock, p.final, st.lock)
            st.lock = None
    ctx.emit(Skipped(p.download_id, p.display_url, p.final, claim, reason))
    return claim


_NOTHING = -1


def _look(dest: Path, st: _State, keep_unverified: bool) -> int | None:
    """Lock, then inspect the final path and any partial, in one thread hop. Blocking.

    Returns None when another writer holds the lock, the size of the file at the final
    path, or ``_NOTHING``.
    """
    final = st.planned.final
    if final.parent not in st.checked_dirs:
        files.ensure_parent(dest, final)
        st.checked_dirs.add(final.parent)
    lock = files.try_lock(final)
    if lock is None:
        return None
    try:
        existing = files.existing_size(final)
        if existing is not None and keep_unverified:
            files.unlock(final, lock)
            return existing
        if lock == files.LOCK_UNSUPPORTED:
            st.part = final.with_name(f".{final.name}.{os.getpid()}-{id(st):x}.part")
            st.unique = True
        else:
            st.partial = files.read_partial(final)
    except BaseException:
        files.unlock(final, lock)
        raise
    st.lock = lock
    return _NOTHING if existing is None else existing


async def _with_retries(ctx: Context, p: Planned, state: _State) -> int:
    opts = ctx.options
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
    lock: int | None = None  # the writer lock's descriptor while held
    partial: files.Partial | None = None  # read with the lock; used by the first attempt
    no_split: bool = False  # ranges failed once: one stream from now on
    fd: int | None = None
    hasher: Any = None
    target: Path | None = None  # the final path as named by Content-Disposition
    target_lock: int | None = None  # the writer lock of ``target`` while held
    checked_dirs: set[Path] = field(default_factory=set)  # the manager's, shared

    def __post_init__(self) -> None:
        self.part = files.sidecar(self.planned.final, ".part")


async def _attempt(ctx: Context, p: Planned, st: _State) -> int:
    key = files.url_key(p.url)
    partial, st.partial = st.partial, None
    if partial is None and st.touched and not st.unique:  # an earlier attempt wrote some
        partial = await _fs(p.display_url, files.read_partial, p.final)
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
    """GET with redirects followed by hand, so that credentials never change origin.

    Credentials (``auth``, a password in the URL, a ``.netrc`` login, cookies and the
    caller's headers) go only with requests to the origin of the file's URL (same scheme,
    host and port), and never again once a redirect has left it. A 401 lets ``auth``
    renew itself once (an OAuth2 token) before the request is sent again.
    """
    opts = ctx.options
    timeout = aiohttp.ClientTimeout(
        total=opts.total_timeout, sock_connect=opts.timeout, sock_read=opts.timeout
    )
    url = URL(p.url)
    credentials: auth.Auth | None = opts.auth
    if url.raw_user is not None or url.raw_password is not None:
        # aiohttp would turn these into basic auth on every hop; send them ourselves.
        try:
            credentials = auth.Basic(url.user or "", url.password or "")
        except OptionError as exc:
            raise DownloadError(p.display_url, f"unusable login in the URL ({exc})") from None
        url = url.with_user(None)
    elif credentials is None and not _has_header(headers, "Authorization"):
        credentials = ctx.network.login_for(url.host)
    if opts.cookies and not _has_header(headers, "Cookie"):
        headers = {**headers, "Cookie": auth.cookie_header(opts.cookies)}
    origin = _origin(url)
    on_origin = True  # still where the credentials belong
    tried_refresh = renewed = False
    hops = 0
    while True:
        sent = auth.Request(url, headers, proxy_for=ctx.network.proxy_for)
        if on_origin and credentials is not None:
            sent.headers = dict(headers)
            try:
                await credentials.apply(ctx.session, sent)
            except auth.TokenError as exc:
                raise _token_error(p, exc) from None
        resp = await ctx.session.get(
            sent.url,
            headers=sent.headers,
            # None keeps an injected session's own middlewares on the origin's requests.
            middlewares=(sent.middlewares or None) if on_origin else _CROSS_ORIGIN,
            proxy=ctx.network.proxy_for(url),
            allow_redirects=False,
            auto_decompress=False,
            timeout=timeout,
            read_bufsize=_READ_BUFSIZE,
        )
        if resp.status == 401 and on_origin and credentials is not None and not tried_refresh:
            tried_refresh = True
            try:
                renewed = await credentials.refresh(ctx.session, sent)
            except auth.TokenError as exc:
                resp.release()
                raise _token_error(p, exc) from None
            if renewed:
                resp.release()
                continue
        if resp.status in (401, 403):
            resp.release()
            raise _auth_failure(p, resp, credentials if on_origin else None, on_origin, renewed)
        if resp.status not in _REDIRECTS:
            return resp
        location = resp.headers.get("Location")
        resp.release()
        if not location:
            raise HTTPStatusError(p.display_url, resp.status, "redirect without a Location")
        hops += 1
        if hops > opts.max_redirects:
            raise RedirectError(p.display_url, f"more than {opts.max_redirects} redirects")
        try:
            target = url.join(URL(location))
        except ValueError:
            raise RedirectError(p.display_url, "redirect to a malformed URL") from None
        if target.scheme not in SCHEMES:
            raise RedirectError(
                p.display_url, f"redirect to a {target.scheme or 'relative'}: URL refused"
            )
        # A password in a Location is never used: it would be sent without being asked for.
        target = target.with_user(None)
        if on_origin and _origin(target) != origin:
            headers = {k: v for k, v in headers.items() if k.lower() in _SAFE_ACROSS_ORIGINS}
            on_origin = False
        url = target


async def _without_credentials(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    # Credentials the session adds by itself (an injected session's default headers or its
    # own netrc lookup) must not follow a redirect to another origin either.
    req.headers.popall("Authorization", None)
    return await handler(req)


_CROSS_ORIGIN: tuple[aiohttp.ClientMiddlewareType, ...] = (_without_credentials,)


def _has_header(headers: dict[str, str], name: str) -> bool:
    lowered = name.lower()
    return any(k.lower() == lowered for k in headers)


def _token_error(p: Planned, exc: auth.TokenError) -> DownloadError:
    return (TransferError if exc.transient else DownloadError)(p.display_url, exc.cause)


def _auth_failure(
    p: Planned,
    resp: aiohttp.ClientResponse,
    credentials: auth.Auth | None,
    on_origin: bool,
    renewed: bool,
) -> HTTPStatusError:
    """A 401/403 is final: the message says which credentials were sent (never the secret)."""
    exc = HTTPStatusError(p.display_url, resp.status, resp.reason or "")
    if credentials is not None:
        exc.add_context(
            f"(sent {credentials.describe()}" + (", renewed once" if renewed else "") + ")"
        )
    elif not on_origin:
        exc.add_context(
            f"(after a redirect to {format.mask_url(str(resp.url.origin()))}: credentials are "
            "not sent to another origin)"
        )
    elif resp.status == 401:
        exc.add_context("(no credentials were sent: pass auth=..., or headers=...)")
    return exc


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host or "", url.port)


def _network_error(ctx: Context, p: Planned, exc: BaseException, received: int) -> DownloadError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return DownloadError(
            p.display_url,
            f"TLS certificate not trusted ({exc.certificate_error}); pass verify='ca.pem' "
            "or an ssl.SSLContext for a private CA, or verify='system' to use the "
            "operating system's trust store (a network that inspects TLS)",
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        if exc.status == 407:
            return DownloadError(
                p.display_url, "the proxy asks for credentials (HTTP 407): check the proxy login"
            )
        return TransferError(p.display_url, f"the proxy answered HTTP {exc.status} {exc.message}")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return TransferError(
            p.display_url, f"cannot connect to the proxy ({exc.os_error.strerror or exc})"
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
        # The parser's message can span lines and quote raw bytes: keep its first words.
        gist = str(exc.message).splitlines()[0].split(": b'")[0].rstrip(":. ")
        if gist.startswith("Got more than"):
            gist = f"a header line is too long: {gist.lower()}"
        return DownloadError(p.display_url, f"malformed response ({gist})")
    if isinstance(exc, aiohttp.InvalidURL):
        return DownloadError(p.display_url, "invalid URL")
    # Text from elsewhere may quote the request URL, with its query key or password.
    text = format.mask_urls_in(str(exc), auth.secret_params(ctx.options.auth))
    return TransferError(p.display_url, f"{type(exc).__name__}: {text}")


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
    if opts.content_disposition and p.file.path is None and st.target is None:
        await _name_from_server(ctx, p, st, resp.headers.get("Content-Disposition"))
    if status == 200 and total is not None and _splittable(ctx, st, resp, total):
        assert validator is not None
        split = _Split([Segment(0, total)], total, validator, partial.url, p.host)
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
    chunk_size = ctx.write_size()
    max_size = opts.max_size
    low_limit, low_time = opts.low_speed_limit, opts.low_speed_time
    last_emit = window_t = clock()
    window_b = offset
    content = resp.content
    try:
        while True:
            chunk, http_chunk_end = await content.readchunk()
            if not chunk:
                if http_chunk_end:  # the boundary of a chunked body: more follows
                    continue
                break
            pending.append(chunk)
            pending_n += len(chunk)
            received = st.received + pending_n
            if max_size is not None and received > max_size:
                raise TooLargeError(
                    p.display_url, f"body is over max_size={size(max_size)}; stopped there"
                )
            if pending_n >= chunk_size:
                # Hand the chunks over before awaiting: a cancel during the write must not
                # leave them here for the cleanup below to write a second time.
                chunks, pending, pending_n = pending, [], 0
                await blocking(_write_part, st, chunks, offset, meta)
                chunk_size = ctx.write_size()
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
    except BaseException as exc:
        arrived = st.received + pending_n
        # Keep what arrived: the next attempt (or run) resumes after it.
        if pending and meta is not None:
            with contextlib.suppress(OSError):
                await blocking(_write_part, st, pending, offset, meta)
        if isinstance(exc, aiohttp.ClientError | TimeoutError):
            raise _network_error(ctx, p, exc, arrived) from exc
        raise
    return await _finish(ctx, p, st, pending, offset, total)


async def _name_from_server(ctx: Context, p: Planned, st: _State, header: str | None) -> None:
    """Take the file's name from ``Content-Disposition`` (opt-in), in the same folder.

    The named path gets a writer lock of its own, and a complete file there is skipped
    (verified against the hash when one is given), as at the URL's name.
    """
    name = files.name_from_disposition(header)
    if not name or name == p.final.name:
        return
    target = p.final.with_name(name)
    lock = await _fs(p.display_url, files.try_lock, target)
    if lock is None:
        raise DownloadError(
            p.display_url,
            f"the server names it {name}, which another download is writing; give it a "
            "path with File(url, path=...)",
        )
    st.target, st.target_lock = target, lock
    existing = await _fs(p.display_url, files.existing_size, target)
    if existing is None or ctx.options.overwrite:
        return
    reason = f"already downloaded as {name} (the server's name)"
    if p.expected is not None:
        digest = await _fs(p.display_url, hash_file, target, p.expected.algorithm)
        if digest.hexdigest() != p.expected.hexdigest:
            return
        reason += f", {p.expected.algorithm} verified"
    raise _Present(existing, reason)


def _write_part(st: _State, chunks: list[bytes], offset: int, meta: files.Partial | None) -> None:
    """Append to the part file (opened on the first write). Blocking.

    The count is kept here, in the thread: the write always completes, even when the task
    awaiting it is cancelled meanwhile.
    """
    if st.fd is None:
        st.fd, st.hasher = _open_part(st, offset, meta)
    st.received += files.write_all(st.fd, chunks, st.hasher)


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
    _commit(st)
    return nbytes


def _commit(st: _State) -> None:
    """Rename the verified part file, and let go of the lock in the same thread hop."""
    files.commit(st.part, st.planned.final, st.target)
    if st.lock is not None:
        files.unlock(st.planned.final, st.lock)
        st.lock = None


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
    return _Split(segments, partial.total, partial.validator, partial.url, p.host)


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
    write_size = ctx.write_size()
    try:
        while True:
            # ``seg.end`` moves down when another connection takes over part of this range.
            room = seg.end - seg.position - pending_n
            if room <= 0:
                break
            chunk, http_chunk_end = await content.readchunk()
            if not chunk:
                if http_chunk_end:
                    continue
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
            if pending_n >= write_size:
                chunks, pending, pending_n = pending, [], 0  # see _receive: never twice
                await _write_range(st, split, seg, chunks)
                write_size = ctx.write_size()
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
    await blocking(_write_at, st, split, seg, chunks)


def _write_at(st: _State, split: _Split, seg: Segment, chunks: list[bytes]) -> None:
    """Write a range's next bytes in place and count them, in the thread (as _write_part)."""
    assert st.fd is not None
    hasher = split.hasher if split.hasher is not None and seg.position == split.hashed else None
    n = files.write_all(st.fd, chunks, hasher, seg.position)
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
    _commit(st)
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
    elif _digits(total_text):
        total = int(total_text)
    else:
        return None
    if rng == "*":
        return (-1, -1, total) if total is not None else None
    first, dash, last = rng.partition("-")
    if not dash or not _digits(first) or not _digits(last):
        return None
    start, end = int(first), int(last)
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def _digits(text: str) -> bool:
    """ASCII digits only: ``isdigit()`` alone also accepts "²" and other scripts' digits."""
    return text.isascii() and text.isdigit()
