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
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

import ipywidgets as widgets

from .. import format
from ..events import Event, EventType, Failed, Restarted, Subscription, Throttled
from ..tracker import Stats
from . import view
from .view import SCALE, WORDS, View, final_phase, render

if TYPE_CHECKING:
    from ..results import Results
    from . import Source

log = logging.getLogger("rheo_nb")

VIEW_MIME: Final = "application/vnd.jupyter.widget-view+json"


class _Auto:
    """Marker: let :meth:`NotebookProgress.open` decide what Cancel does."""


AUTO: Final = _Auto()
CancelAction = Callable[[], object] | None


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
        #: Files that had to start again from zero, origins slowed down or paused: the
        #: last few, said in words.
        self.notices: deque[str] = deque(maxlen=rows)
        self._cancel: CancelAction | _Auto = AUTO
        self._cancel_requested = False
        self._manager: Source | None = None
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

    def open(self, manager: Source) -> None:
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
        self._subscriptions.append(manager.on(EventType.RESTARTED, self._on_restarted))
        self._subscriptions.append(manager.on(EventType.THROTTLED, self._on_throttled))
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
        manager = self._manager
        stats = manager.tracker.stats() if manager is not None else _empty_stats()
        phase = final_phase(stats, interrupted=interrupted, cancel_requested=self._cancel_requested)
        drawn = render(
            stats,
            (),
            tuple(self.failures),
            failed=self.failed,
            phase=phase,
            notices=tuple(self.notices),
            dest=manager.dest if manager is not None else None,
        )
        self._apply(replace(drawn, plain=f"{WORDS[phase]} · {results.summary()}"))
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
        self._notices = widgets.HTML("")
        self._failures = widgets.HTML("")
        self._root = widgets.VBox(
            [
                widgets.HBox(
                    [self._bar, self._label, self._button],
                    layout=widgets.Layout(align_items="center"),
                ),
                self._details,
                self._active,
                self._notices,
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
            f"{v.label}</div>{v.details}{v.notices}{v.failures}</div>"
        )
        try:
            self._handle.update(self._bundle(static), raw=True)
        except Exception:  # the kernel is shutting down: the widget state still holds it all
            log.debug("could not update the progress display", exc_info=True)

    def _on_failed(self, event: Event) -> None:
        assert isinstance(event, Failed)
        self.failed += 1
        dest = self._manager.dest if self._manager is not None else None
        shown = format.shown_path(event.path, dest, event.url)
        self.failures.append((shown, view.short_cause(event.error, event.url)))

    def _on_restarted(self, event: Event) -> None:
        assert isinstance(event, Restarted)
        manager = self._manager
        info = manager.tracker.downloads.get(event.download_id) if manager is not None else None
        shown = (
            format.shown_path(info.path, manager.dest, event.url)
            if info is not None and manager is not None
            else format.short_name(event.url, 60)
        )
        self.notices.append(f"↻ {view.restart_note(shown, event.reason, event.discarded)}")

    def _on_throttled(self, event: Event) -> None:
        assert isinstance(event, Throttled)
        self.notices.append(view.throttle_note(event))

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
                notices=tuple(self.notices),
                dest=self._manager.dest,
            )
        )

    def _apply(self, drawn: View) -> None:
        last = self._view
        self._view = drawn
        if last == drawn:
            return
        _update(self._bar, value=drawn.value, bar_style=drawn.bar_style)
        _update(self._bar.style, bar_color=drawn.bar_color)
        _update(self._label, value=drawn.label)
        _update(self._details, value=drawn.details)
        _update(self._active, value=drawn.active)
        _update(self._notices, value=drawn.notices)
        _update(self._failures, value=drawn.failures)
        if last is None or last.button != drawn.button:
            _update(self._button.layout, display="none" if drawn.button == "hidden" else "")
            _update(
                self._button,
                disabled=drawn.button == "cancelling",
                description="Cancelling…" if drawn.button == "cancelling" else "Cancel",
            )


def _canceller(manager: Source, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
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


__all__ = ["NotebookProgress"]
