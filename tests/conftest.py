"""Fixtures shared by the whole suite.

* ``shared_server`` (session) / ``server`` (per test): the test server of ``server.py``;
  ``other_server``: a second one, another origin.
* ``a`` / ``b``: servers whose routes demand credentials (``auth_servers.py``), on two
  origins.
* ``dest``: an empty destination folder per test.
* ``fast``: options that keep retries quick and the progress display off.
* ``s3_server`` (session) / ``s3_bucket`` / ``s3``: a real S3 server, a fresh bucket, and a
  client to look at it (``s3.py``).
* ``blockbuster`` (autouse): any blocking call made by rheo_nb code while an event loop
  runs in the same thread fails the test. Only frames of ``rheo_nb`` are scanned: the
  suite's own helpers, pytest and aiohttp may block (a test reading a file it just
  downloaded is not a bug). Tests that block a loop on purpose (``fetch_sync`` from a
  coroutine) carry ``@pytest.mark.allow_blocking``; the one bounded wait rheo_nb makes on
  purpose (for the worker thread of ``start()`` to be up) is allowed by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auth_servers import AuthServer
from blockbuster import BlockBuster, blockbuster_ctx
from hypothesis import settings
from s3 import s3, s3_bucket, s3_server  # noqa: F401 (fixtures)
from server import FAST, Server, SharedServer

# No example database: the suite writes nothing outside its temporary folders.
settings.register_profile("rheo_nb", database=None, deadline=None, max_examples=200)
settings.load_profile("rheo_nb")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_blocking: blocking the event loop is what this test does on purpose"
    )


@pytest.fixture(scope="session")
def shared_server() -> Iterator[SharedServer]:
    with SharedServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def other_server() -> Iterator[SharedServer]:
    """A second origin (another port), for redirects across origins."""
    with SharedServer() as srv:
        yield srv


@pytest.fixture
def server(shared_server: SharedServer) -> Server:
    return shared_server.view()


@pytest.fixture
def a() -> Iterator[AuthServer]:
    with AuthServer() as srv:
        yield srv


@pytest.fixture
def b() -> Iterator[AuthServer]:
    """A second server, on another port: where cross-origin redirects lead."""
    with AuthServer() as srv:
        yield srv


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


@pytest.fixture
def fast() -> dict[str, Any]:
    return dict(FAST)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy, ``.netrc`` or CA bundle from the machine's environment."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[BlockBuster | None]:
    if request.node.get_closest_marker("allow_blocking") is not None:
        yield None
        return
    with blockbuster_ctx("rheo_nb") as bb:
        # start() waits for its worker thread's loop to exist, so that job.cancel() can
        # never be lost: a handshake as short as Thread.start(), which blockbuster allows.
        for name in ("threading.Lock.acquire", "threading.Lock.acquire_lock"):
            bb.functions[name].can_block_in("rheo_nb/runner.py", "__init__")
            # Test servers (rheo_nb.testing) wait for their own thread to listen and to
            # end; tests run them from coroutines too. That is setup, not download work.
            for step in ("start", "stop"):
                bb.functions[name].can_block_in("rheo_nb/testing.py", step)
        # The S3 destination imports its client libraries and warms botocore's caches in a
        # worker thread, on a private loop there: blocking that loop is the point.
        for checked in bb.functions.values():
            checked.can_block_in("rheo_nb/objstore.py", "_prepare")
        yield bb
