"""Real Jupyter for the slow tiers: isolated dirs, kernels whose messages are timed, and
readers of the widget state a run leaves.

* :func:`isolated_env`: environment variables that keep Jupyter away from the user's
  config, data and runtime folders (and proxies away from loopback).
* :class:`TimedClient`: nbclient's executor, noting when each IOPub message arrived.
* :class:`Kernel`: a kernel driven message by message, for what nbclient cannot do:
  sending every cell at once (as JupyterLab's Run All does) and interrupting a cell.
* :func:`liveness`, :func:`redraw_rate`: what the timed messages say about a widget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

# nbformat is untyped: these typed names are how the tests call it.
read_notebook: Callable[..., Any] = nbformat.read
write_notebook: Callable[..., Any] = nbformat.write
_new_notebook: Callable[..., Any] = nbformat.v4.new_notebook
_new_code_cell: Callable[..., Any] = nbformat.v4.new_code_cell

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "tests" / "artifacts"
VIEW_MIME = "application/vnd.jupyter.widget-view+json"
STATE_MIME = "application/vnd.jupyter.widget-state+json"
#: Cells whose widget must be live and end full carry this tag (``metadata.tags``).
LIVE_TAG = "progress-live"
#: Cells whose widget must end full; it may update after the cell (a background job).
FULL_TAG = "progress-full"


def isolated_env(root: Path) -> dict[str, str]:
    """Jupyter's folders under ``root``: nothing of the user's leaks in or gets written."""
    env = {}
    for var, sub in (
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
        ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
        ("MPLCONFIGDIR", "matplotlib"),
    ):
        path = root / sub
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    env["JUPYTER_PLATFORM_DIRS"] = "1"  # the new layout, and no warning about it
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # debugpy warns about frozen modules
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timed:
    """One IOPub message and when it reached the test."""

    t: float
    msg_type: str
    content: dict[str, Any]

    @property
    def comm_id(self) -> str | None:
        return self.content.get("comm_id")

    @property
    def state(self) -> dict[str, Any]:
        data = self.content.get("data") or {}
        state = data.get("state")
        return state if isinstance(state, dict) else {}


@dataclass
class CellRun:
    """The messages of one executed cell, in order of arrival."""

    messages: list[Timed] = field(default_factory=list)
    reply: dict[str, Any] | None = None
    replied_at: float | None = None

    @property
    def status(self) -> str:
        """``ok``, ``error`` or ``aborted`` once replied; ``pending`` before."""
        return "pending" if self.reply is None else str(self.reply["status"])

    @property
    def ename(self) -> str | None:
        return None if self.reply is None else self.reply.get("ename")

    @property
    def ended(self) -> float:
        """When the reply arrived (the cell's end as a frontend sees it)."""
        assert self.replied_at is not None, "the cell has not ended"
        return self.replied_at

    @property
    def started(self) -> float | None:
        return next((m.t for m in self.messages if m.msg_type == "execute_input"), None)

    @property
    def idle(self) -> float | None:
        return next(
            (
                m.t
                for m in self.messages
                if m.msg_type == "status" and m.content.get("execution_state") == "idle"
            ),
            None,
        )

    @property
    def text(self) -> str:
        return "".join(m.content.get("text", "") for m in self.messages if m.msg_type == "stream")

    @property
    def errors(self) -> list[str]:
        return [
            f"{m.content.get('ename')}: {m.content.get('evalue')}"
            for m in self.messages
            if m.msg_type == "error"
        ]


class TimedClient(NotebookClient):
    """nbclient's executor, keeping every message of each cell with its arrival time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: dict[int, CellRun] = {}

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        run = self.runs.setdefault(cell_index, CellRun())
        run.messages.append(Timed(time.monotonic(), msg["msg_type"], msg["content"]))
        return super().process_message(msg, cell, cell_index)


def execute(path: Path, workdir: Path, *, timeout: int = 90) -> tuple[Any, TimedClient]:
    """Run the notebook at ``path`` with nbclient in a new kernel started in ``workdir``."""
    nb = read_notebook(path, as_version=4)
    client = TimedClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        store_widget_state=True,
        allow_errors=True,  # error outputs are asserted on, with their text
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb, client


def notebook(cells: list[str], path: Path) -> Path:
    """Write a notebook of code cells (for the tiers' own small notebooks)."""
    nb = _new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [_new_code_cell(src) for src in cells]
    write_notebook(nb, path)
    return path


# --- what a run left ------------------------------------------------------------------------


def outputs(cell: Any) -> list[dict[str, Any]]:
    return list(cell.get("outputs", []))


def error_outputs(nb: Any) -> list[str]:
    found = []
    for i, cell in enumerate(nb.cells):
        for out in outputs(cell):
            if out.get("output_type") == "error":
                found.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                if "Traceback" in text or "Exception in callback" in text:
                    found.append(f"cell {i}: traceback on stderr: {text.strip()[-300:]}")
    return found


def view_ids(cell: Any) -> list[str]:
    return [
        out["data"][VIEW_MIME]["model_id"]
        for out in outputs(cell)
        if VIEW_MIME in out.get("data", {})
    ]


def widget_state(nb: Any) -> dict[str, Any]:
    state: dict[str, Any] = nb.metadata.get("widgets", {}).get(STATE_MIME, {}).get("state", {})
    return state


def walk(state: dict[str, Any], model_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every model under ``model_id`` (itself included), following box children."""
    seen: set[str] = set()
    todo = [model_id]
    while todo:
        mid = todo.pop(0)
        if mid in seen or mid not in state:
            continue
        seen.add(mid)
        entry = state[mid]
        yield mid, entry
        todo.extend(
            child.removeprefix("IPY_MODEL_")
            for child in entry["state"].get("children", [])
            if isinstance(child, str) and child.startswith("IPY_MODEL_")
        )


def progress_model(state: dict[str, Any], view_id: str) -> tuple[str, dict[str, Any]] | None:
    """The overall bar (the first IntProgress) of the widget displayed as ``view_id``."""
    for mid, entry in walk(state, view_id):
        if entry.get("model_name") == "IntProgressModel":
            return mid, entry["state"]
    return None


def html_values(state: dict[str, Any], view_id: str) -> list[str]:
    return [
        entry["state"].get("value", "")
        for _, entry in walk(state, view_id)
        if entry.get("model_name") == "HTMLModel"
    ]


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the bar's updates during one cell say."""

    updates: int
    intermediate: list[int]
    #: Seconds from the cell's start to the first partly filled bar.
    first_partial_after: float | None
    #: Seconds between the first partly filled bar and the cell's end.
    lead: float
    duration: float

    @property
    def live(self) -> bool:
        """Partial values arrived, several, and well before the cell ended."""
        return len(set(self.intermediate)) >= 2 and self.lead >= max(0.3, 0.25 * self.duration)


def liveness(run: CellRun, bar_comm: str, maximum: int) -> Liveness:
    start = run.started or (run.messages[0].t if run.messages else 0.0)
    end = run.idle or (run.messages[-1].t if run.messages else start)
    values = [
        (m.t, m.state["value"])
        for m in run.messages
        if m.msg_type == "comm_msg" and m.comm_id == bar_comm and "value" in m.state
    ]
    partial = [(t, v) for t, v in values if 0 < v < maximum and t < end]
    return Liveness(
        updates=len(values),
        intermediate=[v for _, v in partial],
        first_partial_after=partial[0][0] - start if partial else None,
        lead=end - partial[0][0] if partial else 0.0,
        duration=end - start,
    )


@dataclass(frozen=True, slots=True)
class Rate:
    messages: int
    seconds: float
    #: Most messages in any one-second window.
    peak: int

    @property
    def mean(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float(self.messages)


def redraw_rate(messages: list[Timed]) -> Rate:
    """Widget update messages (kernel to frontend) per second."""
    times = [m.t for m in messages if m.msg_type == "comm_msg"]
    if not times:
        return Rate(0, 0.0, 0)
    peak = 0
    lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return Rate(len(times), times[-1] - times[0], peak)


# --- a kernel, message by message -----------------------------------------------------------


class Kernel:
    """A kernel for the cases nbclient does not cover: queue every cell at once, interrupt.

    >>> with Kernel(workdir) as k:                         # doctest: +SKIP
    ...     run = k.run("print(1)")
    """

    def __init__(self, cwd: Path) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(cwd))
        self.client = self.manager.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.runs: dict[str, CellRun] = {}

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    def submit(self, code: str) -> str:
        msg_id: str = self.client.execute(code, allow_stdin=False, store_history=True)
        self.runs[msg_id] = CellRun()
        return msg_id

    def done(self, msg_id: str) -> bool:
        run = self.runs[msg_id]
        return run.reply is not None and run.idle is not None

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Take in messages until ``until()`` holds (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                return False
            if not self.manager.is_alive():
                raise RuntimeError("the kernel died")
            got = False
            for channel, on_shell in (
                (self.client.iopub_channel, False),
                (self.client.shell_channel, True),
            ):
                while channel.msg_ready():
                    got = True
                    self._take(channel.get_msg(timeout=0), on_shell)
            if not got:
                time.sleep(0.005)
        return True

    def _take(self, msg: dict[str, Any], on_shell: bool) -> None:
        now = time.monotonic()
        run = self.runs.get(msg["parent_header"].get("msg_id", ""))
        if run is None:
            return
        if on_shell:
            if msg["msg_type"] == "execute_reply":
                run.reply = msg["content"]
                run.replied_at = now
        else:
            run.messages.append(Timed(now, msg["msg_type"], msg["content"]))

    def run(self, code: str, timeout: float = 60) -> CellRun:
        msg_id = self.submit(code)
        if not self.pump(lambda: self.done(msg_id), timeout):
            raise TimeoutError(f"cell still running after {timeout} s:\n{code}")
        return self.runs[msg_id]

    def interrupt(self) -> float:
        """Interrupt the running cell (the ■ button); returns when it was asked."""
        t = time.monotonic()
        self.manager.interrupt_kernel()
        return t
