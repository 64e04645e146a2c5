"""Progress as text on stderr: one self-rewriting line on a terminal, plain lines in logs."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from .. import format
from ..events import Event, EventType, Failed
from ..tracker import DownloadInfo, Stats

if TYPE_CHECKING:
    from ..manager import DownloadManager
    from ..results import Results

BAR_WIDTH = 20


def bar(fraction: float | None, width: int = BAR_WIDTH) -> str:
    if fraction is None:
        return "▕" + "·" * width + "▏"
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "▕" + "█" * filled + "░" * (width - filled) + "▏"


def fraction(stats: Stats, running: Sequence[DownloadInfo] = ()) -> float | None:
    """Share done: by bytes when every size is known, else by files, where each running
    file of known size counts for its share received (so the bar moves before the first
    file finishes). ``running``: the running downloads, ``tracker.active(stats.running)``."""
    if stats.bytes_total:
        return min(1.0, stats.bytes_done / stats.bytes_total)
    if stats.files:
        partial = sum(min(1.0, info.bytes / info.total) for info in running if info.total)
        return min(1.0, (stats.finished + partial) / stats.files)
    return None


def line(stats: Stats, running: Sequence[DownloadInfo] = ()) -> str:
    """One line of progress, e.g.
    ``▕██████░░░░▏ 61% 12/20 files · 48.0 MiB/78.7 MiB · 9.8 MiB/s · ETA 3.1s · 1 failed``."""
    frac = fraction(stats, running)
    parts = [
        f"{bar(frac)} {'  ?' if frac is None else f'{frac * 100:3.0f}'}% "
        f"{stats.finished}/{stats.files} files",
        f"{format.size(stats.bytes_done)}"
        + (f"/{format.size(stats.bytes_total)}" if stats.bytes_total is not None else ""),
        format.rate(stats.speed),
        f"ETA {format.duration(stats.eta)}",
    ]
    if stats.skipped:
        parts.append(f"{stats.skipped} skipped")
    if stats.failed:
        parts.append(f"{stats.failed} failed")
    if stats.cancelled:
        parts.append(f"{stats.cancelled} cancelled")
    return " · ".join(parts)


class TextProgress:
    """Text progress for terminals, scripts and CI logs.

    >>> rheo_nb.fetch_sync(urls, dest="data", progress="text")  # doctest: +SKIP
    >>> rheo_nb.fetch_sync(urls, progress=rheo_nb.TextProgress(sys.stdout))  # doctest: +SKIP

    On a TTY the line is redrawn in place every ``interval`` (0.1 s); elsewhere a plain
    line is printed every ``log_interval`` (10 s). Failures are printed as they happen.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval: float = 0.1,
        log_interval: float = 10.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.interval = interval if self.tty else log_interval
        self.width = shutil.get_terminal_size((100, 24)).columns
        self._manager: DownloadManager | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._drawn = False

    def open(self, manager: DownloadManager) -> None:
        self._manager = manager
        manager.on(EventType.FAILED, self._on_failed)
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _on_failed(self, event: Event) -> None:
        assert isinstance(event, Failed)
        self._write(f"failed: {event.error}", newline=True)

    def _tick(self) -> None:
        assert self._manager is not None
        stats = self._manager.stats
        text = line(stats, self._manager.tracker.active(stats.running))
        if self.tty and len(text) > self.width:
            # A wrapped line cannot be redrawn in place: keep it to the terminal's width.
            text = text[: self.width - 1] + "…"
        self._write(text, newline=not self.tty)
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _write(self, text: str, *, newline: bool) -> None:
        if self.tty:
            # Clear the progress line first, so a message never mixes with it.
            self.stream.write("\r\x1b[K" + text + ("\n" if newline else ""))
            self._drawn = not newline
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self, results: Results, *, interrupted: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._manager is not None:
            self._write(line(self._manager.stats), newline=True)
        self._write(("interrupted: " if interrupted else "") + results.summary(), newline=True)
