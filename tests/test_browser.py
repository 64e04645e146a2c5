"""The browser tier: JupyterLab 4 on 127.0.0.1, driven in Debian's Chromium by Playwright.

Each notebook of ``notebooks/`` is opened and run with Run > Run All Cells, as a person
would. The DOM is sampled while it runs: the widget of every cell tagged
``progress-live`` must be seen partly filled while its cell runs and end at 100% (cells
tagged ``progress-full``: end at 100%; a batch with a failure ends where its label says),
with no error output anywhere. A notebook of the
test's own clicks the Cancel button of an ``await fetch`` cell and of a background job,
and holds the negative control: a widget that draws only at the end is never seen
partly filled.

Measured and written to ``tests/artifacts/``: the time from a cell's start to the first
paint of its widget. Screenshots go there too; ``RHEO_NB_UPDATE_IMAGES=1`` also refreshes
the one in ``notebooks/images/`` that the documentation shows.

Jupyter runs with throw-away config, data, runtime and settings folders; the browser
with a fresh profile; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jupyter import (
    ARTIFACTS,
    FULL_TAG,
    LIVE_TAG,
    NOTEBOOKS,
    isolated_env,
    notebook,
    progress_model,
    read_notebook,
    view_ids,
    widget_state,
)

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(170),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (tests/run installs it with apt)",
    ),
]

CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: User settings: no news or update checks (no internet), every cell kept in the DOM
#: (windowing would detach cells scrolled away), widget state saved with the notebook.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyter-widgets/jupyterlab-manager/plugin": {"saveState": True},
}

#: The state of every cell of the notebook on show.
SAMPLE_JS = """
() => {
  const panel = window.jupyterapp.shell.currentWidget;
  return Array.from(panel.node.querySelectorAll('.jp-Notebook .jp-Cell')).map((cell) => {
    const prompt = (cell.querySelector('.jp-InputArea-prompt') || {}).textContent || '';
    const fill = cell.querySelector('.widget-hprogress .progress-bar');
    const width = fill && fill.style.width.endsWith('%') ? parseFloat(fill.style.width) : null;
    const texts = Array.from(cell.querySelectorAll('.jp-OutputArea-output'))
      .map((o) => o.textContent).join('\\n');
    return {
      prompt: prompt.trim(),
      running: prompt.includes('*'),
      width,
      fill: fill ? fill.getAttribute('style') + ' ' + fill.className : null,
      errors: cell.querySelectorAll(
        '[data-mime-type="application/vnd.jupyter.error"],'
        + '[data-mime-type="application/vnd.jupyter.stderr"]').length,
      text: texts,
    };
  });
}
"""

#: Notes, from a MutationObserver, when each prompt changes and when each cell's first
#: progress bar is painted (the animation frame after it entered the DOM).
WATCH_JS = """
() => {
  const w = {prompts: [], added: {}, painted: {}, last: {}};
  window.__rheoWatch = w;
  const panel = window.jupyterapp.shell.currentWidget;
  const look = () => {
    const now = performance.now();
    panel.node.querySelectorAll('.jp-Notebook .jp-Cell').forEach((cell, i) => {
      const p = ((cell.querySelector('.jp-InputArea-prompt') || {}).textContent || '').trim();
      if (w.last[i] !== p) { w.last[i] = p; w.prompts.push([i, p, now]); }
      if (!(i in w.added) && cell.querySelector('.widget-hprogress .progress-bar')) {
        w.added[i] = now;
        requestAnimationFrame(() => { w.painted[i] = performance.now(); });
      }
    });
  };
  new MutationObserver(look).observe(panel.node, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
  look();
}
"""

#: The notebook ``path`` is on show, its cells rendered, its kernel connected and idle.
NOTEBOOK_READY_JS = """
(path) => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.context || panel.context.path !== path) return false;
  if (!panel.node.querySelector('.jp-Notebook .jp-Cell')) return false;
  const session = panel.sessionContext && panel.sessionContext.session;
  const kernel = session && session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(url: str, method: str = "GET", timeout: float = 5) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method != "GET" else None)
    # Loopback only: no proxy may sit between the test and its own server.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


@dataclass
class Lab:
    """A JupyterLab server of this test module."""

    base: str
    token: str
    work: Path
    log: Path
    process: subprocess.Popen[bytes]

    def api(self, path: str, method: str = "GET") -> Any:
        return http(f"{self.base}/api/{path}?token={self.token}", method)

    def url(self, name: str) -> str:
        return f"{self.base}/lab/tree/{name}?token={self.token}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    env = {**os.environ, **isolated_env(root)}
    for plugin, values in LAB_SETTINGS.items():
        path = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    work = root / "work"
    work.mkdir()
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        shutil.copy(path, work / path.name)
    port, token = free_port(), secrets.token_hex(16)
    log = root / "lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",  # refuses to start as root otherwise (CI runs as root)
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={work}",
                "--ServerApp.terminals_enabled=False",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
                "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, for the model
            ],
            env=env,
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Lab(f"http://127.0.0.1:{port}", token, work, log, process)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"jupyter lab exited:\n{log.read_text()[-3000:]}"
            try:
                server.api("status")
                break
            except OSError:
                assert time.monotonic() < deadline, f"lab not ready:\n{log.read_text()[-3000:]}"
                time.sleep(0.2)
        yield server
    finally:
        try:
            server.api("shutdown", method="POST")
            process.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "browser-lab.log")


@pytest.fixture(scope="module")
def page(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # A persistent context is how Playwright takes a profile folder: a fresh one.
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1600},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@dataclass
class Run:
    """What the browser showed while one notebook ran."""

    samples: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)
    final: list[dict[str, Any]] = field(default_factory=list)
    watch: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    shots: dict[int, Path] = field(default_factory=dict)

    def partial_widths(self, i: int) -> list[float]:
        """Widths of cell ``i``'s bar between 0 and 100% while its prompt said running."""
        return [
            cells[i]["width"]
            for _, cells in self.samples
            if cells[i]["running"] and cells[i]["width"] is not None and 0 < cells[i]["width"] < 100
        ]

    def first_paint(self, i: int) -> float:
        """Seconds from cell ``i``'s start to the first paint of its widget.

        With Run All the next cell starts as soon as the one before it ends: its start is
        when the prompt of the code cell before it turned into a number, after ``[*]`` (a
        saved notebook shows the numbers of its last run before this one starts).
        """
        prompts = self.watch["prompts"]
        before = max(int(j) for j, p, _ in prompts if int(j) < i and p[1:2].isdigit())
        queued = min(float(t) for j, p, t in prompts if j == before and p == "[*]:")
        ended = min(
            float(t)
            for j, p, t in prompts
            if j == before and p[1:2].isdigit() and float(t) > queued
        )
        painted = float(self.watch["painted"][str(i)])
        return (painted - ended) / 1000


def open_notebook(page: Any, lab: Lab, name: str) -> None:
    if page.evaluate("() => !!window.jupyterapp"):
        # Lab is loaded: open the next notebook in it rather than load the app again.
        page.evaluate(
            "async (path) => { await window.jupyterapp.commands.execute('docmanager:open', "
            "{path}); return true; }",
            name,
        )
    else:
        page.goto(lab.url(name))
    # The toolbar says idle before any kernel exists, and Run All then asks for a kernel
    # and runs nothing: wait until the kernel is connected, as the page and the server see it.
    page.wait_for_function(NOTEBOOK_READY_JS, arg=name, timeout=90_000)
    deadline = time.monotonic() + 60
    while True:
        try:
            sessions = lab.api("sessions")
        except OSError:  # the server answers 500 while a kernel starts
            sessions = []
        kernels = [s["kernel"] for s in sessions if s["path"] == name]
        if any(k["connections"] >= 1 and k["execution_state"] == "idle" for k in kernels):
            return
        assert time.monotonic() < deadline, f"no kernel connected for {name}: {sessions}"
        time.sleep(0.2)


def dialogs(page: Any) -> list[str]:
    return [d.inner_text()[:200] for d in page.query_selector_all(".jp-Dialog")]


def run_all(
    page: Any,
    lab: Lab,
    name: str,
    *,
    timeout: float = 100,
    on_sample: Any = None,
) -> Run:
    """Open ``name``, Run All Cells from the menu, sample the DOM until every cell ran."""
    t = time.monotonic()
    open_notebook(page, lab, name)
    print(f"\n{name}: opened, kernel ready in {time.monotonic() - t:.1f}s")
    page.evaluate(WATCH_JS)
    page.click('.lm-MenuBar-item:has-text("Run")')
    page.click('.lm-Menu-item[data-command="runmenu:run-all"]')
    run = Run()
    code = [
        i
        for i, c in enumerate(read_notebook(lab.work / name, as_version=4).cells)
        if c.cell_type == "code"
    ]
    t0 = time.monotonic()
    while True:
        cells = page.evaluate(SAMPLE_JS)
        now = time.monotonic() - t0
        run.samples.append((now, cells))
        if on_sample is not None:
            on_sample(run, cells)
        if all(cells[i]["prompt"][1:2].isdigit() for i in code):
            break
        assert not dialogs(page), dialogs(page)
        assert now < timeout, f"{name}: still running after {timeout} s: {cells}"
        page.wait_for_timeout(100)
    print(f"{name}: ran in {time.monotonic() - t0:.1f}s")
    page.wait_for_timeout(500)  # the last comm messages
    run.final = page.evaluate(SAMPLE_JS)
    run.watch = page.evaluate("() => window.__rheoWatch")
    run.model = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.toJSON()")
    page.screenshot(path=str(ARTIFACTS / f"browser-{Path(name).stem}-final.png"), full_page=True)
    return run


def close_notebook(page: Any, lab: Lab, name: str) -> None:
    """Save (the widget manager writes the widget state), close, stop its kernel."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function(
        "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=10_000
    )
    page.evaluate("() => window.jupyterapp.shell.currentWidget.dispose()")
    for session in lab.api("sessions"):
        if session["path"] == name:
            lab.api(f"sessions/{session['id']}", method="DELETE")


def model_errors(model: dict[str, Any]) -> list[str]:
    found = []
    for i, cell in enumerate(model["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            text = out.get("text", "")
            if out.get("name") == "stderr" and ("Traceback" in text or "Exception in" in text):
                found.append(f"cell {i}: traceback on stderr")
    return found


#: The cells of the notebook on show (other notebooks' panels stay in the DOM, hidden).
CELLS = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell"
NAMES = [p.name for p in sorted(NOTEBOOKS.glob("*.ipynb"))]
MID_SHOT = "widget-mid-download.png"


def ended_as_labelled(cell: dict[str, Any]) -> bool:
    """Full when the batch is done; else where its label says (what was done of what
    was asked: a batch with a failure never ends full)."""
    if "✔ done" in cell["text"]:
        return bool(cell["width"] == 100)
    shown = re.search(r"(\d+)% · \d+ / \d+ files", cell["text"])
    return (
        shown is not None
        and cell["width"] is not None
        and int(cell["width"]) == int(shown.group(1))
    )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_jupyterlab_with_a_live_widget(page: Any, lab: Lab, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cells = read_notebook(lab.work / name, as_version=4).cells
    tags = {i: c.metadata.get("tags", []) for i, c in enumerate(cells)}
    live = [i for i, t in tags.items() if LIVE_TAG in t]
    full = [i for i, t in tags.items() if LIVE_TAG in t or FULL_TAG in t]
    assert live

    def shoot(run: Run, sample: list[dict[str, Any]]) -> None:
        i = live[0]
        width = sample[i]["width"]
        if i not in run.shots and sample[i]["running"] and width is not None and 35 <= width <= 75:
            path = ARTIFACTS / f"browser-{Path(name).stem}-mid.png"
            page.locator(CELLS).nth(i).screenshot(path=str(path))
            run.shots[i] = path

    run = run_all(page, lab, name, on_sample=shoot)
    assert model_errors(run.model) == []
    assert [c["errors"] for c in run.final] == [0] * len(run.final)
    for i in live:
        widths = run.partial_widths(i)
        assert len(set(widths)) >= 2, f"cell {i}: bar not seen moving while it ran: {widths}"
    for i in full:
        assert ended_as_labelled(run.final[i]), (i, run.final[i])
    paint = run.first_paint(live[0])
    record = {"notebook": name, "cell": live[0], "first_paint_s": round(paint, 3)}
    record["partial_widths_seen"] = len(set(run.partial_widths(live[0])))
    (ARTIFACTS / f"browser-{Path(name).stem}.json").write_text(json.dumps(record, indent=2))
    print(f"\nbrowser {name}: {json.dumps(record)}")
    assert paint < 3.0
    assert live[0] in run.shots, "no screenshot of the widget mid-download"
    if name.startswith("01") and os.environ.get("RHEO_NB_UPDATE_IMAGES") == "1":
        (NOTEBOOKS / "images").mkdir(exist_ok=True)
        shutil.copy(run.shots[live[0]], NOTEBOOKS / "images" / MID_SHOT)

    close_notebook(page, lab, name)
    # The notebook as JupyterLab saved it keeps the final widgets (widget state).
    saved = read_notebook(lab.work / name, as_version=4)
    state = widget_state(saved)
    for i in full:
        bar = progress_model(state, view_ids(saved.cells[i])[0])
        assert bar is not None, i
        # Saved as it was shown: full, or short of full where a file failed.
        saved_width = bar[1]["value"] * 100 / bar[1]["max"]
        assert saved_width == pytest.approx(run.final[i]["width"], abs=0.05), (i, bar[1])


CLICKS = [
    """
import rheo_nb
from rheo_nb.testing import LocalServer
server = LocalServer().start()
MiB = 1 << 20
def urls(tag, n=2, size=16 * MiB, rate=2 * MiB):
    return [server.url(f"{tag}-{i}.bin", size, rate=rate) for i in range(n)]
""",
    # Clicked while the cell awaits: fetch returns, the unfinished files cancelled.
    "r = await rheo_nb.fetch(urls('await'), 'await')\nprint('RESULT', r.summary())",
    # Clicked once the cell has ended: the job goes on in the background until then.
    "job = rheo_nb.start(urls('job'), 'job')",
    # Negative control: the same widget, drawing only when it opens and when it closes.
    "late = await rheo_nb.fetch(urls('late', 4, 2 * MiB), 'late', concurrency=2, "
    "progress=rheo_nb.NotebookProgress(interval=3600))",
]


def test_cancel_buttons_work_and_a_widget_drawn_only_at_the_end_is_caught(
    page: Any, lab: Lab
) -> None:
    notebook(CLICKS, lab.work / "clicks.ipynb")
    clicked: dict[int, float] = {}

    def click_cancel(run: Run, sample: list[dict[str, Any]]) -> None:
        for i in (1, 2):
            width = sample[i]["width"]
            # The job's button is clicked after its cell ended, while the job runs.
            ready = sample[i]["running"] if i == 1 else sample[i]["prompt"][1:2].isdigit()
            if i not in clicked and ready and width is not None and 5 < width < 50:
                cell = page.locator(CELLS).nth(i)
                cell.locator("button.jupyter-button", has_text="Cancel").click()
                clicked[i] = time.monotonic()

    run = run_all(page, lab, "clicks.ipynb", on_sample=click_cancel)
    assert model_errors(run.model) == []
    assert sorted(clicked) == [1, 2]
    assert "RESULT 2 files: 2 cancelled" in run.final[1]["text"]
    # The job's widget: cancelled (grey), stopped part-way.
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.node"
        ".querySelectorAll('.jp-Notebook .jp-Cell')[2].textContent.includes('■ cancelled')",
        timeout=10_000,
    )
    job = page.evaluate(SAMPLE_JS)[2]
    assert job["width"] is not None
    assert 0 <= job["width"] < 100
    assert "158, 158, 158" in job["fill"] or "9e9e9e" in job["fill"]
    # The negative control ended full, yet was never seen part-way: the browser's
    # liveness check would fail it.
    assert run.final[3]["width"] == 100
    assert run.partial_widths(3) == []
    close_notebook(page, lab, "clicks.ipynb")
