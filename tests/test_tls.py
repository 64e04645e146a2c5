"""TLS trust: certifi by default, a private CA (file, folder, SSLContext, SSL_CERT_FILE /
SSL_CERT_DIR), the system store through truststore, and verify=False for one call only.

The HTTPS server's certificate comes from a CA made in the test (trustme): no trust store
knows it, so each way of trusting it has to work for the download to succeed.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from auth_servers import TOKEN, AuthServer

import rheo_nb
from rheo_nb import BearerToken, ClientFactory, OptionError, Results, Status, testing
from rheo_nb.client import ssl_context

QUICK: dict[str, Any] = {"progress": False, "retries": 0}


# No proxy, netrc or CA setting from the machine: each test sets what it needs.
pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def https(ca: trustme.CA) -> Iterator[AuthServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    with AuthServer(tls=ctx) as srv:
        yield srv


@pytest.fixture
def plain() -> Iterator[AuthServer]:
    with AuthServer() as srv:
        yield srv


def fetch(items: Any, dest: Path, **options: Any) -> Results:
    return rheo_nb.fetch_sync(items, dest, **{**QUICK, **options})


def test_unknown_ca_is_refused_by_default_with_a_hint(https: AuthServer, dest: Path) -> None:
    (outcome,) = fetch([https.url("open")], dest)
    assert outcome.status is Status.FAILED
    assert "TLS certificate not trusted" in (outcome.error or "")
    assert "verify='system'" in (outcome.error or "")
    assert not (dest / "data.bin").exists()


def test_verify_with_a_ca_file(https: AuthServer, dest: Path, ca_file: Path) -> None:
    (outcome,) = fetch([https.url("open")], dest, verify=str(ca_file))
    assert outcome.status is Status.COMPLETED
    assert (dest / "data.bin").read_bytes() == testing.content("data.bin", 10_000)


def test_verify_with_an_ssl_context(https: AuthServer, dest: Path, ca: trustme.CA) -> None:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    assert fetch([https.url("open")], dest, verify=ctx).ok


async def test_verify_through_async_fetch_and_a_client_factory(
    https: AuthServer, dest: Path, ca_file: Path
) -> None:
    results = await rheo_nb.fetch(
        [https.url("open")], dest, client=ClientFactory(verify=ca_file), progress=False
    )
    assert [o.status for o in results] == [Status.COMPLETED]


def test_ssl_cert_file_is_honoured(
    https: AuthServer, dest: Path, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert fetch([https.url("open")], dest).ok


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_ssl_cert_dir_is_honoured(
    https: AuthServer, dest: Path, ca_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CA folder holds certificates under their subject hash, as `openssl rehash` names them.
    subject_hash = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash", "-in", str(ca_file)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()
    folder = tmp_path / "certs"
    folder.mkdir()
    shutil.copy(ca_file, folder / f"{subject_hash}.0")
    monkeypatch.setenv("SSL_CERT_DIR", str(folder))
    assert fetch([https.url("open")], dest).ok
    # ...and verify= a folder works the same way.
    monkeypatch.delenv("SSL_CERT_DIR")
    assert fetch([https.url("open", "b.bin")], dest, verify=folder).ok


def test_missing_ca_file_is_an_option_error(dest: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="no such CA file"):
        fetch(["https://127.0.0.1:9/x"], dest, verify=str(tmp_path / "absent.pem"))


# truststore loads the system store at each TLS handshake, inside the event loop: a
# design of that package (a few stat calls per new connection), not of rheo_nb.
@pytest.mark.allow_blocking
def test_verify_system_uses_truststore(
    https: AuthServer, dest: Path, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import truststore

    assert isinstance(ssl_context("system"), truststore.SSLContext)
    # On Linux the system store is OpenSSL's: SSL_CERT_FILE stands in for a CA that a
    # company installed on the machine.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert fetch([https.url("open")], dest, verify="system").ok


# truststore loads the system store at each TLS handshake, inside the event loop: a
# design of that package (a few stat calls per new connection), not of rheo_nb.
@pytest.mark.allow_blocking
def test_verify_system_still_refuses_an_unknown_ca(https: AuthServer, dest: Path) -> None:
    (outcome,) = fetch([https.url("open")], dest, verify="system")
    assert outcome.status is Status.FAILED
    assert "TLS certificate not trusted" in (outcome.error or "")


def test_verify_system_without_truststore_is_an_option_error(
    dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "truststore", None)
    with pytest.raises(OptionError, match=r"rheo_nb\[truststore\]"):
        fetch(["https://127.0.0.1:9/x"], dest, verify="system")


def test_verify_false_warns_and_applies_to_that_call_only(https: AuthServer, dest: Path) -> None:
    with pytest.warns(UserWarning, match="verify=False"):
        assert fetch([https.url("open")], dest, verify=False).ok
    (outcome,) = fetch([https.url("open", "next.bin")], dest)
    assert outcome.status is Status.FAILED


def test_credentials_are_not_sent_after_a_redirect_from_https_to_http(
    https: AuthServer, plain: AuthServer, dest: Path, ca_file: Path
) -> None:
    start = https.redirect(plain.url("open"))
    results = fetch([start], dest, verify=ca_file, auth=BearerToken(TOKEN))
    assert [o.status for o in results] == [Status.COMPLETED]
    assert "Authorization" in https.requests("redirect")[0].headers
    assert "Authorization" not in plain.requests("open")[0].headers
