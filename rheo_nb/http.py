"""One GET, and the HTTP facts a download decides on.

:meth:`Client.get` sends one request in three layers, as httpx does:

* credentials (:meth:`Client.get`): the call's ``auth``, a password in the URL or a
  ``.netrc`` login, applied only while the request stays on the origin of the file's
  URL, and renewed once after a 401 (an OAuth2 token);
* redirects (:meth:`Client._send_handling_redirects`): followed by hand, each target
  built by the pure :func:`next_hop`; leaving the origin drops every credential;
* one request (:meth:`Client._send_single`).

Around a whole attempt, :meth:`Client.errors` is the one place where aiohttp, socket and
timeout errors become rheo_nb errors. The rest is pure: :func:`parse_content_range`,
:func:`validator` and :func:`decide`, the resume decision (``206`` matches, ``200``
restarts, ``416`` complete or restart), testable without a server.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from . import auth, format
from .client import Network
from .errors import DownloadError, HTTPStatusError, OptionError, RedirectError, TransferError
from .items import SCHEMES, host_problem
from .options import Options
from .retry import TRANSIENT_STATUSES, parse_retry_after
from .stream import Watchdog
from .traffic import Traffic

REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: What aiohttp reads from a socket at a time, and so the largest chunk a body yields.
READ_BUFSIZE = 1 << 17
#: Headers a request keeps after a redirect to another origin; everything else (the
#: caller's, an injected session's defaults, cookies, credentials) stays behind.
_SAFE_ACROSS_ORIGINS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "connection",
        "host",
        "if-range",
        "range",
        "user-agent",
    }
)

Origin = tuple[str, str, int | None]


def origin_of(url: URL) -> Origin:
    return (url.scheme, url.host or "", url.port)


class Client:
    """What the requests of one call share: the session, the options that shape a
    request, and the network settings read for the call (proxies, ``.netrc``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        options: Options,
        network: Network,
        secret_params: frozenset[str] = frozenset(),
        traffic: Traffic | None = None,
    ) -> None:
        self.session = session
        self.options = options
        self.network = network
        self.secret_params = secret_params
        #: Pacing, pauses and backoff per origin (every request, redirects included).
        self.traffic = traffic
        #: aiohttp's read buffer: under a cap, sized from each connection's share of it.
        self.read_bufsize = READ_BUFSIZE
        if traffic is not None and traffic.read_size is not None:
            self.read_bufsize = traffic.read_size
        self.timeout = aiohttp.ClientTimeout(
            total=options.total_timeout, sock_connect=options.timeout, sock_read=options.timeout
        )

    async def get(
        self,
        url: str,
        headers: Mapping[str, str],
        who: tuple[str, str] = ("", ""),
        dog: Watchdog | None = None,
        home: str = "",
    ) -> aiohttp.ClientResponse:
        """GET ``url`` with credentials for its origin; the response is not yet read.

        ``home``: the file's own URL when ``url`` is one of its mirrors. The call's
        ``auth``, ``cookies`` and every header given (the call's and the file's) belong
        to the origin of ``home``: a mirror on another origin gets none of them, as a
        redirect's target does not, and uses its own login (in its URL, or ``.netrc``).

        ``who``: the download id and the URL to show, for the traffic's events; ``dog``:
        the attempt's low-speed watchdog, which does not count the time a request waits
        for its turn (pacing, a pause the origin asked for).

        :raises HTTPStatusError: 401 or 403 (final, naming the credentials sent, never
            the secret), or a 429 or 503 the traffic slowed the origin down for
            (``excused``: not counted as a retry); :raises RedirectError: too many
            redirects, or to a refused scheme. Network errors are aiohttp's: translate
            them with :meth:`errors`.
        """
        target = URL(url)
        foreign = bool(home) and home != url and origin_of(target) != origin_of(URL(home))
        if foreign:
            headers = {k: v for k, v in headers.items() if k.lower() in _SAFE_ACROSS_ORIGINS}
        else:
            headers = dict(headers)
        credentials: auth.Auth | None = None if foreign else self.options.auth
        if target.raw_user is not None or target.raw_password is not None:
            # aiohttp would turn these into basic auth on every hop; send them ourselves.
            try:
                credentials = auth.Basic(target.user or "", target.password or "")
            except OptionError as exc:
                raise DownloadError(cause=f"unusable login in the URL ({exc})") from None
            target = target.with_user(None)
        elif credentials is None and not _has_header(headers, "Authorization"):
            credentials = self.network.login_for(target.host)
        if self.options.cookies and not foreign and not _has_header(headers, "Cookie"):
            headers["Cookie"] = auth.cookie_header(self.options.cookies)
        renewed = False
        while True:
            resp, sent = await self._send_handling_redirects(target, headers, credentials, who, dog)
            if resp.status == 401 and sent is not None and credentials is not None and not renewed:
                renewed = await self._refresh(credentials, sent, resp)
                if renewed:
                    resp.release()
                    continue
            if resp.status in (401, 403):
                resp.release()
                raise _auth_failure(resp, credentials, sent is not None, renewed, foreign)
            return resp

    async def _send_handling_redirects(
        self,
        url: URL,
        headers: dict[str, str],
        credentials: auth.Auth | None,
        who: tuple[str, str],
        dog: Watchdog | None,
    ) -> tuple[aiohttp.ClientResponse, auth.Request | None]:
        """Follow redirects; returns the response and, while still on the origin, the
        request as sent (what a 401 renewal needs)."""
        origin = origin_of(url)
        on_origin = True
        hops = 0
        while True:
            sent = auth.Request(url, dict(headers), proxy_for=self.network.proxy_for)
            if on_origin and credentials is not None:
                try:
                    await credentials.apply(self.session, sent)
                except auth.TokenError as exc:
                    raise _token_error(exc) from None
            resp = await self._send_single(sent, on_origin, who, dog)
            if resp.status not in REDIRECTS:
                return resp, sent if on_origin else None
            location = resp.headers.get("Location")
            resp.release()
            hops += 1
            url = next_hop(url, resp.status, location, hops, self.options.max_redirects)
            if on_origin and origin_of(url) != origin:
                headers = {k: v for k, v in headers.items() if k.lower() in _SAFE_ACROSS_ORIGINS}
                on_origin = False

    async def _send_single(
        self, sent: auth.Request, on_origin: bool, who: tuple[str, str], dog: Watchdog | None
    ) -> aiohttp.ClientResponse:
        traffic = self.traffic
        if traffic is None:
            return await self._send(sent, on_origin)
        if dog is not None:
            dog.pause()  # waiting for its turn is not the server's slowness
        try:
            ticket = await traffic.before_request(sent.url, *who)
        finally:
            if dog is not None:
                dog.resume()
        resp = await self._send(sent, on_origin)
        traffic.after_response(ticket, resp.status, resp.headers)
        if traffic.excuses(ticket, resp.status):
            resp.release()
            raise HTTPStatusError(
                status=resp.status,
                reason=format.printable(resp.reason or ""),
                retry_after=traffic.pause_left(sent.url),
                excused=True,
            )
        return resp

    async def _send(self, sent: auth.Request, on_origin: bool) -> aiohttp.ClientResponse:
        return await self.session.get(
            sent.url,
            headers=sent.headers,
            # None keeps an injected session's own middlewares on the origin's requests.
            middlewares=(sent.middlewares or None) if on_origin else _CROSS_ORIGIN,
            proxy=self.network.proxy_for(sent.url),
            allow_redirects=False,
            auto_decompress=False,
            timeout=self.timeout,
            read_bufsize=self.read_bufsize,
        )

    async def _refresh(
        self, credentials: auth.Auth, sent: auth.Request, resp: aiohttp.ClientResponse
    ) -> bool:
        try:
            return await credentials.refresh(self.session, sent)
        except auth.TokenError as exc:
            resp.release()
            raise _token_error(exc) from None

    @contextlib.contextmanager
    def errors(self, received: Callable[[], int]) -> Iterator[None]:
        """Translate network errors raised in the block; ``received`` tells how far the
        body had got, for the message."""
        try:
            yield
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.translate(exc, received()) from exc

    def translate(self, exc: BaseException, received: int) -> DownloadError:
        """The rheo_nb error for a network error: what happened, in words, never a secret."""
        opts = self.options
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return DownloadError(
                cause=f"TLS certificate not trusted ({exc.certificate_error}); pass "
                "verify='ca.pem' or an ssl.SSLContext for a private CA, or verify='system' to "
                "use the operating system's trust store (a network that inspects TLS)"
            )
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            if exc.status == 407:
                return DownloadError(
                    cause="the proxy asks for credentials (HTTP 407): check the proxy login"
                )
            return TransferError(
                cause=f"the proxy answered HTTP {exc.status} {format.printable(exc.message)}"
            )
        if isinstance(exc, aiohttp.ClientProxyConnectionError):
            return TransferError(
                cause=f"cannot connect to the proxy ({exc.os_error.strerror or exc})"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return TransferError(cause=f"cannot connect ({exc.os_error.strerror or exc})")
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return TransferError(cause=f"no connection within {opts.timeout:g} s")
        if isinstance(exc, aiohttp.SocketTimeoutError):
            return TransferError(cause=f"no data for {opts.timeout:g} s after {received} bytes")
        if isinstance(exc, TimeoutError):
            return TransferError(
                cause=f"attempt took longer than total_timeout={opts.total_timeout} s "
                f"({received} bytes received)"
            )
        if isinstance(
            exc,
            aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError,
        ):
            gist = str(exc).split(". ")[0] or type(exc).__name__
            return TransferError(cause=f"connection lost after {received} bytes ({gist})")
        if isinstance(exc, aiohttp.ClientResponseError):
            # The parser's message can span lines and quote raw bytes: keep its first words.
            gist = str(exc.message).splitlines()[0].split(": b'")[0].rstrip(":. ")
            if gist.startswith("Got more than"):
                gist = f"a header line is too long: {gist.lower()}"
            return DownloadError(cause=f"malformed response ({format.printable(gist)})")
        if isinstance(exc, aiohttp.InvalidURL):
            return DownloadError(cause="invalid URL")
        # Text from elsewhere may quote the request URL, with its query key or password.
        text = format.mask_urls_in(str(exc), self.secret_params)
        return TransferError(cause=f"{type(exc).__name__}: {format.printable(text)}")


def next_hop(url: URL, status: int, location: str | None, hops: int, max_redirects: int) -> URL:
    """The URL a redirect leads to, without any login it may carry.

    :raises HTTPStatusError: a redirect without a ``Location``;
    :raises RedirectError: more than ``max_redirects``, a malformed target, or a scheme
        other than http(s).
    """
    if not location:
        raise HTTPStatusError(status=status, reason="redirect without a Location")
    if hops > max_redirects:
        raise RedirectError(cause=f"more than {max_redirects} redirects")
    try:
        target = url.join(URL(location))
    except ValueError:
        raise RedirectError(cause="redirect to a malformed URL") from None
    if target.scheme not in SCHEMES:
        raise RedirectError(cause=f"redirect to a {target.scheme or 'relative'}: URL refused")
    problem = host_problem(target, target.raw_host or "")
    if problem:
        raise RedirectError(cause=f"redirect to a URL whose host {problem}")
    # A password in a Location is never used: it would be sent without being asked for.
    return target.with_user(None)


async def _without_credentials(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    # What the session adds by itself (an injected session's default headers and cookies,
    # its own netrc lookup) must not follow a redirect to another origin either.
    for name in [k for k in req.headers if k.lower() not in _SAFE_ACROSS_ORIGINS]:
        req.headers.popall(name, None)
    return await handler(req)


_CROSS_ORIGIN: tuple[aiohttp.ClientMiddlewareType, ...] = (_without_credentials,)


def _has_header(headers: Mapping[str, str], name: str) -> bool:
    lowered = name.lower()
    return any(k.lower() == lowered for k in headers)


def _token_error(exc: auth.TokenError) -> DownloadError:
    return (TransferError if exc.transient else DownloadError)(cause=exc.cause)


def _auth_failure(
    resp: aiohttp.ClientResponse,
    credentials: auth.Auth | None,
    on_origin: bool,
    renewed: bool,
    mirror: bool = False,
) -> HTTPStatusError:
    """A 401/403 is final: the message says which credentials were sent (never the secret)."""
    exc = HTTPStatusError(status=resp.status, reason=format.printable(resp.reason or ""))
    if not on_origin:
        exc.add_context(
            f"(after a redirect to {format.mask_url(str(resp.url.origin()))}: credentials are "
            "not sent to another origin)"
        )
    elif credentials is not None:
        exc.add_context(
            f"(sent {credentials.describe()}" + (", renewed once" if renewed else "") + ")"
        )
    elif mirror:
        exc.add_context(
            "(a mirror on another origin gets no credentials given for the file's URL: put "
            "its login in its URL, or in .netrc)"
        )
    elif resp.status == 401:
        exc.add_context("(no credentials were sent: pass auth=..., or headers=...)")
    return exc


# --- the pure HTTP facts -------------------------------------------------------------------


def validator(headers: Mapping[str, str]) -> str | None:
    """What ``If-Range`` can send back: a strong ETag, else Last-Modified.

    A value with bytes outside printable ASCII (legal as obs-text, but not something a
    request header can safely carry back) is unusable: resume and splitting go without.
    """
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/") and _sendable(etag):
        return etag
    modified = headers.get("Last-Modified")
    return modified if modified and _sendable(modified) else None


def _sendable(value: str) -> bool:
    return value.isascii() and value.isprintable()


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


class Decision(enum.Enum):
    FULL = "full"  # a 200: the whole body follows, from byte 0
    APPEND = "append"  # a 206 for exactly the range asked
    COMPLETE = "complete"  # a 416 saying the partial already is the whole file
    RESTART = "restart"  # the partial cannot be continued from this answer


class Restart(Exception):
    """The partial cannot be continued: drop it and start the file over at once (not a
    failure, and no attempt is counted). ``no_split``: ranges failed; one stream now."""

    def __init__(self, reason: str, *, no_split: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.no_split = no_split


@dataclass(frozen=True, slots=True)
class Answer:
    decision: Decision
    #: The file's size when the answer tells it.
    total: int | None = None
    #: Why a partial is dropped (for a FULL answer to a range request, or a RESTART).
    reason: str = ""
    #: The response's validator (:func:`validator`), for ``If-Range`` next time.
    validator: str | None = None


def decide(
    status: int,
    reason: str,
    headers: Mapping[str, str],
    asked: tuple[int, int | None] | None,
    sent_validator: str | None,
    known_total: int | None = None,
    *,
    verifiable: bool = False,
) -> Answer:
    """What a response means for the bytes on disk. Pure.

    ``reason``: the status line's reason phrase (for an error). ``asked``: the range
    requested, ``(first, last)`` with ``last`` None for "to the end", or None for the
    whole file. ``sent_validator``: the ``If-Range`` sent. ``known_total``: the size the
    partial's record gives. ``verifiable``: a hash will check the result, so a ``416``
    need not be confirmed by the validator.

    :raises HTTPStatusError: any other status (transient ones with their Retry-After).
    """
    got = validator(headers)
    if status == 200:
        return _whole(headers, asked, sent_validator, got)
    if status == 206 and asked is not None:
        return _partial_content(headers, asked, sent_validator, got, known_total)
    if status == 416 and asked is not None:
        return _not_satisfiable(headers, asked, sent_validator, got, verifiable)
    retry_after = None
    if status in TRANSIENT_STATUSES:
        retry_after = parse_retry_after(headers.get("Retry-After"))
    raise HTTPStatusError(status=status, reason=format.printable(reason), retry_after=retry_after)


def _whole(
    headers: Mapping[str, str],
    asked: tuple[int, int | None] | None,
    sent: str | None,
    got: str | None,
) -> Answer:
    length = headers.get("Content-Length")
    total = int(length) if length is not None and _digits(length) else None
    if asked is None:
        return Answer(Decision.FULL, total, validator=got)
    changed = got is not None and sent is not None and got != sent
    why = "the file changed on the server" if changed else "the server does not support resume"
    return Answer(Decision.FULL, total, why, got)


def _partial_content(
    headers: Mapping[str, str],
    asked: tuple[int, int | None],
    sent: str | None,
    got: str | None,
    known_total: int | None,
) -> Answer:
    rng = parse_content_range(headers.get("Content-Range"))
    first, last = asked
    start, end, total = rng if rng is not None else (-1, -1, None)
    if total is not None:
        exact = start == first and end == (total - 1 if last is None else last)
        # With no If-Range sent (a hash will check the bytes), any validator will do.
        if exact and known_total in (None, total) and (sent is None or got in (None, sent)):
            return Answer(Decision.APPEND, total, validator=got or sent)
    return Answer(Decision.RESTART, reason="the answer to a range request does not match it")


def _not_satisfiable(
    headers: Mapping[str, str],
    asked: tuple[int, int | None],
    sent: str | None,
    got: str | None,
    verifiable: bool,
) -> Answer:
    rng = parse_content_range(headers.get("Content-Range"))
    first, last = asked
    # "Nothing after byte N" confirms the partial is whole only if it is still this file.
    confirmed = (got is not None and got == sent) or ((got is None or sent is None) and verifiable)
    if rng is not None and last is None and rng[2] == first and confirmed:
        return Answer(Decision.COMPLETE, first, validator=got or sent)
    return Answer(Decision.RESTART, reason="the server cannot confirm the partial file")


def range_headers(asked: tuple[int, int | None], validator: str) -> dict[str, str]:
    """``Range`` for ``asked`` (``(first, last)``, last None: to the end) and its
    ``If-Range`` (when ``validator`` is given), so a changed file answers with all of its
    new bytes instead."""
    first, last = asked
    headers = {"Range": f"bytes={first}-{'' if last is None else last}"}
    if validator:  # none: the bytes kept came from another source; a hash will check them
        headers["If-Range"] = validator
    return headers
