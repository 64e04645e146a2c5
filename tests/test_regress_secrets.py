"""Issue 9, defect family 3: credentials and output.

Credentials stay with their origin, whoever set them (the call, or an injected
``aiohttp.ClientSession``); a password never shows, however oddly its URL is written; and
text a server chooses (a reason phrase) never reaches a terminal with its control bytes.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from faults import RawRequest, closed_port, raw_server
from server import FAST, Server, SharedServer

import rheo_nb
from rheo_nb import Status


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


# --- an injected session's credentials and a redirect to another origin --------------------------


async def test_an_injected_sessions_headers_and_cookies_stay_with_their_origin(
    server: Server, other_server: SharedServer, dest: Path
) -> None:
    other = other_server.view()
    target = other.url("moved.bin")
    url = server.route_url("redirect", "moved.bin", to=target)
    async with aiohttp.ClientSession(
        headers={"X-Api-Key": "key-Xyzzy9"}, cookies={"sid": "cookie-Xyzzy9"}
    ) as session:
        res = await fetch([url], dest, client=session)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / "moved.bin").read_bytes() == other.content("moved.bin")
    (first,) = server.requests("moved.bin")
    assert first.headers.get("X-Api-Key") == "key-Xyzzy9"  # the origin gets them
    assert "cookie-Xyzzy9" in first.headers.get("Cookie", "")
    (moved,) = other.requests("moved.bin")
    leaked = {k: v for k, v in moved.headers.items() if "Xyzzy9" in v}
    assert leaked == {}, f"the other origin was sent {leaked}"


# --- passwords in oddly written URLs --------------------------------------------------------------

#: A password whose two halves are both secret: neither may show.
SECRET_PARTS = ("hunter2", "Xyzzy9")


def odd_urls(base: str) -> Iterator[tuple[str, str]]:
    host = base.removeprefix("http://")
    for char in "#/?":
        yield f"unencoded {char}", f"http://alice:hunter2{char}Xyzzy9@{host}/f.bin"
    yield "no scheme", f"alice:hunter2Xyzzy9@{host}/f.bin"


def secrets_in(text: str) -> list[str]:
    return [part for part in SECRET_PARTS if part in text]


@pytest.mark.parametrize("kind", ["unencoded #", "unencoded /", "unencoded ?", "no scheme"])
async def test_a_password_in_an_oddly_written_url_shows_nowhere(
    server: Server, dest: Path, kind: str
) -> None:
    url = dict(odd_urls(server.base_url))[kind]
    shown = io.StringIO()
    res = await rheo_nb.fetch(
        [url], dest, **{**FAST, "progress": rheo_nb.TextProgress(shown), "retries": 0}
    )
    places = {
        "error": res[0].error or "",
        "repr(results)": repr(res),
        "repr(outcome)": repr(res[0]),
        "table": res.table(),
        "html": res._repr_html_(),
        "text display": shown.getvalue(),
    }
    leaks = {where: secrets_in(text) for where, text in places.items() if secrets_in(text)}
    assert leaks == {}, f"the password shows in {leaks}: {res[0].error}"


@pytest.mark.parametrize(
    "proxy",
    ["alice:hunter2Xyzzy9@127.0.0.1:{port}", "http://alice:hunter2#Xyzzy9@127.0.0.1:{port}"],
    ids=["no scheme", "unencoded #"],
)
async def test_a_password_in_an_oddly_written_proxy_shows_nowhere(
    server: Server, dest: Path, proxy: str
) -> None:
    # Refused with an OptionError (the promise for a proxy rheo_nb cannot use), or used:
    # either way the password shows nowhere. Nothing listens at the proxy's port.
    shown = io.StringIO()
    options = {**FAST, "progress": rheo_nb.TextProgress(shown), "retries": 0}
    try:
        res = await rheo_nb.fetch(
            [server.url("p.bin")], dest, proxy=proxy.format(port=closed_port()), **options
        )
    except rheo_nb.RheoNbError as exc:
        places = {"str(error)": str(exc), "repr(error)": repr(exc)}
    else:
        places = {
            "error": res[0].error or "",
            "repr(results)": repr(res),
            "table": res.table(),
            "text display": shown.getvalue(),
        }
    leaks = {where: secrets_in(text) for where, text in places.items() if secrets_in(text)}
    assert leaks == {}, f"the proxy's password shows in {leaks}"
    assert server.count() == 0


# --- a reason phrase with terminal control sequences ----------------------------------------------

#: ESC, BEL and the C1 range: what a terminal acts on rather than shows.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


async def hostile_reason(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    # Clear the screen, then set the window title, then ring the bell.
    writer.write(
        b"HTTP/1.1 404 Not\x1b[2J\x1b]0;owned\x07Found\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    return False


async def test_a_reason_phrase_with_control_characters_is_escaped(dest: Path) -> None:
    shown = io.StringIO()
    with raw_server(hostile_reason) as srv:
        res = await rheo_nb.fetch(
            [srv.url()], dest, **{**FAST, "progress": rheo_nb.TextProgress(shown)}
        )
    assert res[0].status is Status.FAILED
    error = res[0].error or ""
    assert "404" in error
    assert CONTROL.findall(error) == [], repr(error)
    assert CONTROL.findall(shown.getvalue()) == [], repr(shown.getvalue())
    assert CONTROL.findall(res.table()) == [], repr(res.table())
