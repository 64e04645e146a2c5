"""The notebook tier: every notebook of ``notebooks/`` and the widget in a real ipykernel.

* Each notebook runs with nbclient (``store_widget_state=True``): no error output; every
  cell tagged ``progress-live`` shows a widget whose bar arrived at intermediate values
  while the cell ran and ends at its maximum in the stored widget state (cells tagged
  ``progress-full``: the maximum only); a batch with failures ends where its label says,
  at what was done out of what was asked.
* The same notebooks with every cell sent at once, as JupyterLab's Run All does.
* A negative control: a widget that only draws at the end fails the liveness check.
* Measured in the kernel: widget messages per second on a large batch; how fast a kernel
  interrupt ends a ``fetch_sync`` or ``await fetch`` cell, partials kept and resumed;
  the Cancel button (a real comm message from the "frontend") during ``await fetch`` and
  for a background job; a job's widget updating while another cell blocks.

Measurements are printed (``pytest -s``) and written to ``tests/artifacts/``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter import (
    ARTIFACTS,
    FULL_TAG,
    LIVE_TAG,
    NOTEBOOKS,
    VIEW_MIME,
    CellRun,
    Kernel,
    TimedClient,
    error_outputs,
    execute,
    html_values,
    isolated_env,
    liveness,
    notebook,
    progress_model,
    read_notebook,
    redraw_rate,
    view_ids,
    widget_state,
    write_notebook,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

SETUP = """
import asyncio, json, os, time
from pathlib import Path
import rheo_nb
from rheo_nb.testing import LocalServer

server = LocalServer().start()
MiB = 1 << 20

def urls(tag, n, size=2 * MiB, rate=2 * MiB):
    return [server.url(f"{tag}-{i}.bin", size, rate=rate) for i in range(n)]

class StartLog:
    def __init__(self):
        self.starts = {}
    def open(self, manager):
        manager.on("started", lambda e: self.starts.__setitem__(e.path.name, e.resumed_from))
    def close(self, results, *, interrupted):
        pass
"""


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("jupyter")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in isolated_env(root).items():
            mp.setenv(name, value)
        yield root


@pytest.fixture(scope="module")
def kernel(jupyter_env: Path) -> Iterator[Kernel]:
    work = jupyter_env / "kernel-work"
    work.mkdir()
    with Kernel(work) as k:
        run = k.run(SETUP)
        assert run.status == "ok", run.errors
        yield k


def record(name: str, data: dict[str, Any]) -> None:
    """Keep a measurement: printed with ``-s``, and in ``tests/artifacts/``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(f"\n{name}: {json.dumps(data)}")


def check_widgets(nb: Any, client: TimedClient) -> list[str]:
    """Problems with the widgets of cells tagged live or full (empty: all good)."""
    problems = []
    state = widget_state(nb)
    for i, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if LIVE_TAG not in tags and FULL_TAG not in tags:
            continue
        views = view_ids(cell)
        bar = progress_model(state, views[0]) if views else None
        if bar is None:
            problems.append(f"cell {i}: no progress widget in its outputs or the widget state")
            continue
        model_id, values = bar
        label = next((v for v in html_values(state, views[0]) if " files · " in v), "")
        if "✔ done" in label and values["value"] != values["max"]:
            problems.append(f"cell {i}: bar ends at {values['value']}/{values['max']}")
        elif "✔ done" not in label:
            # A batch with failures ends at what was done: the label and the bar agree.
            shown = re.match(r"(\d+)% · ", label)
            if shown is None or int(shown.group(1)) != values["value"] * 100 // values["max"]:
                problems.append(f"cell {i}: bar at {values['value']} but label {label!r}")
        if LIVE_TAG in tags:
            live = liveness(client.runs[i], model_id, values["max"])
            if not live.live:
                problems.append(f"cell {i}: not live: {live}")
    return problems


# --- the notebooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_notebook_runs_clean_with_a_live_widget(
    path: Path, jupyter_env: Path, tmp_path: Path
) -> None:
    nb, client = execute(path, tmp_path)
    assert error_outputs(nb) == []
    assert any(LIVE_TAG in c.metadata.get("tags", []) for c in nb.cells), "no live cell"
    assert check_widgets(nb, client) == []
    write_notebook(nb, tmp_path / f"executed-{path.name}")


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_notebook_cells_all_sent_at_once_all_complete(
    path: Path, jupyter_env: Path, tmp_path: Path
) -> None:
    cells = [c.source for c in read_notebook(path, as_version=4).cells if c.cell_type == "code"]
    with Kernel(tmp_path) as k:
        ids = [k.submit(source) for source in cells]
        assert k.pump(lambda: all(k.done(i) for i in ids), timeout=90), [
            n for n, i in enumerate(ids) if not k.done(i)
        ]
        for n, i in enumerate(ids):
            run = k.runs[i]
            assert run.status == "ok", (n, run.errors)
            assert "Traceback" not in run.text, (n, run.text)


def test_liveness_check_catches_a_widget_that_only_draws_at_the_end(
    jupyter_env: Path, tmp_path: Path
) -> None:
    cells = [
        SETUP,
        # Positive reference and negative control: the same download; the second widget's
        # timer fires after an hour, so it draws only when it opens and when it closes.
        "await rheo_nb.fetch(urls('live', 6), 'a', concurrency=3)",
        "await rheo_nb.fetch(urls('late', 6), 'b', concurrency=3, "
        "progress=rheo_nb.NotebookProgress(interval=3600))",
    ]
    path = notebook(cells, tmp_path / "control.ipynb")
    nb, client = execute(path, tmp_path)
    assert error_outputs(nb) == []
    nb.cells[1].metadata["tags"] = [LIVE_TAG]
    assert check_widgets(nb, client) == []
    nb.cells[1].metadata["tags"] = []
    nb.cells[2].metadata["tags"] = [LIVE_TAG]
    problems = check_widgets(nb, client)
    # It ended full, so only the liveness check can tell: and it does.
    assert len(problems) == 1
    assert problems[0].startswith("cell 2: not live")


# --- measured in the kernel ------------------------------------------------------------------


def bar_comm(run: CellRun) -> str:
    return next(
        m.comm_id
        for m in run.messages
        if m.msg_type == "comm_open" and m.state.get("_model_name") == "IntProgressModel"
        if m.comm_id is not None
    )


def button_comm(run: CellRun) -> str:
    return next(
        m.comm_id
        for m in run.messages
        if m.msg_type == "comm_open" and m.state.get("_model_name") == "ButtonModel"
        if m.comm_id is not None
    )


def partly_filled(run: CellRun) -> bool:
    bars = {
        m.comm_id
        for m in run.messages
        if m.msg_type == "comm_open" and m.state.get("_model_name") == "IntProgressModel"
    }
    return any(
        m.msg_type == "comm_msg" and m.comm_id in bars and 0 < m.state.get("value", 0) < 1000
        for m in run.messages
    )


def click(k: Kernel, comm_id: str) -> float:
    """What the browser sends when the button is clicked; returns when it was sent."""
    msg = k.client.session.msg(
        "comm_msg",
        {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}},
    )
    t = time.monotonic()
    k.client.shell_channel.send(msg)
    return t


def test_widget_messages_per_second_stay_bounded_on_a_large_batch(kernel: Kernel) -> None:
    run = kernel.run(
        "big = await rheo_nb.fetch(urls('many', 2000, size=2048, rate=None), 'many', "
        "concurrency=16)\nassert len(big.ok) == 2000, big",
        timeout=120,
    )
    assert run.status == "ok", run.errors
    rate = redraw_rate(run.messages)
    start, end = run.started or 0.0, run.ended
    record(
        "redraw_rate",
        {
            "files": 2000,
            "cell_seconds": round(end - start, 2),
            "widget_messages": rate.messages,
            "mean_per_second": round(rate.mean, 1),
            "peak_per_second": rate.peak,
        },
    )
    # Ten redraws a second, a few fields each: far below Jupyter's 1000 messages/s.
    assert rate.peak <= 60
    assert rate.messages <= 60 * (end - start) + 30


def test_interrupting_fetch_sync_stops_within_a_second_and_keeps_partials(
    kernel: Kernel,
) -> None:
    msg_id = kernel.submit("r = rheo_nb.fetch_sync(urls('intr', 2, 8 * MiB, 4 * MiB), 'intr')")
    assert kernel.pump(lambda: partly_filled(kernel.runs[msg_id]), 30)
    time.sleep(0.5)
    asked = kernel.interrupt()
    assert kernel.pump(lambda: kernel.done(msg_id), 15)
    run = kernel.runs[msg_id]
    latency = run.ended - asked
    assert run.ename == "KeyboardInterrupt"
    # One line on what was done and kept, and a traceback that ends at the cell's line.
    assert run.reply is not None
    evalue = str(run.reply.get("evalue", ""))
    assert evalue.startswith("downloads stopped: 0 of 2 files done, 2 partial files kept in ")
    assert evalue.endswith("; run it again to resume")
    frames = "\n".join(run.reply.get("traceback", []))
    assert frames.count("File ") <= 1, frames  # the cell's line, and fetch_sync's raise
    for noise in ("runner.py", "concurrent", "threading", "asyncio"):
        assert noise not in frames, frames
    # The widget says so, and the partial files are there to resume from.
    view = kernel.run(
        "from rheo_nb.files import working_path\n"
        "print([working_path(Path('intr/intr-0.bin'), s).exists() for s in ('.part', '.json')])\n"
        "log = StartLog()\n"
        "again = await rheo_nb.fetch(urls('intr', 2, 8 * MiB, 4 * MiB), 'intr', progress=log)\n"
        "print(again.summary())\n"
        "print(json.dumps(log.starts))"
    )
    assert view.status == "ok", view.errors
    files, summary, offsets = view.text.splitlines()
    assert files == "[True, True]"  # the part file and its resume record
    assert "2 completed" in summary
    starts: dict[str, int] = json.loads(offsets)
    assert len(starts) == 2
    assert all(offset > 0 for offset in starts.values()), starts
    labels = [m.state["value"] for m in run.messages if "■ stopped" in str(m.state.get("value"))]
    assert labels, "the widget did not say it stopped"
    record(
        "interrupt_fetch_sync",
        {"latency_s": round(latency, 3), "resumed_from": starts},
    )
    assert latency < 1.5


def test_interrupting_an_await_fetch_cell_cancels_it_and_keeps_partials(kernel: Kernel) -> None:
    msg_id = kernel.submit("r = await rheo_nb.fetch(urls('aintr', 2, size=16 * MiB), 'aintr')")
    assert kernel.pump(lambda: partly_filled(kernel.runs[msg_id]), 30)
    time.sleep(0.5)
    asked = kernel.interrupt()
    assert kernel.pump(lambda: kernel.done(msg_id), 15)
    run = kernel.runs[msg_id]
    # ipykernel cancels the cell's task: the cell ends with CancelledError.
    assert run.ename == "CancelledError"
    after = kernel.run(
        "from rheo_nb.files import working_path\n"
        "print(working_path(Path('aintr/aintr-0.bin'), '.part').stat().st_size > 0)"
    )
    assert after.text.strip() == "True"
    record("interrupt_await_fetch", {"latency_s": round(run.ended - asked, 3)})
    assert run.ended - asked < 1.5


def test_cancel_button_during_await_fetch_returns_cancelled_results(kernel: Kernel) -> None:
    msg_id = kernel.submit(
        "r = await rheo_nb.fetch(urls('click', 3, size=16 * MiB), 'click')\nprint(r.summary())"
    )
    assert kernel.pump(lambda: partly_filled(kernel.runs[msg_id]), 30)
    clicked = click(kernel, button_comm(kernel.runs[msg_id]))
    assert kernel.pump(lambda: kernel.done(msg_id), 15)
    run = kernel.runs[msg_id]
    assert run.status == "ok", run.errors
    assert "3 cancelled" in run.text
    record("cancel_button_await", {"click_to_cell_end_s": round(run.ended - clicked, 3)})
    assert run.ended - clicked < 1.5


def test_background_job_updates_while_a_cell_blocks_and_its_button_cancels(
    kernel: Kernel,
) -> None:
    started = kernel.run("job = rheo_nb.start(urls('job', 2, size=16 * MiB), 'job')")
    assert started.status == "ok", started.errors
    assert any(m.msg_type == "display_data" for m in started.messages)
    bar = bar_comm(started)
    # Shown again by a later cell: another view of the same widget.
    again = kernel.run("job")
    assert any(VIEW_MIME in m.content.get("data", {}) for m in again.messages), again.messages
    # Another cell blocks the kernel's loop; the job's bar keeps moving meanwhile.
    busy = kernel.run("time.sleep(1.5)")
    moving = [
        m.state["value"]
        for m in busy.messages
        if m.msg_type == "comm_msg" and m.comm_id == bar and "value" in m.state
    ]
    assert len(set(moving)) >= 3, moving
    # The kernel is free now: a click on Cancel reaches the job.
    clicked = click(kernel, button_comm(started))
    done = kernel.run(
        "try:\n    await job\nexcept asyncio.CancelledError:\n"
        "    print('cancelled', job.done(), job.results_so_far.summary())"
    )
    assert done.status == "ok", done.errors
    assert done.text.startswith("cancelled True 2 files: 2 cancelled")
    record("cancel_button_job", {"click_to_job_end_s": round(done.ended - clicked, 3)})


def test_final_widget_keeps_a_readable_summary_as_text(kernel: Kernel) -> None:
    run = kernel.run("r = await rheo_nb.fetch(urls('text', 2, size=MiB), 'text')")
    updates = [m for m in run.messages if m.msg_type == "update_display_data"]
    assert updates, "the final summary was not published"
    data = updates[-1].content["data"]
    assert data["text/plain"].startswith("rheo_nb: ✔ done · 2 files: 2 completed")
    assert "100% · 2 / 2 files" in data["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in data
