"""The one place that builds the HTTP client: TLS, timeouts, limits, proxies, identity."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import certifi

from . import __version__
from .errors import OptionError

USER_AGENT = f"rheo_nb/{__version__} aiohttp/{aiohttp.__version__}"

Verify = bool | str | os.PathLike[str] | ssl.SSLContext


def ssl_context(verify: Verify = True) -> ssl.SSLContext | bool:
    """The TLS setting for aiohttp.

    ``True``: certifi's CA bundle, plus ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set.
    A path: that CA file (or folder). An ``SSLContext``: used as is. ``False``: no checks.
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
    path = Path(verify)
    if path.is_dir():
        return ssl.create_default_context(capath=str(path))
    if not path.is_file():
        raise OptionError(f"verify={os.fspath(verify)!r}: no such CA file or folder")
    return ssl.create_default_context(cafile=str(path))


class ClientFactory:
    """Builds the ``aiohttp.ClientSession`` every download of a manager shares.

    >>> factory = ClientFactory(limit_per_host=4, verify="corp-ca.pem")  # doctest: +SKIP
    >>> results = await rheo_nb.fetch(urls, client=factory)              # doctest: +SKIP

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
        trust_env: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if limit < 0 or limit_per_host < 0:
            raise OptionError("connection limits must be >= 0 (0: no limit)")
        self.timeout = timeout
        self.total_timeout = total_timeout
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.verify = verify
        self.trust_env = trust_env
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        verify = "SSLContext" if isinstance(self.verify, ssl.SSLContext) else repr(self.verify)
        return (
            f"ClientFactory(timeout={self.timeout}, limit={self.limit}, "
            f"limit_per_host={self.limit_per_host}, verify={verify}, trust_env={self.trust_env})"
        )

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.total_timeout, sock_connect=self.timeout, sock_read=self.timeout
        )

    def create(self) -> aiohttp.ClientSession:
        """A new session; the caller closes it. Must run inside the loop that will use it."""
        connector = aiohttp.TCPConnector(
            limit=self.limit,
            limit_per_host=self.limit_per_host,
            ssl=ssl_context(self.verify),
            ttl_dns_cache=300,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self.client_timeout(),
            headers={"User-Agent": USER_AGENT, **self.headers},
            trust_env=self.trust_env,
            auto_decompress=False,
            raise_for_status=False,
        )
