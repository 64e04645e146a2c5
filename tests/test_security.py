"""Bad input and hostile names: rejected or confined per item, before anything is sent;
secrets kept out of every message; size caps that hold with flat memory."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from faults import leftovers, text_of  # also registers the fault routes
from server import FAST, Server, Spec, run_manager, send

import rheo_nb
from rheo_nb import File, Status, files


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


# --- URLs and headers that are refused before anything is sent ------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty URL"),
        ("   ", "whitespace or control characters"),
        ("file:///etc/passwd", "unsupported URL scheme file:"),
        ("ftp://127.0.0.1/data.bin", "unsupported URL scheme ftp:"),
        ("javascript:alert(1)", "unsupported URL scheme javascript:"),
        ("data:text/plain,hello", "unsupported URL scheme data:"),
        ("//127.0.0.1/x.bin", "unsupported URL scheme (none)"),
        ("http://", "has no host"),
        ("http://127.0.0.1:99999/x.bin", "malformed URL"),
        ("http://[::1/x.bin", "malformed URL"),
        (" http://127.0.0.1/x.bin", "whitespace or control characters"),
        ("http://127.0.0.1/x.bin\t", "whitespace or control characters"),
        ("http://127.0.0.1/a b.bin", "whitespace or control characters"),
        ("http://127.0.0.1/x.bin\r\nX-Injected: 1", "whitespace or control characters"),
        ("http://127.0.0.1/x.bin\x00", "whitespace or control characters"),
    ],
)
async def test_a_bad_url_fails_its_item_only_and_nothing_is_sent(
    server: Server, dest: Path, url: str, words: str
) -> None:
    res = await fetch([url, server.url("good.bin")], dest)
    bad, good = res
    assert bad.status is Status.FAILED
    assert bad.error is not None
    assert words in bad.error
    assert good.status is Status.COMPLETED
    assert server.count() == 1
    assert leftovers(dest) == ["good.bin"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Token": "a\r\nX-Injected: 1"},
        {"X-Token": "a\nb"},
        {"X-Token": "a\x00b"},
        {"X-Bad Name": "v"},
        {"X-Bad:Name": "v"},
        {"": "v"},
    ],
)
async def test_a_header_with_cr_lf_or_a_bad_name_fails_its_item_before_sending(
    server: Server, dest: Path, headers: dict[str, str]
) -> None:
    res = await fetch([File(server.url("h.bin"), headers=headers), server.url("ok.bin")], dest)
    bad, ok = res
    assert bad.status is Status.FAILED
    assert bad.error is not None
    assert "header" in bad.error
    assert ok.status is Status.COMPLETED
    assert server.count("h.bin") == 0


async def test_call_wide_headers_with_cr_lf_send_nothing_at_all(server: Server, dest: Path) -> None:
    res = await fetch(
        [server.url("a.bin"), server.url("b.bin")], dest, headers={"X-A": "v\r\nX-B: w"}
    )
    assert [o.status for o in res] == [Status.FAILED, Status.FAILED]
    assert all(o.error and "CR, LF or NUL" in o.error for o in res)
    assert server.count() == 0


@pytest.mark.parametrize(
    "path", ["../escape.bin", "/etc/passwd", "a/../../b.bin", "C:\\x.bin", "..\\x.bin", "a\x00b"]
)
async def test_a_path_that_leaves_dest_fails_its_item_before_sending(
    server: Server, dest: Path, path: str
) -> None:
    res = await fetch([File(server.url("p.bin"), path), server.url("fine.bin")], dest)
    bad, fine = res
    assert bad.status is Status.FAILED
    assert fine.status is Status.COMPLETED
    assert server.count("p.bin") == 0
    assert leftovers(dest.parent) == ["dest", "dest/fine.bin"]


async def test_names_from_the_url_stay_inside_dest(server: Server, dest: Path) -> None:
    base = server.url("x").rsplit("/", 1)[0]
    urls = [f"{base}/..%2F..%2Fevil.bin", f"{base}/%2e%2e", f"{base}/.bashrc"]
    res = await fetch(urls, dest)
    assert [o.path.parent for o in res] == [dest] * 3
    assert all(n == "dest" or n.startswith("dest/") for n in leftovers(dest.parent))


# --- Content-Disposition names (opt-in) -----------------------------------------------------------


def disposition(value: str) -> Any:
    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        return await send(request, spec, headers={"Content-Disposition": value})

    return handler


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="../../x.bin"', "x.bin"),
        ('attachment; filename="/etc/x.bin"', "x.bin"),
        ('attachment; filename="..\\\\x.bin"', "x.bin"),
        ("attachment; filename*=UTF-8''%2e%2e%2fx.bin", "x.bin"),
        ('attachment; filename="%2e%2e%2fx.bin"', "%2e%2e%2fx.bin"),
        ("attachment; filename*=UTF-8''a%00b.bin", "a_b.bin"),
        ("attachment; filename=.bashrc", "bashrc"),
        ("attachment; filename=CON", "_CON"),
        ('attachment; filename="nul.txt"', "_nul.txt"),
        ("attachment; filename*=UTF-8''%E2%82%AC.csv; filename=euro.csv", "€.csv"),
        ("attachment; filename=..", "served.bin"),
        ("inline", "served.bin"),
    ],
)
async def test_content_disposition_names_are_confined_to_dest(
    server: Server, dest: Path, header: str, name: str
) -> None:
    url = server.handle("served.bin", disposition(header))
    res = await fetch([url], dest, content_disposition=True)
    assert res[0].status is Status.COMPLETED
    assert res[0].path == dest / name
    assert (dest / name).read_bytes() == server.content("served.bin")
    assert leftovers(dest) == [name]
    assert leftovers(dest.parent) == ["dest", f"dest/{name}"]


async def test_content_disposition_is_ignored_unless_enabled(server: Server, dest: Path) -> None:
    url = server.handle("plain.bin", disposition('attachment; filename="other.bin"'))
    res = await fetch([url], dest)
    assert res[0].path == dest / "plain.bin"
    assert leftovers(dest) == ["plain.bin"]


async def test_an_explicit_path_wins_over_content_disposition(server: Server, dest: Path) -> None:
    url = server.handle("given.bin", disposition('attachment; filename="other.bin"'))
    res = await fetch([File(url, "mine.bin")], dest, content_disposition=True)
    assert res[0].path == dest / "mine.bin"
    assert leftovers(dest) == ["mine.bin"]


async def test_a_file_named_by_the_server_is_skipped_when_already_there(
    server: Server, dest: Path
) -> None:
    url = server.handle("again.bin", disposition('attachment; filename="named.bin"'))
    first = await fetch([url], dest, content_disposition=True)
    assert first[0].status is Status.COMPLETED
    res, events = await run_manager(dest, [url], content_disposition=True)
    assert res[0].status is Status.SKIPPED
    assert res[0].path == dest / "named.bin"
    assert "the server's name" in getattr(events[-1], "reason", "")
    assert leftovers(dest) == ["named.bin"]


async def test_a_server_name_pointing_at_a_symlink_is_refused(
    server: Server, dest: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (dest / "target.bin").symlink_to(outside)
    url = server.handle("sym.bin", disposition('attachment; filename="target.bin"'))
    res = await fetch([url], dest, content_disposition=True, overwrite=True)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "symbolic link" in res[0].error
    assert text_of(outside) == "keep me"


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://127.0.0.1/x.bin", "javascript:alert(1)", "data:,x"]
)
async def test_a_redirect_to_a_non_http_scheme_is_refused(
    server: Server, dest: Path, target: str
) -> None:
    url = server.route_url("redirect", "away.bin", to=target)
    res = await fetch([url, server.url("stay.bin")], dest)
    away, stay = res
    assert away.status is Status.FAILED
    assert away.error is not None
    assert "URL refused" in away.error
    assert server.count("away.bin") == 1
    assert stay.status is Status.COMPLETED
    assert leftovers(dest) == ["stay.bin"]


# --- secrets never show ---------------------------------------------------------------------------


async def test_secrets_in_urls_never_reach_errors_events_reprs_or_logs(
    server: Server, dest: Path, caplog: pytest.LogCaptureFixture
) -> None:
    urls = [
        server.url("nope.bin", 10, status=404, api_key="s3cr3tk3y").replace(
            "http://", "http://alice:hunter2@"
        ),
        "http://bob:pa55w0rd@127.0.0.1:1/x.bin?token=t0k3n",
        "ftp://carol:0pen5esame@127.0.0.1/x.bin",
    ]
    caplog.set_level(logging.DEBUG, logger="rheo_nb")
    res, events = await run_manager(dest, urls, retries=1)
    assert all(o.status is Status.FAILED for o in res)
    shown = " ".join(
        [repr(res), res._repr_html_(), *map(repr, events), *(o.error or "" for o in res)]
        + [str(o) for o in res]
        + [r.getMessage() for r in caplog.records]
    )
    for secret in ("hunter2", "s3cr3tk3y", "pa55w0rd", "t0k3n", "0pen5esame"):
        assert secret not in shown


# --- size caps ------------------------------------------------------------------------------------


async def test_a_body_over_max_size_is_stopped_at_the_cap_with_flat_memory(
    server: Server, dest: Path
) -> None:
    cap = 4 << 20
    url = server.route_url("flood", "flood.bin", 64 << 20)
    tracemalloc.start()
    try:
        res = await fetch([url, server.url("small.bin")], dest, max_size=cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    flood, small = res
    assert flood.status is Status.FAILED
    assert flood.error is not None
    assert "body is over max_size=4.0 MiB; stopped there" in flood.error
    assert flood.bytes <= cap
    assert small.status is Status.COMPLETED
    assert not (dest / "flood.bin").exists()
    assert not files.working_path(dest / "flood.bin", ".part").exists()
    assert peak < 16 << 20


async def test_a_gzip_bomb_is_a_large_body_stopped_by_max_size(server: Server, dest: Path) -> None:
    url = server.route_url("gzip", "bomb.gz", 64 << 20, body="bomb")
    res = await fetch([url], dest, max_size=10_000)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "over max_size" in res[0].error
    assert leftovers(dest) == []
