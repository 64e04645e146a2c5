"""Progress as text on stderr: one self-rewriting line on a terminal, plain lines in logs."""

from __future__ import annotations

import asyncio
import shutil
import sys
from typing import TYPE_CHECKING, TextIO

from .. import format
from ..events import Event, EventType, Failed, Restarted, Retrying, Throttled
from . import view

if TYPE_CHECKING:
    from ..results import Results
    from . import Source


class TextProgress:
    """Text progress for terminals, scripts and CI logs.

    >>> rheo_nb.fetch_sync(urls, dest="data", progress="text")  # doctest: +SKIP
    >>> rheo_nb.fetch_sync(urls, progress=rheo_nb.TextProgress(sys.stdout))  # doctest: +SKIP

    On a TTY the line is redrawn in place every ``interval`` (0.1 s); elsewhere a plain
    line is printed every ``log_interval`` (10 s). Failures, retries, files that must
    start again from zero and origins slowed down (``example.org slowed to 2
    connections: 429``) are printed as they happen. The closing line says what was done
    out of what was asked, and how the call ended.

    ``failures_only=True`` prints failures and nothing else (the command line's ``-q``).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 0.1,
        log_interval: float = 10.0,
        failures_only: bool = False,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) and not failures_only
        self.interval = interval if self.tty else log_interval
        self.failures_only = failures_only
        self.width = shutil.get_terminal_size((100, 24)).columns
        self._manager: Source | None = None
        self._timer: asyncio.TimerHandle | None = None

    def open(self, manager: Source) -> None:
        self._manager = manager
        manager.on(EventType.FAILED, self._on_event)
        if self.failures_only:
            return
        manager.on(EventType.RETRYING, self._on_event)
        manager.on(EventType.RESTARTED, self._on_event)
        manager.on(EventType.THROTTLED, self._on_event)
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _name(self, download_id: str, url: str) -> str:
        assert self._manager is not None
        info = self._manager.tracker.downloads.get(download_id)
        if info is None:
            return url
        return format.shown_path(info.path, self._manager.dest, url)

    def _on_event(self, event: Event) -> None:
        assert self._manager is not None
        if isinstance(event, Failed):
            self._write(f"failed: {event.error}", newline=True)
        elif isinstance(event, Retrying):
            attempts = self._manager.options.retries + 1
            shown = self._name(event.download_id, event.url)
            note = view.retry_note(shown, event.attempt, event.delay, event.error, attempts)
            self._write(note, newline=True)
        elif isinstance(event, Restarted):
            shown = self._name(event.download_id, event.url)
            self._write(view.restart_note(shown, event.reason, event.discarded), newline=True)
        elif isinstance(event, Throttled):
            self._write(event.message, newline=True)

    def _tick(self) -> None:
        assert self._manager is not None
        stats = self._manager.stats
        text = view.line(stats, self._manager.tracker.active(stats.running))
        if self.tty and len(text) > self.width:
            # A wrapped line cannot be redrawn in place: keep it to the terminal's width.
            text = text[: self.width - 1] + "…"
        self._write(text, newline=not self.tty)
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _write(self, text: str, *, newline: bool) -> None:
        if self.tty:
            # Clear the progress line first, so a message never mixes with it.
            self.stream.write("\r\x1b[K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, results: Results, *, interrupted: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.failures_only:
            return
        if self._manager is not None:
            stats = self._manager.stats
            phase = view.final_phase(stats, interrupted=interrupted)
            self._write(view.final_line(stats, phase), newline=True)
        self._write(("interrupted: " if interrupted else "") + results.summary(), newline=True)
