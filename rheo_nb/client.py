"""The one place that builds the HTTP client: TLS, timeouts, limits, proxies, identity.

Settings that shape the session live here (``verify``, ``proxy``, ``trust_env``, ``netrc``,
connection limits); what one request carries (``auth``, ``headers``, ``cookies``) is in
:class:`~rheo_nb.Options`, applied per request so that it stays with its origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import netrc as netrc_module
import os
import socket
import ssl
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import certifi
from yarl import URL

from . import format
from ._version import __version__
from .auth import Basic
from .errors import OptionError, warn

USER_AGENT = f"rheo_nb/{__version__} aiohttp/{aiohttp.__version__}"

Verify = bool | str | os.PathLike[str] | ssl.SSLContext
NetrcArg = bool | str | os.PathLike[str] | None

#: Keywords of ``fetch`` / ``DownloadManager`` that configure the session, not a request:
#: they go to the :class:`ClientFactory` built for the call.
SESSION_OPTIONS = frozenset({"verify", "proxy", "trust_env", "netrc", "limit", "limit_per_host"})

#: Headers that carry credentials: per request (``fetch(headers=...)``, ``auth=``), never
#: session-wide, where they would follow every redirect.
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def ssl_context(verify: Verify = True) -> ssl.SSLContext | bool:
    """The TLS setting for aiohttp.

    ``True``: certifi's CA bundle, plus ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set.
    ``"system"``: the operating system's trust store (needs the ``truststore`` package),
    for networks whose firewall re-signs TLS with a CA installed on the machine.
    Another string or a path: that CA file (or folder). An ``SSLContext``: used as is.
    ``False``: no checks.
    """
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        return False
    if verify is True:
        cafile = os.environ.get("SSL_CERT_FILE") or certifi.where()
        capath = os.environ.get("SSL_CERT_DIR") or None
        ctx = ssl.create_default_context(cafile=cafile, capath=capath)
        if cafile != certifi.where():
            ctx.load_verify_locations(cafile=certifi.where())
        return ctx
    if verify == "system":
        try:
            import truststore
        except ImportError:
            raise OptionError(
                "verify='system' needs the truststore package: pip install 'rheo_nb[truststore]'"
            ) from None
        return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not isinstance(verify, str | os.PathLike):
        raise OptionError(
            "verify must be True, False, 'system', a CA file or folder, or an ssl.SSLContext"
        )
    path = Path(verify)
    if path.is_dir():
        return ssl.create_default_context(capath=str(path))
    if not path.is_file():
        raise OptionError(f"verify={os.fspath(verify)!r}: no such CA file or folder")
    try:
        return ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise OptionError(f"verify={os.fspath(verify)!r}: not a PEM CA bundle ({exc})") from None


def warn_unverified(verify: Verify) -> None:
    """Warn, at the caller's line, when ``verify=False`` leaves a call open to tampering."""
    if verify is False:
        warn(
            "verify=False: TLS certificates are not checked in this call, so anyone on "
            "the network path can read or alter the downloads; prefer verify='ca.pem' "
            "or verify='system'"
        )


@dataclass(frozen=True, slots=True)
class Network:
    """A factory's settings resolved against the environment, once per call: the TLS
    context, the proxy for a URL, and ``.netrc`` logins (see :meth:`ClientFactory.network`).
    """

    tls: ssl.SSLContext | bool = True
    proxy: URL | None = field(default=None, repr=False)
    env_proxies: Mapping[str, str] = field(default_factory=dict, repr=False)
    logins: netrc_module.netrc | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shown = format.mask_url(str(self.proxy)) if self.proxy is not None else None
        return f"Network(proxy={shown!r}, netrc={self.logins is not None})"

    def proxy_for(self, url: URL) -> URL | None:
        """The proxy for ``url``: the explicit one, else ``HTTP(S)_PROXY`` unless
        ``NO_PROXY`` covers the host; None lets the session decide (its own defaults)."""
        if self.proxy is not None:
            return self.proxy
        proxy = self.env_proxies.get(url.scheme)
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if not proxy or bypass(url.raw_host or "", dict(self.env_proxies)):
            return None
        return URL(proxy)

    def login_for(self, host: str | None) -> Basic | None:
        """The ``.netrc`` login for ``host`` (or its ``default`` entry), as basic auth."""
        if self.logins is None or not host:
            return None
        entry = self.logins.authenticators(host)
        if entry is None:
            return None
        login, _, password = entry
        try:
            return Basic(login, password or "")
        except OptionError:
            return None  # an entry basic auth cannot carry (a ':' in the login)


class ClientFactory:
    """Builds the ``aiohttp.ClientSession`` every download of a manager shares.

    >>> factory = ClientFactory(limit_per_host=4, verify="corp-ca.pem")  # doctest: +SKIP
    >>> results = await rheo_nb.fetch(urls, client=factory)              # doctest: +SKIP

    The same settings can be given to ``fetch`` directly (``fetch(urls, verify="corp-ca.pem")``).

    * ``verify``: see :func:`ssl_context`; ``False`` warns once per call that uses it
      (at the caller's line: the manager warns, when it is built).
    * ``proxy``: ``"http://[user:password@]host:port"`` for every request; else, with
      ``trust_env``, ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` from the environment.
    * ``netrc``: logins for hosts, used when a call has no ``auth``: ``True`` reads
      ``$NETRC`` or ``~/.netrc``, a path reads that file, ``False`` never; ``None``
      (default) follows ``trust_env``.
    * ``headers``: sent with every request, redirects included: identity headers only
      (credentials belong in ``fetch(auth=..., headers=...)``, which stay with their origin).

    A session passed to ``fetch(client=...)`` or ``DownloadManager(client=...)`` instead
    is used as is and never closed by rheo_nb.
    """

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        total_timeout: float | None = None,
        limit: int = 100,
        limit_per_host: int = 16,
        verify: Verify = True,
        proxy: str | None = None,
        trust_env: bool = True,
        netrc: NetrcArg = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if limit < 0 or limit_per_host < 0:
            raise OptionError("connection limits must be >= 0 (0: no limit)")
        if proxy is not None:
            try:
                url = URL(proxy) if isinstance(proxy, str) else None
            except ValueError:  # its text may quote the password: never shown
                url = None
            if url is None or url.scheme not in ("http", "https") or not url.host:
                raise OptionError(
                    f"proxy must be an 'http://host:port' URL, not {format.mask_url(str(proxy))!r}"
                )
        for name in headers or {}:
            if name.lower() in _CREDENTIAL_HEADERS:
                raise OptionError(
                    f"ClientFactory(headers=...) would send {name} to every host a redirect "
                    "leads to: pass it as fetch(headers=...), cookies= or auth= instead"
                )
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.verify = verify
        self.proxy = proxy
        self.trust_env = trust_env
        self.netrc = netrc
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        verify = "SSLContext" if isinstance(self.verify, ssl.SSLContext) else repr(self.verify)
        proxy = f", proxy={format.mask_url(self.proxy)!r}" if self.proxy else ""
        return (
            f"ClientFactory(timeout={self.timeout}, limit={self.limit}, "
            f"limit_per_host={self.limit_per_host}, verify={verify}{proxy}, "
            f"trust_env={self.trust_env})"
        )

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total_timeout, sock_connect=self.timeout, sock_read=self.timeout
        )

    def network(self) -> Network:
        """TLS context, proxy settings and ``.netrc`` logins for one call.

        Blocking (reads CA and netrc files): the manager runs it in a thread.

        :raises OptionError: a CA or netrc file cannot be read, or ``verify='system'``
            without the truststore package.
        """
        env: dict[str, str] = {}
        if self.trust_env and self.proxy is None:
            env = urllib.request.getproxies_environment()
        return Network(
            ssl_context(self.verify),
            URL(self.proxy) if self.proxy is not None else None,
            {k: v for k, v in env.items() if k in ("http", "https", "no")},
            _read_netrc(self.netrc, self.trust_env),
        )

    def create(
        self,
        network: Network | None = None,
        *,
        socket_factory: Callable[[tuple[Any, ...]], socket.socket] | None = None,
    ) -> aiohttp.ClientSession:
        """A new session; the caller closes it. Must run inside the loop that will use it.

        ``network`` is this factory's :meth:`network` (read now when not given). The
        downloads take proxies and ``.netrc`` logins from it, per request, rather than
        from aiohttp's own ``trust_env``: that keeps a login from following a redirect,
        and lets ``netrc=False`` keep the environment's proxies. ``socket_factory`` makes
        the connections' sockets (a bandwidth cap keeps their receive buffers small).
        """
        if network is None:
            network = self.network()
        connector = aiohttp.TCPConnector(
            limit=self.limit,
            limit_per_host=self.limit_per_host,
            ssl=network.tls,
            ttl_dns_cache=300,
            socket_factory=socket_factory,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self.client_timeout(),
            headers={"User-Agent": USER_AGENT, **self.headers},
            trust_env=False,
            auto_decompress=False,
            raise_for_status=False,
        )


def _read_netrc(choice: NetrcArg, trust_env: bool) -> netrc_module.netrc | None:
    if choice is False or (choice is None and not trust_env):
        return None
    explicit = choice is not None and choice is not True
    if explicit:
        assert isinstance(choice, str | os.PathLike)
        path = Path(choice)
    else:
        path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return netrc_module.netrc(os.fspath(path))
    except FileNotFoundError:
        if explicit:
            raise OptionError(f"netrc={os.fspath(path)!r}: no such file") from None
        return None
    except (OSError, netrc_module.NetrcParseError) as exc:
        if choice is None:
            return None  # a broken file nobody asked for must not stop downloads
        # The parse error quotes the offending line, which may hold a password.
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise OptionError(f"cannot read netrc file {os.fspath(path)!r}{where}") from None


class HostLimiter:
    """Connection slots per origin (``scheme://host:port``), shared by one call's downloads.

    Every attempt of a download holds one slot of its origin while it runs (not while it
    waits to retry); a segmented download borrows more with :meth:`try_acquire` while
    some are free, within its fair share (:meth:`share`). Waiters are served first come,
    first served. The traffic's adaptive limit sets an origin's capacity
    (:meth:`set_capacity`) when it answers 429 or 503.

    >>> limiter = HostLimiter(per_host=8)
    >>> limiter.try_acquire("https://example.org:443")
    True
    """

    def __init__(self, per_host: int) -> None:
        self.per_host = max(1, per_host)
        self._in_use: Counter[str] = Counter()
        self._capacity: dict[str, int] = {}
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {}
        self._splitting: Counter[str] = Counter()
        #: Slots held on every origin together (what the write budget is shared by).
        self.total_in_use = 0

    def capacity(self, host: str) -> int:
        return self._capacity.get(host, self.per_host)

    def set_capacity(self, host: str, n: int) -> None:
        """Change how many connections ``host`` may have (waiters are woken if it grew)."""
        self._capacity[host] = max(1, n)
        self._wake(host)

    def in_use(self, host: str) -> int:
        return self._in_use[host]

    def try_acquire(self, host: str) -> bool:
        if self._in_use[host] >= self.capacity(host) or self._waiters.get(host):
            return False
        self._in_use[host] += 1
        self.total_in_use += 1
        return True

    async def acquire(self, host: str) -> None:
        if self.try_acquire(host):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters.setdefault(host, deque())
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(host)  # granted just as we were cancelled: hand it on
            else:
                queue.remove(waiter)
            raise

    def release(self, host: str) -> None:
        self._in_use[host] -= 1
        self.total_in_use -= 1
        self._wake(host)

    def _wake(self, host: str) -> None:
        queue = self._waiters.get(host)
        while queue and self._in_use[host] < self.capacity(host):
            waiter = queue.popleft()
            if not waiter.done():
                self._in_use[host] += 1
                self.total_in_use += 1
                waiter.set_result(None)
        if queue is not None and not queue:
            del self._waiters[host]

    @contextlib.contextmanager
    def splitting(self, host: str) -> Iterator[None]:
        """Count a segmented download of ``host`` while it runs (for :meth:`share`)."""
        self._splitting[host] += 1
        try:
            yield
        finally:
            self._splitting[host] -= 1

    def share(self, host: str) -> int:
        """Connections one segmented download of ``host`` may use: an equal share."""
        return max(1, self.capacity(host) // max(1, self._splitting[host]))
