"""``rheo-nb get`` with private sources: --header, --bearer-env, --user, --netrc, --ca and
--proxy, and no secret taken from (or shown on) the command line."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from auth_servers import KEY, PASSWORD, SECRETS, TOKEN, AuthServer, ForwardProxy

from rheo_nb import cli

# No proxy, netrc or CA setting from the machine: each test sets what it needs.
pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def srv() -> Iterator[AuthServer]:
    with AuthServer() as s:
        yield s


def get(dest: Path, *args: str) -> int:
    return cli.main(["get", "-q", "--retries", "0", "-o", str(dest), *args])


def test_header(srv: AuthServer, dest: Path) -> None:
    assert get(dest, srv.url("keyheader"), "--header", f"X-API-Key: {KEY}") == 0
    assert get(dest, srv.url("keyheader", "b.bin")) == 1


def test_malformed_header_is_refused(dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert get(dest, "http://127.0.0.1:9/x", "--header", "no colon") == 2
    assert "expected 'Name: value'" in capsys.readouterr().err


def test_bearer_token_from_the_environment(
    srv: AuthServer, dest: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    assert get(dest, srv.url("bearer"), "--bearer-env", "MY_TOKEN") == 0
    monkeypatch.delenv("MY_TOKEN")
    capsys.readouterr()
    assert get(dest, srv.url("bearer"), "--bearer-env", "MY_TOKEN") == 2
    assert "MY_TOKEN is not set" in capsys.readouterr().err


def test_user_with_the_password_from_the_environment(
    srv: AuthServer, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RHEO_NB_PASSWORD", PASSWORD)
    assert get(dest, srv.url("basic"), "--user", "alice") == 0
    monkeypatch.setenv("OTHER", "wrong")
    assert get(dest, srv.url("basic", "b.bin"), "--user", "alice", "--password-env", "OTHER") == 1


def test_netrc_only_when_asked(
    srv: AuthServer, dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login alice password {PASSWORD}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert get(dest, srv.url("basic", "a.bin")) == 1  # as curl: no --netrc, no netrc
    assert get(dest, srv.url("basic", "b.bin"), "--netrc") == 0


def test_ca_file(dest: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with AuthServer(tls=ctx) as https:
        assert get(dest, https.url("open", "a.bin")) == 1
        assert get(dest, https.url("open", "b.bin"), "--ca", str(ca_file)) == 0


def test_proxy(srv: AuthServer, dest: Path) -> None:
    with ForwardProxy() as proxy:
        assert get(dest, srv.url("open"), "--proxy", proxy.url) == 0
        assert [p.method for p in proxy.passed] == ["GET"]


def test_proxy_password_on_the_command_line_is_refused(
    dest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = f"http://u:{PASSWORD}@127.0.0.1:3128"
    assert get(dest, "http://127.0.0.1:9/x", "--proxy", proxy) == 2
    err = capsys.readouterr().err
    assert "visible to other users" in err
    assert PASSWORD not in err


def test_failures_print_no_secret(
    srv: AuthServer, dest: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    url = srv.url("basic").replace("://", f"://alice:{PASSWORD}x@")
    code = cli.main(["get", "--retries", "0", "-o", str(dest), url, "--bearer-env", "MY_TOKEN"])
    assert code == 1
    out = capsys.readouterr()
    assert "HTTP 401" in out.err + out.out
    assert [s for s in SECRETS if s in out.err + out.out] == []
