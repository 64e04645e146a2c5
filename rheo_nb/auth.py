"""Credentials, sent only to the origin of the URL they were given for.

>>> rheo_nb.fetch_sync(urls, auth=("alice", os.environ["PASSWORD"]))           # doctest: +SKIP
>>> rheo_nb.fetch_sync(urls, auth=rheo_nb.BearerToken(os.environ["TOKEN"]))    # doctest: +SKIP
>>> rheo_nb.fetch_sync(urls, auth=rheo_nb.ApiKey(key, query="api_key"))        # doctest: +SKIP

Each kind implements :class:`Auth`: ``apply`` adds the credentials to one request (a
header, a query parameter or an aiohttp middleware), ``refresh`` renews them after a 401,
``describe`` names them, without the secret, for error messages. The transfer calls
``apply`` only while a request stays on the origin of the file's URL, so a redirect to
another host, port or scheme never carries them. No ``repr`` here shows a secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp
from yarl import URL

from . import format
from .errors import OptionError

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_COOKIE_VALUE = re.compile(r"^[!#-+\--:<-\[\]-~]*$")  # RFC 6265 cookie-octets
#: Renew an OAuth2 token this long before it expires (at most; a tenth of its life at least).
TOKEN_MARGIN = 30.0
_TOKEN_BODY_MAX = 1 << 16  # a token answer is small; a bigger one is not read further


def _no_proxy(url: URL) -> URL | None:
    return None


@dataclass(slots=True)
class Request:
    """One request about to be sent to the origin the credentials are for.

    ``proxy_for`` is the call's proxy choice, for requests the credentials make of their
    own (an OAuth2 token request); None leaves it to the session.
    """

    url: URL
    headers: dict[str, str]
    middlewares: tuple[aiohttp.ClientMiddlewareType, ...] = ()
    proxy_for: Callable[[URL], URL | None] = _no_proxy


@runtime_checkable
class Auth(Protocol):
    """What ``auth=`` accepts besides a ``(user, password)`` tuple or ``aiohttp.BasicAuth``."""

    def describe(self) -> str:
        """The kind of credentials and whose they are, never the secret: for messages."""
        ...

    async def apply(self, session: aiohttp.ClientSession, request: Request) -> None:
        """Add the credentials to ``request``; an explicit header of the same name wins."""
        ...

    async def refresh(self, session: aiohttp.ClientSession, request: Request) -> bool:
        """After a 401 answering ``request``: renew; True when sending again may succeed."""
        ...


class TokenError(Exception):
    """Credentials could not be obtained (an OAuth2 token request failed).

    The transfer turns it into a :class:`~rheo_nb.DownloadError` of the file;
    ``transient`` says whether another attempt may succeed.
    """

    def __init__(self, cause: str, *, transient: bool) -> None:
        super().__init__(cause)
        self.cause = cause
        self.transient = transient


def _set_default(headers: dict[str, str], name: str, value: str) -> None:
    lowered = name.lower()
    if not any(k.lower() == lowered for k in headers):
        headers[name] = value


def _need_text(name: str, value: object, *, empty: bool = False) -> None:
    if not isinstance(value, str) or (not value and not empty):
        raise OptionError(f"{name} must be a non-empty string")
    if any(c in value for c in "\r\n\x00"):
        raise OptionError(f"{name} contains CR, LF or NUL")


@dataclass(frozen=True, slots=True)
class Basic:
    """HTTP basic auth; what a ``(user, password)`` tuple or ``aiohttp.BasicAuth`` becomes."""

    user: str
    password: str
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        _need_text("basic auth user", self.user)
        _need_text("basic auth password", self.password, empty=True)
        if ":" in self.user:
            raise OptionError("basic auth user must not contain ':'")

    def __repr__(self) -> str:
        return f"Basic({self.user!r}, {format.MASK!r})"

    def header(self) -> str:
        raw = f"{self.user}:{self.password}".encode(self.encoding)
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def describe(self) -> str:
        return f"basic auth as user {self.user!r}"

    async def apply(self, session: aiohttp.ClientSession, request: Request) -> None:
        _set_default(request.headers, "Authorization", self.header())

    async def refresh(self, session: aiohttp.ClientSession, request: Request) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class BearerToken:
    """``Authorization: Bearer <token>``.

    >>> rheo_nb.fetch_sync(urls, auth=rheo_nb.BearerToken(os.environ["HF_TOKEN"]))  # doctest: +SKIP
    """

    token: str

    def __post_init__(self) -> None:
        _need_text("bearer token", self.token)

    def __repr__(self) -> str:
        return f"BearerToken({format.MASK!r})"

    def describe(self) -> str:
        return "a bearer token"

    async def apply(self, session: aiohttp.ClientSession, request: Request) -> None:
        _set_default(request.headers, "Authorization", f"Bearer {self.token}")

    async def refresh(self, session: aiohttp.ClientSession, request: Request) -> bool:
        return False


@dataclass(frozen=True, slots=True, init=False)
class ApiKey:
    """An API key in a header (``X-API-Key`` by default) or in a query parameter.

    >>> ApiKey("k-123")                      # sends X-API-Key: k-123
    ApiKey('***', header='X-API-Key')
    >>> ApiKey("k-123", query="api_key")     # requests ...?api_key=k-123
    ApiKey('***', query='api_key')

    A query parameter is masked wherever a URL is shown, whatever its name.
    """

    key: str
    header: str | None
    query: str | None

    def __init__(self, key: str, *, header: str | None = None, query: str | None = None) -> None:
        _need_text("API key", key)
        if header is not None and query is not None:
            raise OptionError("ApiKey: give header= or query=, not both")
        if query is not None:
            _need_text("ApiKey query parameter name", query)
        else:
            header = header or "X-API-Key"
            if not _TOKEN.match(header):
                raise OptionError(f"ApiKey: invalid header name {header!r}")
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "query", query)

    def __repr__(self) -> str:
        where = f"query={self.query!r}" if self.query is not None else f"header={self.header!r}"
        return f"ApiKey({format.MASK!r}, {where})"

    def describe(self) -> str:
        if self.query is not None:
            return f"an API key in query parameter {self.query!r}"
        return f"an API key in header {self.header!r}"

    async def apply(self, session: aiohttp.ClientSession, request: Request) -> None:
        if self.query is not None:
            request.url = request.url.update_query({self.query: self.key})
        else:
            assert self.header is not None
            _set_default(request.headers, self.header, self.key)

    async def refresh(self, session: aiohttp.ClientSession, request: Request) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class DigestAuth:
    """HTTP digest auth (RFC 7616), answered by aiohttp's ``DigestAuthMiddleware``.

    >>> rheo_nb.fetch_sync(urls, auth=rheo_nb.DigestAuth("alice", password))  # doctest: +SKIP
    """

    user: str
    password: str
    # One middleware per origin: each keeps that origin's nonce, so later requests are
    # answered at once instead of after a fresh challenge.
    _middlewares: dict[tuple[str, str, int | None], aiohttp.DigestAuthMiddleware] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        _need_text("digest auth user", self.user)
        _need_text("digest auth password", self.password, empty=True)
        if ":" in self.user:
            raise OptionError("digest auth user must not contain ':'")

    def __repr__(self) -> str:
        return f"DigestAuth({self.user!r}, {format.MASK!r})"

    def __reduce__(self) -> tuple[type[DigestAuth], tuple[str, str]]:
        # A copy (a worker of a cluster call) answers its own challenges: the nonces of
        # this one's middlewares stay here.
        return DigestAuth, (self.user, self.password)

    def describe(self) -> str:
        return f"digest auth as user {self.user!r}"

    async def apply(self, session: aiohttp.ClientSession, request: Request) -> None:
        url = request.url
        key = (url.scheme, url.host or "", url.port)
        middleware = self._middlewares.get(key)
        if middleware is None:
            middleware = self._middlewares.setdefault(
                key, aiohttp.DigestAuthMiddleware(self.user, self.password)
            )
        request.middlewares = (*request.middlewares, middleware)

    async def refresh(self, session: aiohttp.ClientSession, request: Request) -> bool:
        return False  # the middleware already answered the challenge once


class OAuth2ClientCredentials:
    """OAuth2 client-credentials grant: a bearer token from ``token_url``, renewed as needed.

    >>> auth = rheo_nb.OAuth2ClientCredentials(
    ...     "https://login.example.org/oauth2/token", "my-client", os.environ["SECRET"],
    ...     scope="datasets.read")                                      # doctest: +SKIP
    >>> rheo_nb.fetch_sync(urls, auth=auth)                             # doctest: +SKIP

    The token is requested once (client id and secret sent with HTTP basic auth, as
    RFC 6749 asks), kept until shortly before ``expires_in`` runs out, and renewed once
    when a server answers 401; however many downloads run, one renewal is in flight at a
    time and the others wait for it. Keep the object to reuse its token in later calls.
    """

    __slots__ = ("_expires", "_locks", "_secret", "_token", "client_id", "scope", "token_url")

    def __init__(
        self, token_url: str, client_id: str, client_secret: str, scope: str | None = None
    ) -> None:
        _need_text("OAuth2 token_url", token_url)
        if URL(token_url).scheme not in ("http", "https") or not URL(token_url).host:
            raise OptionError("OAuth2 token_url must be an http(s) URL")
        _need_text("OAuth2 client_id", client_id)
        _need_text("OAuth2 client_secret", client_secret)
        if scope is not None:
            _need_text("OAuth2 scope", scope)
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        self._secret = client_secret
        self._token: str | None = None
        self._expires = float("inf")
        # asyncio locks belong to one loop; a kept object may serve several calls.
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials({format.mask_url(self.token_url)!r}, "
            f"client_id={self.client_id!r}, client_secret={format.MASK!r}"
            + (f", scope={self.scope!r})" if self.scope is not None else ")")
        )

    def __reduce__(
        self,
    ) -> tuple[type[OAuth2ClientCredentials], tuple[str, str, str, str | None]]:
        # A copy (a worker of a cluster call) requests its own token: a token's expiry is
        # kept on this machine's monotonic clock, which means nothing on another.
        return OAuth2ClientCredentials, (self.token_url, self.client_id, self._secret, self.scope)

    def describe(self) -> str:
        return f"an OAuth2 token for client {self.client_id!r}"

    async def apply(self, session: aiohttp.ClientSession, request: Request) -> None:
        token = self._valid()
        if token is None:
            async with self._lock():
                token = self._valid() or await self._request_token(session, request)
        _set_default(request.headers, "Authorization", f"Bearer {token}")

    async def refresh(self, session: aiohttp.ClientSession, request: Request) -> bool:
        sent = next((v for k, v in request.headers.items() if k.lower() == "authorization"), None)
        if sent is None or not sent.startswith("Bearer "):
            return False  # an explicit header was sent, not a token of ours
        async with self._lock():
            if self._token is None or sent == f"Bearer {self._token}":
                await self._request_token(session, request)
            # else another download renewed it while this one waited: use that token
        return True

    def _valid(self) -> str | None:
        if self._token is not None and time.monotonic() < self._expires:
            return self._token
        return None

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def _request_token(self, session: aiohttp.ClientSession, request: Request) -> str:
        shown = format.mask_url(self.token_url)
        what = f"OAuth2 token request to {shown}"
        data = {"grant_type": "client_credentials"}
        if self.scope is not None:
            data["scope"] = self.scope
        client = Basic(self.client_id, self._secret)
        try:
            async with session.post(
                self.token_url,
                data=data,
                headers={"Authorization": client.header(), "Accept": "application/json"},
                proxy=request.proxy_for(URL(self.token_url)),
                allow_redirects=False,
            ) as resp:
                body = b""
                while len(body) < _TOKEN_BODY_MAX and (chunk := await resp.content.read(1 << 14)):
                    body += chunk
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TokenError(f"{what} failed ({type(exc).__name__})", transient=True) from None
        payload = _json_object(body)
        if status != 200:
            detail = payload.get("error") if isinstance(payload.get("error"), str) else None
            transient = status in (408, 425, 429) or status >= 500
            raise TokenError(
                f"{what} refused: HTTP {status}"
                + (f" ({detail})" if detail else "")
                + ("" if transient else f"; check the client id {self.client_id!r} and secret"),
                transient=transient,
            )
        token = payload.get("access_token")
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n\x00"):
            raise TokenError(f"{what}: the answer has no usable access_token", transient=False)
        expires_in = payload.get("expires_in")
        self._token = token
        if isinstance(expires_in, int | float) and expires_in > 0:
            margin = min(TOKEN_MARGIN, expires_in / 10)
            self._expires = time.monotonic() + expires_in - margin
        else:
            self._expires = float("inf")  # until a server says otherwise with a 401
        return token


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


AuthArg = Auth | aiohttp.BasicAuth | tuple[str, str] | None


def coerce(auth: object) -> Auth | None:
    """``auth=`` as given → an :class:`Auth` (tuples and ``aiohttp.BasicAuth`` → :class:`Basic`).

    :raises OptionError: for anything else.
    """
    if auth is None:
        return None
    if isinstance(auth, aiohttp.BasicAuth):
        return Basic(auth.login, auth.password, auth.encoding)
    if isinstance(auth, tuple):
        if len(auth) != 2:
            raise OptionError("auth as a tuple must be (user, password)")
        return Basic(auth[0], auth[1])
    if isinstance(auth, Auth) and not isinstance(auth, type):
        return auth
    raise OptionError(
        f"auth must be (user, password), aiohttp.BasicAuth, rheo_nb.BearerToken, ApiKey, "
        f"DigestAuth or OAuth2ClientCredentials, not {type(auth).__name__}"
    )


def secret_params(auth: Auth | None) -> frozenset[str]:
    """Query parameters to mask in shown URLs because ``auth`` puts a secret there."""
    if isinstance(auth, ApiKey) and auth.query is not None:
        return frozenset({auth.query})
    return frozenset()


def check_cookies(cookies: Mapping[str, str]) -> dict[str, str]:
    """Validate ``cookies=`` (names and values as RFC 6265 allows them)."""
    if not isinstance(cookies, Mapping):
        raise OptionError("cookies must be a mapping of names to values")
    out: dict[str, str] = {}
    for name, value in cookies.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise OptionError(f"invalid cookie name {name!r}")
        if not isinstance(value, str) or not _COOKIE_VALUE.match(value):
            raise OptionError(
                f"cookie {name!r}: the value must be text without spaces, quotes, ';' or ','"
            )
        out[name] = value
    return out


def cookie_header(cookies: Mapping[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())
