"""Progress displays: what the widget draws, how often it talks, text progress, the
display protocol, ``progress=`` choices, and the results table.

The widget runs here without a kernel (ipywidgets works without a frontend); the
notebook tier runs it in a real kernel.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rheo_nb
from rheo_nb import File, Results
from rheo_nb.display import Source, TextProgress, choose
from rheo_nb.display.notebook import NotebookProgress
from rheo_nb.display.view import SCALE, View
from rheo_nb.events import Completed, Event, Restarted, Status, Throttled
from rheo_nb.items import Outcome
from rheo_nb.manager import DownloadManager
from rheo_nb.testing import LocalServer

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(scope="module")
def local() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


class Recording(NotebookProgress):
    """The widget, keeping every view it drew and counting field changes per widget."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.views: list[View] = []
        self.changes: Counter[str] = Counter()
        self.change_times: list[float] = []

    def _build(self) -> None:
        super()._build()
        parts = {
            "bar": self._bar,
            "label": self._label,
            "details": self._details,
            "active": self._active,
            "failures": self._failures,
            "button": self._button,
        }
        for name, widget in parts.items():
            widget.observe(self._count(name), names=["value", "description", "disabled"])

    def _count(self, name: str) -> Callable[[Any], None]:
        def count(_change: Any) -> None:
            self.changes[name] += 1
            self.change_times.append(time.monotonic())

        return count

    def _apply(self, view: View) -> None:
        self.views.append(view)
        super()._apply(view)


# --- the widget on a real download -------------------------------------------------------------


async def test_widget_ends_full_and_green_and_sends_only_changes(
    local: LocalServer, tmp_path: Path
) -> None:
    progress = Recording(interval=0.05)
    urls = [local.url(f"w{i}.bin", 256 * KiB, rate=512 * KiB) for i in range(6)]
    results = await rheo_nb.fetch(urls, tmp_path, progress=progress, concurrency=3)
    assert len(results.ok) == 6
    final = progress.views[-1]
    assert final.value == SCALE
    assert final.bar_style == "success"
    assert progress._bar.value == SCALE
    assert progress._button.layout.display == "none"
    assert "✔ done" in progress._label.value
    values = [v.value for v in progress.views]
    assert any(0 < v < SCALE for v in values), values
    # A field changes only when its value does: never more changes than redraws.
    assert progress.changes["bar"] <= len(set(values))
    assert progress.changes["failures"] == 0


async def test_widget_redraws_at_most_at_its_interval_however_many_files(
    local: LocalServer, tmp_path: Path
) -> None:
    progress = Recording(interval=0.1)
    urls = [local.url(f"m{i}.bin", 512) for i in range(1500)]
    t0 = time.monotonic()
    results = await rheo_nb.fetch(urls, tmp_path, progress=progress, concurrency=16)
    seconds = time.monotonic() - t0
    assert len(results.ok) == 1500
    # One redraw when opened, one per tick, one when closed.
    assert len(progress.views) <= seconds / 0.1 + 3
    assert sum(progress.changes.values()) <= 6 * len(progress.views)


async def test_failures_appear_with_their_cause_not_their_url(
    local: LocalServer, tmp_path: Path
) -> None:
    progress = NotebookProgress()
    urls = [local.url("ok.bin", 1000), local.url("gone.csv", status=404), "ftp://x/y"]
    await rheo_nb.fetch(urls, tmp_path, progress=progress, retries=0)
    assert progress.failed == 2
    names = [name for name, _ in progress.failures]
    assert "gone.csv" in names
    assert "ftp://x/y" in names  # an item that was never planned is named by its URL
    assert ("gone.csv", "HTTP 404 Not Found") in progress.failures
    assert progress._bar.bar_style == "warning"
    assert "HTTP 404 Not Found" in progress._failures.value
    assert "127.0.0.1" not in progress._failures.value


async def test_cancel_button_during_await_fetch_cancels_the_downloads(
    local: LocalServer, tmp_path: Path
) -> None:
    progress = Recording(interval=0.05)
    urls = [local.url(f"c{i}.bin", 8 * MiB, rate=1 * MiB) for i in range(3)]
    task = asyncio.create_task(rheo_nb.fetch(urls, tmp_path, progress=progress))
    while not progress.views or progress.views[-1].value == 0:  # noqa: ASYNC110 - polls a widget
        await asyncio.sleep(0.05)
    assert progress.views[-1].button == "cancel"
    progress._button.click()  # the handler ipywidgets runs for a click in the browser
    results = await asyncio.wait_for(task, 5)
    assert [o.status for o in results] == [Status.CANCELLED] * 3
    assert progress._bar.style.bar_color == "#9e9e9e"
    assert "■ cancelled" in progress._label.value
    assert 0 < progress._bar.value < SCALE  # where it had got to
    assert [o.path.name for o in results if o.bytes > 0]  # partials kept


@pytest.mark.allow_blocking  # fetch_sync blocks this loop on purpose, as a cell would
async def test_fetch_sync_in_a_running_loop_hides_the_button(
    local: LocalServer, tmp_path: Path
) -> None:
    progress = Recording(interval=0.05)
    urls = [local.url(f"s{i}.bin", 256 * KiB, rate=1 * MiB) for i in range(2)]
    results = rheo_nb.fetch_sync(urls, tmp_path, progress=progress)
    assert len(results.ok) == 2
    running = [v for v in progress.views if v.bar_style == "info"]
    assert running
    assert all(v.button == "hidden" for v in running)
    assert all("interrupt the kernel" in v.details for v in running)


def test_a_job_binds_its_cancel_to_the_display(local: LocalServer, tmp_path: Path) -> None:
    class Shown:
        def __init__(self) -> None:
            self.cancel: Callable[[], object] | None = None
            self.closed: list[bool] = []

        def show(self, *, cancel: Callable[[], object] | None) -> None:
            self.cancel = cancel

        def open(self, manager: Source) -> None:
            pass

        def close(self, results: Results, *, interrupted: bool) -> None:
            self.closed.append(interrupted)

    display = Shown()
    job = rheo_nb.start([local.url("j.bin", 8 * MiB, rate=1 * MiB)], tmp_path, progress=display)
    assert display.cancel is not None
    deadline = time.monotonic() + 10
    while job.manager.stats.running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    display.cancel()  # what the widget's Cancel button does
    with pytest.raises(asyncio.CancelledError):
        job.result(timeout=10)
    assert display.closed == [True]
    assert job.results_so_far[0].status is Status.CANCELLED


def test_a_shown_display_is_closed_even_when_the_job_fails_before_it_opens(
    tmp_path: Path,
) -> None:
    class Shown:
        def __init__(self) -> None:
            self.events: list[str] = []

        def show(self, *, cancel: Callable[[], object] | None) -> None:
            self.events.append("show")

        def open(self, manager: Source) -> None:
            self.events.append("open")

        def close(self, results: Results, *, interrupted: bool) -> None:
            self.events.append(f"close interrupted={interrupted}")

    (tmp_path / "file").write_text("not a folder")
    display = Shown()
    job = rheo_nb.start(["http://127.0.0.1:9/x"], tmp_path / "file", progress=display)
    with pytest.raises(rheo_nb.DestinationError):
        job.result(timeout=10)
    assert display.events == ["show", "close interrupted=True"]


async def test_awaiting_a_job_with_a_timeout_cancels_the_job(
    local: LocalServer, tmp_path: Path
) -> None:
    job = rheo_nb.start([local.url("t.bin", 8 * MiB, rate=1 * MiB)], tmp_path, progress=False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(job, 0.3)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wrap_future(job._thread.future)
    assert job.done()
    assert job.results_so_far[0].status is Status.CANCELLED


# --- the display protocol and progress= ----------------------------------------------------


class Log:
    """A display of one's own: any object with open() and close()."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.closed: list[tuple[int, bool]] = []

    def open(self, manager: Source) -> None:
        manager.on("completed", self.completed)

    def completed(self, event: Event) -> None:
        assert isinstance(event, Completed)
        self.seen.append(f"done {event.path.name}")

    def close(self, results: Results, *, interrupted: bool) -> None:
        self.closed.append((len(results), interrupted))


async def test_any_object_with_open_and_close_is_a_display(
    local: LocalServer, tmp_path: Path
) -> None:
    log = Log()
    assert choose(log) is log
    await rheo_nb.fetch(
        [local.url("p.bin", 1000), local.url("q.bin", 1000)], tmp_path, progress=log
    )
    assert sorted(log.seen) == ["done p.bin", "done q.bin"]
    assert log.closed == [(2, False)]


async def test_a_custom_display_hears_of_an_interruption(
    local: LocalServer, tmp_path: Path
) -> None:
    log = Log()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await rheo_nb.fetch([local.url("i.bin", 8 * MiB, rate=MiB)], tmp_path, progress=log)
    assert log.closed == [(1, True)]


def test_choose_picks_by_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose(False) is None
    assert choose(None) is None
    assert isinstance(choose("text"), TextProgress)
    assert isinstance(choose("notebook"), NotebookProgress)
    assert isinstance(choose("auto"), TextProgress)  # not in a kernel
    assert isinstance(choose(True), TextProgress)
    monkeypatch.setattr("rheo_nb.display.in_notebook", lambda: True)
    assert isinstance(choose("auto"), NotebookProgress)
    with pytest.raises(ValueError, match="progress="):
        choose("fancy")  # type: ignore[arg-type]


def test_without_ipywidgets_auto_falls_back_to_text_and_the_package_imports() -> None:
    code = (
        "import sys\n"
        "sys.modules['ipywidgets'] = None\n"  # as if it were not installed
        "import rheo_nb\n"
        "from rheo_nb import display\n"
        "display.in_notebook = lambda: True\n"
        "print(type(display.choose('auto')).__name__)\n"
        "try:\n"
        "    rheo_nb.NotebookProgress\n"
        "except ImportError:\n"
        "    print('no widget')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["TextProgress", "no", "widget"]


# --- text progress -----------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_text_progress_rewrites_one_line_on_a_terminal(
    local: LocalServer, tmp_path: Path
) -> None:
    term = Terminal()
    urls = [local.url(f"t{i}.bin", 256 * KiB, rate=MiB) for i in range(2)]
    await rheo_nb.fetch(urls, tmp_path, progress=TextProgress(term, interval=0.05))
    text = term.getvalue()
    redraws = text.split("\r\x1b[K")
    assert len(redraws) > 3
    # Every redraw but the final two (last state, summary) stays on the same line.
    assert all("\n" not in r for r in redraws[1:-2])
    assert redraws[-1].startswith("2 files: 2 completed")


async def test_text_progress_prints_plain_lines_in_a_log(
    local: LocalServer, tmp_path: Path
) -> None:
    log = io.StringIO()
    urls = [local.url(f"l{i}.bin", 256 * KiB, rate=MiB) for i in range(2)]
    await rheo_nb.fetch(urls, tmp_path, progress=TextProgress(log, log_interval=0.1))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert "\x1b" not in log.getvalue()
    assert len(lines) >= 3
    assert lines[-1] == "2 files: 2 completed (512.0 KiB, longest " + lines[-1].split()[-1]


def test_no_progress_prints_nothing(
    local: LocalServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    rheo_nb.fetch_sync([local.url("n.bin", 1000)], tmp_path, progress=False)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


# --- the results table -------------------------------------------------------------------------


def outcome(name: str, status: Status, error: str | None = None) -> Outcome:
    url = f"https://example.org/{name}?token=***"
    return Outcome(url, Path("/d") / name, status, 1000, 0.5, error)


def test_results_table_shows_causes_without_repeating_the_url() -> None:
    url = "https://example.org/gone.csv?token=***"
    html = Results([outcome("gone.csv", Status.FAILED, f"{url}: HTTP 404 Not Found")])._repr_html_()
    assert ">HTTP 404 Not Found</td>" in html
    assert html.count("gone.csv") == 3  # the name, the URL as a hint, the full error as a hint
    assert "token=***" in html


def test_results_table_says_what_the_hidden_rows_are() -> None:
    many = [outcome(f"f{i}", Status.COMPLETED) for i in range(40)]
    many += [outcome(f"s{i}", Status.SKIPPED) for i in range(5)]
    html = Results(many)._repr_html_()
    assert "… and 15 more (10 completed, 5 skipped)" in html
    assert html.index("<style>") < html.index("<table>")


# --- retries and restarts, as the displays show them ----------------------------------------


async def test_text_progress_prints_a_retry_as_it_happens(
    local: LocalServer, tmp_path: Path
) -> None:
    log = io.StringIO()
    url = local.url("flaky-text.bin", 1000, fail=1)
    await rheo_nb.fetch([url], tmp_path, progress=TextProgress(log), backoff=0.01)
    lines = log.getvalue().splitlines()
    assert "retrying flaky-text.bin now (attempt 2 of 4): HTTP 503 Service Unavailable" in lines
    assert lines[-1].startswith("1 file: 1 completed")


async def test_both_displays_announce_a_file_that_restarts(
    local: LocalServer, tmp_path: Path
) -> None:
    # The core emits Restarted when a partial cannot be continued; here the event is
    # synthetic, on a real manager with a real (slow) download, so that both displays hear
    # of it through the manager as they would from the core.
    log = io.StringIO()
    text = TextProgress(log, log_interval=60)
    widget = Recording(interval=0.05)
    async with DownloadManager(tmp_path) as m:
        text.open(m)
        widget.open(m)
        (did,) = await m.add([File(local.url("x.bin", 4 * MiB, rate=MiB), "sub/x.bin")])
        while m.info(did).bytes == 0:  # noqa: ASYNC110 - waits for the download to start
            await asyncio.sleep(0.02)
        m._emit(Restarted(did, m.info(did).url, 600_000, "the server does not support resume"))
        assert m.info(did).restarts == 1
        await asyncio.sleep(0.15)  # a redraw or two
        await m.cancel(did)
        results = m.results()
    text.close(results, interrupted=False)
    widget.close(results, interrupted=False)
    note = "restarting sub/x.bin: the server does not support resume (585.9 KiB discarded)"
    assert note in log.getvalue().splitlines()
    assert list(widget.notices) == [f"↻ {note}"]
    assert note in widget._notices.value
    assert any("↻" in v.active for v in widget.views)


async def test_both_displays_say_an_origin_slowed_down(local: LocalServer, tmp_path: Path) -> None:
    # As for a restart: a synthetic decision on a real manager with a real download.
    log = io.StringIO()
    text = TextProgress(log, log_interval=60)
    widget = Recording(interval=0.05)
    async with DownloadManager(tmp_path) as m:
        text.open(m)
        widget.open(m)
        (did,) = await m.add([local.url("y.bin", 4 * MiB, rate=MiB)])
        while m.info(did).bytes == 0:  # noqa: ASYNC110 - waits for the download to start
            await asyncio.sleep(0.02)
        origin = local.base_url
        m._emit(Throttled(did, m.info(did).url, origin, 2, 4, "429", 0.5))
        await asyncio.sleep(0.15)  # a redraw or two
        await m.cancel(did)
        results = m.results()
    text.close(results, interrupted=False)
    widget.close(results, interrupted=False)
    host = origin.partition("://")[2]
    said = f"{host} slowed to 2 connections: 429, waiting 0.5s"
    assert said in log.getvalue().splitlines()
    assert list(widget.notices) == [f"⇣ {said}"]
    assert said in widget._notices.value
