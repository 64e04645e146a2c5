"""Private sources: every auth mode against a real server, credentials kept to their
origin across redirects, permanent auth failures, and secrets masked everywhere."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from auth_servers import (
    CLIENT_ID,
    CLIENT_SECRET,
    KEY,
    PASSWORD,
    SECRETS,
    SESSION,
    TOKEN,
    AuthServer,
)

import rheo_nb
from rheo_nb import (
    ApiKey,
    BearerToken,
    ClientFactory,
    DigestAuth,
    DownloadManager,
    File,
    OAuth2ClientCredentials,
    OptionError,
    Results,
    Status,
    testing,
)
from rheo_nb.auth import Basic, coerce
from rheo_nb.events import Event

QUICK: dict[str, Any] = {"progress": False, "backoff": 0.01, "backoff_max": 0.05}


# No proxy, netrc or CA setting from the machine: each test sets what it needs.
pytestmark = pytest.mark.usefixtures("clean_env")


def fetch(items: Any, dest: Path, **options: Any) -> Results:
    return rheo_nb.fetch_sync(items, dest, **{**QUICK, **options})


def body(name: str = "data.bin", size: int = 10_000) -> bytes:
    return testing.content(name, size)


def assert_ok(results: Results) -> None:
    assert results.ok, results
    assert not results.failed, results


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


# --- each mode works, and only with the right secret -----------------------------------

MODES: dict[str, Any] = {
    "basic": ("alice", PASSWORD),
    "bearer": BearerToken(TOKEN),
    "keyheader": ApiKey(KEY),
    "keyquery": ApiKey(KEY, query="api_key"),
    "digest": DigestAuth("alice", PASSWORD),
}


@pytest.mark.parametrize("kind", sorted(MODES))
def test_each_auth_mode_opens_its_route(a: AuthServer, dest: Path, kind: str) -> None:
    results = fetch([a.url(kind)], dest, auth=MODES[kind])
    assert [o.status for o in results] == [Status.COMPLETED], results
    assert (dest / "data.bin").read_bytes() == body()


@pytest.mark.parametrize("kind", sorted(MODES))
def test_without_credentials_each_route_refuses(a: AuthServer, dest: Path, kind: str) -> None:
    (outcome,) = fetch([a.url(kind)], dest)
    assert outcome.status is Status.FAILED
    assert "HTTP 401" in (outcome.error or "")
    assert "no credentials were sent" in (outcome.error or "")


@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
def test_aiohttp_basic_auth_is_accepted(a: AuthServer, dest: Path) -> None:
    results = fetch([a.url("basic")], dest, auth=aiohttp.BasicAuth("alice", PASSWORD))
    assert_ok(results)


async def test_async_fetch_with_digest(a: AuthServer, dest: Path) -> None:
    results = await rheo_nb.fetch(
        [a.url("digest", f"d{i}.bin") for i in range(4)],
        dest,
        auth=DigestAuth("alice", PASSWORD),
        progress=False,
        concurrency=1,
    )
    assert len(results.ok) == 4
    # The middleware keeps the nonce: later requests answer the challenge up front.
    assert a.unauthorised == 1


@pytest.mark.parametrize(
    ("kind", "wrong", "said"),
    [
        ("basic", ("alice", "nope"), "basic auth as user 'alice'"),
        ("bearer", BearerToken("nope"), "a bearer token"),
        ("keyheader", ApiKey("nope"), "an API key in header 'X-API-Key'"),
        ("keyquery", ApiKey("nope", query="api_key"), "an API key in query parameter 'api_key'"),
        ("digest", DigestAuth("alice", "nope"), "digest auth as user 'alice'"),
    ],
)
def test_wrong_credentials_fail_at_once_saying_what_was_sent(
    a: AuthServer, dest: Path, kind: str, wrong: Any, said: str
) -> None:
    (outcome,) = fetch([a.url(kind)], dest, auth=wrong, retries=3)
    assert outcome.status is Status.FAILED
    assert "HTTP 401" in (outcome.error or "")
    assert said in (outcome.error or "")
    assert "nope" not in (outcome.error or "")
    # Permanent: one request (digest: the challenge and one answer), no retries.
    assert len(a.requests(kind)) == (2 if kind == "digest" else 1)


def test_explicit_authorization_header_wins_over_auth(a: AuthServer, dest: Path) -> None:
    results = fetch(
        [File(a.url("bearer"), headers={"authorization": f"Bearer {TOKEN}"})],
        dest,
        auth=BearerToken("not-this-one"),
    )
    assert_ok(results)


# --- headers and cookies -------------------------------------------------------------------


def test_call_headers_and_per_file_headers(a: AuthServer, dest: Path) -> None:
    results = fetch(
        [
            File(a.url("keyheader", "one.bin"), headers={"X-API-Key": KEY}),
            File(a.url("open", "two.bin"), headers={"X-Trace": "file"}),
        ],
        dest,
        headers={"X-API-Key": "call-level", "X-Trace": "call"},
    )
    assert_ok(results)
    (two,) = a.requests("open")
    assert two.headers["X-Trace"] == "file"
    assert two.headers["X-API-Key"] == "call-level"


def test_cookies_are_sent(a: AuthServer, dest: Path) -> None:
    assert fetch([a.url("cookie")], dest, cookies={"sid": SESSION}).ok
    (seen,) = a.requests("cookie")
    assert f"sid={SESSION}" in seen.headers["Cookie"]


def test_bad_cookie_is_an_option_error(dest: Path) -> None:
    with pytest.raises(OptionError, match="cookie 'sid'"):
        fetch(["http://127.0.0.1:9/x"], dest, cookies={"sid": "a; b"})


# --- OAuth2 ----------------------------------------------------------------------------------


def oauth(server: AuthServer, secret: str = CLIENT_SECRET) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(server.token_url, CLIENT_ID, secret, scope="read")


def test_oauth2_token_is_fetched_once_and_reused(a: AuthServer, dest: Path) -> None:
    urls = [a.url("oauth", f"f{i}.bin") for i in range(6)]
    results = fetch(urls, dest, auth=oauth(a), concurrency=3)
    assert len(results.ok) == 6
    assert a.token_requests == 1
    assert a.unauthorised == 0


def test_oauth2_revoked_token_is_renewed_once_for_all_waiting_downloads(
    a: AuthServer, dest: Path
) -> None:
    # The first request revokes every token while five more, sent with the same token,
    # are still in flight: all five get a 401 at about the same time.
    a.revoke_after = 1
    a.check_delay = 0.2
    urls = [a.url("oauth", f"f{i:02d}.bin") for i in range(12)]
    results = fetch(urls, dest, auth=oauth(a), concurrency=6, retries=0)
    assert len(results.ok) == 12, results
    assert a.unauthorised >= 2
    # One renewal for all of them, not one per download.
    assert a.token_requests == 2


def test_oauth2_token_is_renewed_before_it_expires(a: AuthServer, dest: Path) -> None:
    a.token_ttl = 1
    auth = oauth(a)
    assert fetch([a.url("oauth", "first.bin")], dest, auth=auth).ok
    time.sleep(1.0)
    assert fetch([a.url("oauth", "second.bin")], dest, auth=auth).ok
    assert a.token_requests == 2
    assert a.unauthorised == 0


def test_oauth2_second_401_after_renewal_is_permanent(a: AuthServer, dest: Path) -> None:
    a.refuse_tokens = True  # tokens are issued, but the resource takes none of them
    (outcome,) = fetch([a.url("oauth")], dest, auth=oauth(a), retries=3)
    assert outcome.status is Status.FAILED
    assert "HTTP 401" in (outcome.error or "")
    assert f"an OAuth2 token for client {CLIENT_ID!r}, renewed once" in (outcome.error or "")
    assert len(a.requests("oauth")) == 2  # the first try and one after the renewal
    assert a.token_requests == 2


def test_oauth2_refused_client_secret_fails_without_showing_it(a: AuthServer, dest: Path) -> None:
    (outcome,) = fetch([a.url("oauth")], dest, auth=oauth(a, "wrong-secret"), retries=3)
    assert outcome.status is Status.FAILED
    error = outcome.error or ""
    assert "OAuth2 token request" in error
    assert "HTTP 401 (invalid_client)" in error
    assert "wrong-secret" not in error
    assert a.token_requests == 1  # not retried
    assert not a.requests("oauth")  # the file itself was never asked for


# --- netrc and URL userinfo ----------------------------------------------------------------


def write_netrc(path: Path, password: str = PASSWORD) -> Path:
    path.write_text(f"machine 127.0.0.1 login alice password {password}\n")
    path.chmod(0o600)
    return path


def test_netrc_login_is_used_when_no_auth_is_given(
    a: AuthServer, dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETRC", str(write_netrc(tmp_path / "netrc")))
    assert fetch([a.url("basic")], dest).ok
    assert fetch([a.url("basic", "again.bin")], dest, trust_env=False).failed
    assert fetch([a.url("basic", "off.bin")], dest, netrc=False).failed
    assert fetch([a.url("basic", "on.bin")], dest, trust_env=False, netrc=True).ok


def test_netrc_file_given_by_path(a: AuthServer, dest: Path, tmp_path: Path) -> None:
    netrc = write_netrc(tmp_path / "creds")
    assert fetch([a.url("basic")], dest, netrc=netrc).ok


def test_missing_netrc_file_given_by_path_is_an_option_error(dest: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="no such file"):
        fetch(["http://127.0.0.1:9/x"], dest, netrc=tmp_path / "absent")


def test_explicit_auth_wins_over_netrc(
    a: AuthServer, dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETRC", str(write_netrc(tmp_path / "netrc", "stale")))
    assert fetch([a.url("basic")], dest, auth=("alice", PASSWORD)).ok


def test_password_in_the_url_is_used_and_masked(a: AuthServer, dest: Path) -> None:
    url = a.url("basic").replace("://", f"://alice:{PASSWORD}@")
    (outcome,) = fetch([url], dest)
    assert outcome.status is Status.COMPLETED
    assert PASSWORD not in outcome.url
    assert "alice:***@" in outcome.url


# --- credentials never cross origins ---------------------------------------------------------


def _leaks(seen: Any) -> list[str]:
    found = [h for h in ("Authorization", "X-API-Key", "Cookie", "X-Secret") if h in seen.headers]
    found += [q for q in ("api_key",) if q in seen.query]
    return found


CROSS: dict[str, dict[str, Any]] = {
    "basic": {"auth": ("alice", PASSWORD)},
    "bearer": {"auth": BearerToken(TOKEN)},
    "keyheader": {"auth": ApiKey(KEY)},
    "keyquery": {"auth": ApiKey(KEY, query="api_key")},
    "digest": {"auth": DigestAuth("alice", PASSWORD)},
    "cookies": {"cookies": {"sid": SESSION}},
    "headers": {"headers": {"X-Secret": TOKEN, "Authorization": f"Bearer {TOKEN}"}},
    "userinfo": {},
    "netrc": {"netrc": True},
    "oauth2": {},
}


@pytest.mark.parametrize("mode", sorted(CROSS))
def test_credentials_do_not_follow_a_redirect_to_another_port(
    a: AuthServer,
    b: AuthServer,
    dest: Path,
    mode: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = dict(CROSS[mode])
    start = a.redirect(b.url("open"))
    if mode == "userinfo":
        start = start.replace("://", f"://alice:{PASSWORD}@")
    if mode == "netrc":
        monkeypatch.setenv("NETRC", str(write_netrc(tmp_path / "netrc")))
    if mode == "oauth2":
        options["auth"] = oauth(a)
    results = fetch([start], dest, **options)
    assert_ok(results)
    (hop,) = a.requests("redirect")
    (landed,) = b.requests("open")
    assert _leaks(landed) == [], f"{mode} leaked to the other origin"
    if mode not in ("digest", "headers"):  # digest sends nothing before a challenge
        assert _leaks(hop), f"{mode} was not even sent to its own origin"


def test_credentials_do_not_follow_a_redirect_to_another_host(a: AuthServer, dest: Path) -> None:
    # localhost and 127.0.0.1 are the same machine but not the same origin.
    elsewhere = a.url("open").replace("127.0.0.1", "localhost")
    results = fetch([a.redirect(elsewhere)], dest, auth=BearerToken(TOKEN))
    assert_ok(results)
    (landed,) = a.requests("open")
    assert "Authorization" not in landed.headers


def test_credentials_follow_a_redirect_within_their_origin(a: AuthServer, dest: Path) -> None:
    results = fetch([a.redirect(a.url("bearer"))], dest, auth=BearerToken(TOKEN))
    assert_ok(results)


def test_credentials_stay_off_once_a_redirect_left_their_origin(
    a: AuthServer, b: AuthServer, dest: Path
) -> None:
    # a → b → back to a: the way back came from another party; nothing is sent again.
    start = a.redirect(b.redirect(a.url("bearer")))
    (outcome,) = fetch([start], dest, auth=BearerToken(TOKEN))
    assert outcome.status is Status.FAILED
    assert "credentials are not sent to another origin" in (outcome.error or "")


def test_password_in_a_location_header_is_not_used(
    a: AuthServer, b: AuthServer, dest: Path
) -> None:
    target = b.url("basic").replace("://", f"://alice:{PASSWORD}@")
    (outcome,) = fetch([a.redirect(target)], dest)
    assert outcome.status is Status.FAILED
    (seen,) = b.requests("basic")
    assert "Authorization" not in seen.headers


async def test_injected_session_default_auth_is_stripped_across_origins(
    a: AuthServer, b: AuthServer, dest: Path
) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        results = await rheo_nb.fetch(
            [a.redirect(b.url("open"))], dest, client=session, progress=False
        )
    assert_ok(results)
    assert "Authorization" in a.requests("redirect")[0].headers
    assert "Authorization" not in b.requests("open")[0].headers


# --- secrets never shown -----------------------------------------------------------------------


def test_secrets_appear_in_no_repr_message_event_or_log(
    a: AuthServer, dest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> tuple[Results, list[Event], str]:
        seen: list[Event] = []
        async with DownloadManager(
            dest,
            auth=ApiKey(KEY, query="code"),
            headers={"X-Secret": TOKEN},
            cookies={"sid": SESSION},
            retries=0,
        ) as m:
            m.on(None, seen.append)
            await m.add(
                [
                    a.url("keyquery", "a.bin", code=KEY),  # a key in the URL, wrong param
                    a.url("basic", "b.bin").replace("://", f"://alice:{PASSWORD}@"),
                    File(a.url("bearer", "c.bin"), headers={"Authorization": f"Bearer {TOKEN}x"}),
                    "http://127.0.0.1:9/refused?token=" + TOKEN,
                    f"ftp://alice:{PASSWORD}@127.0.0.1/x",
                ]
            )
            results = await m.wait()
            return results, seen, repr(m) + repr(m.options)

    with caplog.at_level(logging.DEBUG, logger="rheo_nb"):
        results, events, reprs = asyncio.run(run())
    assert len(results.failed) >= 3
    shown = "\n".join(
        [
            repr(results),
            results._repr_html_(),
            str(results.failed and rheo_nb.DownloadsFailed(results.failed)),
            *(repr(o) for o in results),
            *(repr(e) for e in events),
            reprs,
            caplog.text,
        ]
    )
    assert leaked(shown) == [], [line for line in shown.splitlines() if leaked(line)]
    assert "code=***" in shown


@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
def test_auth_objects_mask_their_secrets(a: AuthServer) -> None:
    objects = [
        BearerToken(TOKEN),
        ApiKey(KEY),
        ApiKey(KEY, query="k"),
        DigestAuth("alice", PASSWORD),
        oauth(a),
        coerce(("alice", PASSWORD)),
        coerce(aiohttp.BasicAuth("alice", PASSWORD)),
        ClientFactory(proxy=f"http://alice:{PASSWORD}@127.0.0.1:3128"),
        rheo_nb.Options(auth=("alice", PASSWORD), headers={"X": TOKEN}, cookies={"s": SESSION}),  # type: ignore[arg-type]
        File(f"http://alice:{PASSWORD}@h/x?api_key={KEY}", headers={"Authorization": TOKEN}),
    ]
    shown = "\n".join(repr(o) + str(o) for o in objects)
    assert leaked(shown) == [], shown
    assert repr(BearerToken(TOKEN)) == "BearerToken('***')"
    assert repr(coerce(("alice", PASSWORD))) == "Basic('alice', '***')"


# --- options: validation and routing -----------------------------------------------------


def test_auth_of_the_wrong_type_is_an_option_error(dest: Path) -> None:
    with pytest.raises(OptionError, match="auth must be"):
        fetch(["http://127.0.0.1:9/x"], dest, auth="alice:pw")
    with pytest.raises(OptionError, match="header= or query="):
        ApiKey(KEY, header="X", query="k")
    with pytest.raises(OptionError, match="must not contain ':'"):
        Basic("al:ice", "pw")


async def test_session_options_with_a_ready_session_are_refused(dest: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for option in ({"verify": False}, {"proxy": "http://127.0.0.1:3128"}, {"netrc": True}):
            with pytest.raises(OptionError, match=r"a ready aiohttp\.ClientSession is used as is"):
                await rheo_nb.fetch(["http://127.0.0.1:9/x"], dest, client=session, **option)
    with pytest.raises(OptionError, match="pass them to the ClientFactory"):
        DownloadManager(dest, client=ClientFactory(), limit_per_host=2)


def test_client_factory_refuses_credential_headers() -> None:
    with pytest.raises(OptionError, match="every host a redirect"):
        ClientFactory(headers={"Authorization": "Bearer x"})


def test_start_takes_the_same_options(a: AuthServer, dest: Path) -> None:
    job = rheo_nb.start([a.url("bearer")], dest, auth=BearerToken(TOKEN), progress=False)
    assert_ok(job.result(timeout=30))


# --- copies, as a cluster call sends them to its workers ---------------------------------------


@pytest.mark.parametrize("kind", sorted(MODES))
def test_a_pickled_copy_of_each_auth_works_after_the_original_was_used(
    a: AuthServer, dest: Path, kind: str
) -> None:
    auth = MODES[kind]
    assert_ok(fetch([a.url(kind, "first.bin")], dest, auth=auth))
    copy = pickle.loads(pickle.dumps(rheo_nb.Options(auth=auth).auth))
    assert repr(copy) == repr(rheo_nb.Options(auth=auth).auth)  # masked as the original
    assert_ok(fetch([a.url(kind, "second.bin")], dest, auth=copy))


def test_a_pickled_oauth2_copy_requests_a_token_of_its_own(a: AuthServer, dest: Path) -> None:
    auth = oauth(a)
    assert_ok(fetch([a.url("oauth", "one.bin")], dest, auth=auth))
    assert a.token_requests == 1
    copy = pickle.loads(pickle.dumps(auth))
    assert_ok(fetch([a.url("oauth", "two.bin")], dest, auth=copy))
    assert a.token_requests == 2
    assert_ok(fetch([a.url("oauth", "three.bin")], dest, auth=auth))  # the original's token
    assert a.token_requests == 2
