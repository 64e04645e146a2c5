"""Progress as one compact ipywidgets 8 widget: Jupyter Lab and Notebook, VS Code, Colab.

>>> results = await rheo_nb.fetch(urls, dest="data")   # "auto" picks it  # doctest: +SKIP
>>> progress = rheo_nb.NotebookProgress("train set")     # or choose the title
>>> results = await rheo_nb.fetch(urls, progress=progress)                 # doctest: +SKIP

The widget reads the manager's tracker on a timer on the manager's loop, at most
``1 / interval`` times a second, and sends a widget field to the frontend only when its
value changed. Every field change is one comm message on IOPub, and Jupyter drops output
above 1000 messages a second, so the cost to the frontend must not grow with the batch:
100 000 small files or one 10 GB file cost the same few messages a second.

This module imports ipywidgets; :func:`rheo_nb.display.choose` imports it only on demand.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal

import ipywidgets as widgets

from .. import format
from ..events import Event, EventType, Failed, Subscription
from ..tracker import DownloadInfo, Stats
from .text import fraction, line

if TYPE_CHECKING:
    from ..manager import DownloadManager
    from ..results import Results

log = logging.getLogger("rheo_nb")

#: The overall bar counts in thousandths: finer steps would only cost messages.
SCALE: Final = 1000
VIEW_MIME: Final = "application/vnd.jupyter.widget-view+json"

Phase = Literal["running", "done", "partial", "failed", "cancelled", "stopped"]

#: bar_style and bar colour of each phase (ipywidgets has no grey style: cancelled sets one).
_COLOURS: dict[Phase, tuple[str, str | None]] = {
    "running": ("info", None),
    "done": ("success", None),
    "partial": ("warning", None),
    "failed": ("danger", None),
    "cancelled": ("", "#9e9e9e"),
    "stopped": ("", "#9e9e9e"),
}
_WORDS: dict[Phase, str] = {
    "running": "",
    "done": "✔ done",
    "partial": "⚠ some failed",
    "failed": "✖ failed",
    "cancelled": "■ cancelled",
    # Stopped from outside: job.cancel(), a kernel interrupt, a timeout, an error.
    "stopped": "■ stopped",
}
_MUTED = "color:var(--jp-ui-font-color2,#616161)"
_ERROR = "color:var(--jp-error-color1,#d32f2f)"
_SMALL = "font-size:var(--jp-ui-font-size0,11px);line-height:1.5"


class _Auto:
    """Marker: let :meth:`NotebookProgress.open` decide what Cancel does."""


AUTO: Final = _Auto()
CancelAction = Callable[[], object] | None


# --- what to draw: pure functions of the tracker's state ------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    """Every value the widget shows; the widget sends only the fields that changed."""

    value: int
    bar_style: str
    bar_color: str | None
    label: str
    details: str
    active: str
    failures: str
    button: Literal["cancel", "cancelling", "hidden"]
    #: The whole state as one plain line (the text a viewer without widgets shows).
    plain: str


def final_phase(stats: Stats, *, interrupted: bool, cancel_requested: bool) -> Phase:
    """How a call ended, which sets the bar's colour and the closing word."""
    if cancel_requested:
        return "cancelled"
    if interrupted:
        return "stopped"
    if stats.cancelled:
        return "cancelled"
    if stats.failed and stats.failed >= stats.files:
        return "failed"
    if stats.failed:
        return "partial"
    return "done"


def short_cause(error: str, url: str) -> str:
    """The cause of a failure without the URL it starts with (the name is shown beside it)."""
    prefix = url + ": "
    cause = error[len(prefix) :] if error.startswith(prefix) else error
    return cause if len(cause) <= 160 else cause[:159] + "…"


def _pct(frac: float | None) -> str:
    return "…" if frac is None else f"{frac * 100:.0f}%"


def _mini_bar(frac: float | None) -> str:
    width = "0" if frac is None else f"{max(0.0, min(1.0, frac)) * 100:.1f}"
    return (
        "<div style='background:var(--jp-layout-color3,#e0e0e0);height:6px;border-radius:3px;"
        "margin-top:5px;overflow:hidden'><div style='height:100%;"
        f"width:{width}%;background:var(--jp-brand-color1,#1976d2)'></div></div>"
    )


def active_rows(active: Sequence[DownloadInfo], stats: Stats) -> str:
    """The running downloads: name, own bar, share or state, speed; then what else waits."""
    rows = []
    for info in active:
        frac = info.bytes / info.total if info.total else None
        if info.validating:
            state = "verifying"
        elif info.retries:
            state = f"retry {info.retries}"
        elif frac is None:
            state = format.size(info.bytes)
        else:
            state = _pct(frac)
        rows.append(
            f"<span title='{html.escape(info.url)}' style='overflow:hidden;"
            f"text-overflow:ellipsis;white-space:nowrap'>"
            f"{html.escape(format.short_name(info.path.name, 48))}</span>"
            f"{_mini_bar(frac)}<span style='text-align:right'>{html.escape(state)}</span>"
            f"<span style='text-align:right;{_MUTED}'>{html.escape(format.rate(info.speed))}</span>"
        )
    more = []
    if stats.running > len(active):
        more.append(f"{stats.running - len(active)} more running")
    if stats.queued:
        more.append(f"{stats.queued} queued")
    out = ""
    if rows:
        out += (
            "<div style='display:grid;grid-template-columns:minmax(6em,22em) minmax(4em,10em) "
            f"6em 7em;column-gap:0.8em;{_SMALL};font-family:var(--jp-code-font-family,monospace)'>"
            + "".join(rows)
            + "</div>"
        )
    if more:
        out += f"<div style='{_SMALL};{_MUTED}'>+ {' · '.join(more)}</div>"
    return out


def failure_rows(failures: Sequence[tuple[str, str]], failed: int) -> str:
    if not failed:
        return ""
    items = "".join(
        f"<div style='white-space:nowrap;overflow:hidden;text-overflow:ellipsis' "
        f"title='{html.escape(cause)}'>✖ <b>{html.escape(name)}</b> — {html.escape(cause)}</div>"
        for name, cause in failures
    )
    hidden = failed - len(failures)
    if hidden > 0:
        items += f"<div>… and {hidden} more failed (the results table lists them all)</div>"
    return f"<div style='{_SMALL};{_ERROR}'>{items}</div>"


def render(
    stats: Stats,
    active: Sequence[DownloadInfo],
    failures: Sequence[tuple[str, str]],
    *,
    failed: int,
    rows: int = 5,
    phase: Phase = "running",
    can_cancel: bool = True,
    cancel_requested: bool = False,
    frozen: int | None = None,
) -> View:
    """What the widget shows (pure: a test compares views, no kernel needed).

    ``active``: the running downloads (all of them: each counts towards the overall bar
    while sizes are unknown); the first ``rows`` get a line of their own. ``frozen``: keep
    the bar at this value (once downloads are being cancelled, where the bar had got to).
    """
    running = phase == "running"
    # Once stopped, count the files on disk: a cancelled file's size becomes what it had.
    stopped = phase in ("cancelled", "stopped")
    done = stats.completed + stats.skipped if stopped else stats.finished
    frac = fraction(stats, active)
    if frozen is not None:
        value = frozen
        frac = frozen / SCALE
    elif running:
        value = 0 if frac is None else round(frac * SCALE)
    elif stopped:
        frac = done / stats.files if stats.files else 0.0
        value = round(frac * SCALE)
    else:
        frac, value = 1.0, SCALE
    style, colour = _COLOURS[phase]
    label = f"{_pct(frac)} · {done} / {stats.files} files"
    if not running:
        label += f" · {_WORDS[phase]}"
    parts = [format.size(stats.bytes_done)]
    if stats.bytes_total is not None and not stopped:
        parts[0] += f" of {format.size(stats.bytes_total)}"
    if running:
        parts += [format.rate(stats.speed), f"ETA {format.duration(stats.eta)}"]
    else:
        parts.append(f"in {format.duration(stats.elapsed)}")
        if stats.completed:
            parts.append(f"{stats.completed} downloaded")
    for count, word in (
        (stats.skipped, "skipped"),
        (stats.failed, "failed"),
        (stats.cancelled, "cancelled"),
    ):
        if count:
            parts.append(f"{count} {word}")
    if stats.cancelled:
        parts.append("partial files kept: run again to resume")
    if running and not can_cancel:
        parts.append("to stop: interrupt the kernel (■)")
    details = f"<div style='{_SMALL};{_MUTED}'>{html.escape(' · '.join(parts))}</div>"
    button: Literal["cancel", "cancelling", "hidden"] = "hidden"
    if running and can_cancel:
        button = "cancelling" if cancel_requested else "cancel"
    plain = line(stats, active) if running else f"{_WORDS[phase]} · {' · '.join(parts)}"
    return View(
        value=value,
        bar_style=style,
        bar_color=colour,
        label=html.escape(label),
        details=details,
        active=active_rows(active[:rows], stats) if running else "",
        failures=failure_rows(failures, failed),
        button=button,
        plain=plain,
    )


# --- the widget ------------------------------------------------------------------------------


def _update(widget: Any, **values: Any) -> None:
    """Set only the traits whose value changed, in one comm message for this widget."""
    changed = {k: v for k, v in values.items() if getattr(widget, k) != v}
    if changed:
        with widget.hold_sync():
            for k, v in changed.items():
                setattr(widget, k, v)


def _shell() -> Any:
    """The running IPython shell, or None (plain Python: nothing to display into)."""
    try:
        from IPython.core.interactiveshell import InteractiveShell
    except ImportError:  # pragma: no cover - ipywidgets requires IPython
        return None
    return InteractiveShell.instance() if InteractiveShell.initialized() else None


def _display() -> Callable[..., Any]:
    from IPython.display import display

    return display


class NotebookProgress:
    """A live progress widget for one call of :func:`rheo_nb.fetch`, ``fetch_sync`` or ``start``.

    >>> progress = rheo_nb.NotebookProgress("raw data")
    >>> results = await rheo_nb.fetch(urls, dest="data", progress=progress)  # doctest: +SKIP

    Shows an overall bar (bytes when every size is known, else files), files done of
    total, skipped and failed counts, speed and ETA; the first ``rows`` running files with
    their own bar and speed; failures as they happen. The bar's colour tells running,
    done, some failed, all failed, and cancelled. At the end the widget shows the final
    summary, which also stays in the saved notebook as text.

    Its **Cancel** button works whenever the kernel's loop is free to handle the click:
    during an ``await rheo_nb.fetch(...)`` cell (it cancels the downloads; the call returns
    the results, the unfinished files marked cancelled) and for background jobs of
    :func:`rheo_nb.start` (``job.cancel()``). A blocking ``fetch_sync`` cell keeps the
    kernel busy, so no click can arrive: the button is hidden there and the widget says to
    interrupt the kernel (■) instead.

    Redraws happen on a timer every ``interval`` seconds on the loop that runs the
    downloads; a display object serves one call.
    """

    def __init__(self, title: str = "rheo_nb", *, rows: int = 5, interval: float = 0.1) -> None:
        self.title = title
        self.rows = rows
        self.interval = interval
        self.failures: deque[tuple[str, str]] = deque(maxlen=rows)
        self.failed = 0
        self._cancel: CancelAction | _Auto = AUTO
        self._cancel_requested = False
        self._manager: DownloadManager | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._subscriptions: list[Subscription] = []
        self._root: Any = None
        self._handle: Any = None
        self._shown_in: int | None = None
        self._view: View | None = None
        self._closed = False

    # --- the display protocol ----------------------------------------------------------------

    def show(self, *, cancel: CancelAction | _Auto = AUTO) -> None:
        """Put the widget in the current cell's output now, and say what Cancel does.

        :func:`rheo_nb.start` calls this on the caller's thread with ``cancel=job.cancel``,
        so the widget lands in the cell that started the job. ``cancel=None`` hides the
        button. Without a call, :meth:`open` shows the widget.
        """
        if not isinstance(cancel, _Auto):
            self._cancel = cancel
        if self._root is None:
            self._build()
        if self._handle is None:
            self._publish()

    def open(self, manager: DownloadManager) -> None:
        if self._manager is not None:
            raise RuntimeError("a NotebookProgress serves one call: create one per call")
        self._manager = manager
        self._loop = loop = asyncio.get_running_loop()
        if isinstance(self._cancel, _Auto):
            # A click is handled on the kernel's main thread: it can only reach downloads
            # that run there (await fetch). On a worker thread the caller blocks the kernel
            # (fetch_sync), and start() passes its own action to show().
            on_kernel_thread = threading.current_thread() is threading.main_thread()
            self._cancel = _canceller(manager, loop) if on_kernel_thread else None
        self._subscriptions.append(manager.on(EventType.FAILED, self._on_failed))
        self.show()
        self._draw()
        self._timer = loop.call_later(self.interval, self._tick)

    def close(self, results: Results, *, interrupted: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sub in self._subscriptions:
            sub.unsubscribe()
        if self._root is None:
            return
        stats = self._manager.tracker.stats() if self._manager is not None else _empty_stats()
        phase = final_phase(stats, interrupted=interrupted, cancel_requested=self._cancel_requested)
        frozen = None
        if phase in ("cancelled", "stopped") and self._view is not None:
            frozen = self._view.value
        view = render(
            stats, (), tuple(self.failures), failed=self.failed, phase=phase, frozen=frozen
        )
        self._apply(replace(view, plain=f"{_WORDS[phase]} · {results.summary()}"))
        self._republish()

    # --- notebook integration -----------------------------------------------------------------

    def _ipython_display_(self) -> None:
        shell = _shell()
        if self._handle is not None and shell is not None:
            if self._shown_in == shell.execution_count:
                return  # already in this cell's output
            # The same display id: the final update reaches this view too.
            _display()(self._bundle(), raw=True, display_id=self._handle.display_id)
            return
        self.show()

    def __repr__(self) -> str:
        return f"<NotebookProgress {self.title!r}: {self._view.plain if self._view else 'idle'}>"

    # --- internals ---------------------------------------------------------------------------

    def _build(self) -> None:
        self._bar = widgets.IntProgress(
            value=0,
            min=0,
            max=SCALE,
            description=self.title,
            bar_style="info",
            style={"description_width": "initial"},
            layout=widgets.Layout(flex="1 1 auto", width="auto", min_width="10em"),
        )
        self._label = widgets.HTML("starting…", layout=widgets.Layout(margin="0 0.6em"))
        self._button = widgets.Button(
            description="Cancel",
            icon="stop",
            tooltip="Stop the downloads; partial files are kept for a resume",
            layout=widgets.Layout(width="auto", display="none"),
        )
        self._button.on_click(self._on_click)
        self._details = widgets.HTML("")
        self._active = widgets.HTML("")
        self._failures = widgets.HTML("")
        self._root = widgets.VBox(
            [
                widgets.HBox(
                    [self._bar, self._label, self._button],
                    layout=widgets.Layout(align_items="center"),
                ),
                self._details,
                self._active,
                self._failures,
            ],
            layout=widgets.Layout(width="100%", max_width="60em"),
        )
        self._root.add_class("rheo-nb-progress")

    def _bundle(self, final_html: str | None = None) -> dict[str, Any]:
        plain = f"{self.title}: {self._view.plain if self._view else 'starting…'}"
        bundle: dict[str, Any] = {
            VIEW_MIME: {"version_major": 2, "version_minor": 0, "model_id": self._root.model_id},
            "text/plain": plain,
        }
        if final_html is not None:
            bundle["text/html"] = final_html
        return bundle

    def _publish(self) -> None:
        shell = _shell()
        if shell is None:
            return  # plain Python: the widget still works, there is just nowhere to show it
        self._handle = _display()(self._bundle(), raw=True, display_id=True)
        self._shown_in = shell.execution_count

    def _republish(self) -> None:
        """Replace the text fallback with the final summary: a saved notebook opened where
        widgets cannot render (no stored widget state, a static viewer) still reads well."""
        if self._handle is None or self._view is None:
            return
        v = self._view
        colour = {
            "success": "#388e3c",
            "warning": "#f57c00",
            "danger": "#d32f2f",
            "info": "#0097a7",
        }.get(v.bar_style, v.bar_color or "#9e9e9e")
        static = (
            "<div class='rheo-nb-progress-final'>"
            f"<div><b>{html.escape(self.title)}</b> "
            "<span style='display:inline-block;width:12em;height:0.8em;background:#e0e0e0;"
            "vertical-align:middle'><span style='display:block;height:100%;"
            f"width:{v.value * 100 / SCALE:.1f}%;background:{colour}'></span></span> "
            f"{v.label}</div>{v.details}{v.failures}</div>"
        )
        try:
            self._handle.update(self._bundle(static), raw=True)
        except Exception:  # the kernel is shutting down: the widget state still holds it all
            log.debug("could not update the progress display", exc_info=True)

    def _on_failed(self, event: Event) -> None:
        assert isinstance(event, Failed)
        self.failed += 1
        manager = self._manager
        unplanned = manager is not None and event.path == manager.dest
        name = format.short_name(event.url if unplanned else event.path.name, 60)
        self.failures.append((name, short_cause(event.error, event.url)))

    def _on_click(self, _button: Any) -> None:
        # Runs on the kernel's thread, maybe not the downloads' loop: only set a flag and
        # call the thread-safe action; the next redraw shows it.
        if self._cancel_requested or self._closed:
            return
        self._cancel_requested = True
        action = self._cancel
        if callable(action):
            try:
                action()
            except Exception:
                log.exception("cancelling the downloads failed")

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        try:
            self._draw()
        except Exception:  # a drawing bug must never stop the downloads
            log.exception("progress display failed to redraw")
        assert self._loop is not None
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _draw(self) -> None:
        assert self._manager is not None
        tracker = self._manager.tracker
        stats = tracker.stats()
        self._apply(
            render(
                stats,
                tracker.active(max(self.rows, stats.running)),
                tuple(self.failures),
                failed=self.failed,
                rows=self.rows,
                can_cancel=self._cancel is not None,
                cancel_requested=self._cancel_requested,
                # A cancelled file's partial bytes become its size: the bar would jump.
                frozen=self._view.value
                if self._view is not None and (stats.cancelled or self._cancel_requested)
                else None,
            )
        )

    def _apply(self, view: View) -> None:
        last = self._view
        self._view = view
        if last == view:
            return
        _update(self._bar, value=view.value, bar_style=view.bar_style)
        _update(self._bar.style, bar_color=view.bar_color)
        _update(self._label, value=view.label)
        _update(self._details, value=view.details)
        _update(self._active, value=view.active)
        _update(self._failures, value=view.failures)
        if last is None or last.button != view.button:
            _update(self._button.layout, display="none" if view.button == "hidden" else "")
            _update(
                self._button,
                disabled=view.button == "cancelling",
                description="Cancelling…" if view.button == "cancelling" else "Cancel",
            )


def _canceller(manager: DownloadManager, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Cancel every download of ``manager`` on its loop, from any thread."""

    def cancel() -> None:
        future = asyncio.run_coroutine_threadsafe(manager.cancel_all(), loop)
        future.add_done_callback(_log_failure)

    return cancel


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("cancelling the downloads failed", exc_info=future.exception())


def _empty_stats() -> Stats:
    return Stats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0)


__all__ = ["NotebookProgress", "View", "render"]
