"""Proxies: HTTP(S)_PROXY / NO_PROXY from the environment, or ``proxy=`` with its login,
through a small forward proxy on loopback that records what passed through it."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from auth_servers import CLIENT_ID, CLIENT_SECRET, TOKEN, AuthServer, ForwardProxy

import rheo_nb
from rheo_nb import BearerToken, OAuth2ClientCredentials, Results, Status

QUICK: dict[str, Any] = {"progress": False, "retries": 0}
PROXY_PASSWORD = "px-Jj5-proxy"


# No proxy, netrc or CA setting from the machine: each test sets what it needs.
pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def origin() -> Iterator[AuthServer]:
    with AuthServer() as srv:
        yield srv


@pytest.fixture
def other() -> Iterator[AuthServer]:
    with AuthServer() as srv:
        yield srv


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


@pytest.fixture
def locked_proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(login=("proxyuser", PROXY_PASSWORD)) as p:
        yield p


def fetch(items: Any, dest: Path, **options: Any) -> Results:
    return rheo_nb.fetch_sync(items, dest, **{**QUICK, **options})


def test_http_proxy_from_the_environment(
    origin: AuthServer, proxy: ForwardProxy, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    url = origin.url("open")
    assert fetch([url], dest).ok
    assert [(p.method, p.target) for p in proxy.passed] == [("GET", url)]
    assert len(origin.requests("open")) == 1


def test_no_proxy_bypasses_the_proxy(
    origin: AuthServer, proxy: ForwardProxy, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fetch([origin.url("open")], dest).ok
    assert proxy.passed == []


def test_trust_env_false_ignores_the_environment(
    origin: AuthServer, proxy: ForwardProxy, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert fetch([origin.url("open")], dest, trust_env=False).ok
    assert proxy.passed == []


def test_explicit_proxy_with_its_login(
    origin: AuthServer, locked_proxy: ForwardProxy, dest: Path
) -> None:
    address = locked_proxy.url.replace("://", f"://proxyuser:{PROXY_PASSWORD}@")
    (outcome,) = fetch([origin.url("open")], dest, proxy=address)
    assert outcome.status is Status.COMPLETED, outcome.error
    (passed,) = locked_proxy.passed
    assert passed.headers["Proxy-Authorization"].startswith("Basic ")
    assert "Proxy-Authorization" not in origin.requests("open")[0].headers


def test_env_proxy_login_comes_from_its_url(
    origin: AuthServer, locked_proxy: ForwardProxy, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "HTTP_PROXY", locked_proxy.url.replace("://", f"://proxyuser:{PROXY_PASSWORD}@")
    )
    assert fetch([origin.url("open")], dest).ok


def test_wrong_proxy_login_fails_without_showing_it(
    origin: AuthServer, locked_proxy: ForwardProxy, dest: Path
) -> None:
    address = locked_proxy.url.replace("://", "://proxyuser:wrong-pw@")
    (outcome,) = fetch([origin.url("open")], dest, proxy=address, retries=2)
    assert outcome.status is Status.FAILED
    assert "407" in (outcome.error or "")
    assert "wrong-pw" not in (outcome.error or "")
    assert len(locked_proxy.passed) == 1  # permanent: not retried


def test_https_goes_through_a_connect_tunnel(
    proxy: ForwardProxy, dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with AuthServer(tls=ctx) as https:
        results = fetch([https.url("bearer")], dest, verify=ca_file, auth=BearerToken(TOKEN))
        assert [o.status for o in results] == [Status.COMPLETED]
        (passed,) = proxy.passed
        assert (passed.method, passed.target) == ("CONNECT", f"127.0.0.1:{https.port}")
        # The tunnel is end to end: the proxy never saw the credentials.
        assert TOKEN not in repr(passed.headers)


def test_credentials_do_not_cross_origins_through_a_proxy(
    origin: AuthServer,
    other: AuthServer,
    proxy: ForwardProxy,
    dest: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    start = origin.redirect(other.url("open"))
    assert fetch([start], dest, auth=BearerToken(TOKEN)).ok
    first, second = proxy.passed
    assert first.headers.get("Authorization") == f"Bearer {TOKEN}"
    assert "Authorization" not in second.headers
    assert "Authorization" not in other.requests("open")[0].headers


def test_oauth2_token_request_goes_through_the_proxy_too(
    origin: AuthServer, proxy: ForwardProxy, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    auth = OAuth2ClientCredentials(origin.token_url, CLIENT_ID, CLIENT_SECRET)
    assert fetch([origin.url("oauth")], dest, auth=auth).ok
    assert [(p.method, p.target) for p in proxy.passed] == [
        ("POST", origin.token_url),
        ("GET", origin.url("oauth")),
    ]
