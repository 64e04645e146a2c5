"""Seams of credentials with mirrors.

"Credentials never leave their origin" (README, guarantee 6). A mirror on another host
is another origin, as a redirect's target is: the file's headers and the call's
``auth``, ``headers`` and ``cookies`` stay with the origin of the file's URL. A mirror
that needs a login carries its own (a password in its URL, or ``.netrc``), which is
what rheo_nb already does for a password in the main URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from server import FAST, Server, SharedServer

import rheo_nb
from rheo_nb import BearerToken, File, Status

SECRET = "Xyzzy9"

CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (File keywords, call options)
    "file-headers": ({"headers": {"Authorization": f"Bearer tok-{SECRET}"}}, {}),
    "call-auth": ({}, {"auth": BearerToken(f"tok-{SECRET}")}),
    "call-headers": ({}, {"headers": {"X-Api-Key": f"key-{SECRET}"}}),
    "call-cookies": ({}, {"cookies": {"sid": f"cookie-{SECRET}"}}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_credentials_for_a_files_url_never_reach_a_mirror_on_another_origin(
    server: Server, other_server: SharedServer, dest: Path, case: str
) -> None:
    other = other_server.view()
    primary = server.url("x.bin", 1000, status=404)  # gone: the mirror takes over
    mirror = other.url("x.bin", 1000)
    file_options, call_options = CASES[case]
    item = File(primary, mirrors=[mirror], **file_options)
    res = await asyncio.wait_for(rheo_nb.fetch([item], dest, **FAST, **call_options), 20)
    assert res[0].status is Status.COMPLETED, res[0].error
    (asked,) = server.requests("x.bin")
    assert any(SECRET in v for v in asked.headers.values())  # the origin gets them
    leaked = {k: v for r in other.requests("x.bin") for k, v in r.headers.items() if SECRET in v}
    assert leaked == {}, f"the mirror's origin was sent {leaked}"
