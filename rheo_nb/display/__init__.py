"""Progress displays, and how ``progress=`` picks one.

A display is any object with two methods (this is the whole protocol)::

    def open(self, manager: Source) -> None
        # called on the manager's loop before the first download is added: subscribe
        # with manager.on(...), read manager.stats / manager.tracker on a timer
        # (loop.call_later), never per event
    def close(self, results: Results, *, interrupted: bool) -> None
        # called once at the end, on the same loop: draw the final state, stop timers;
        # interrupted is True when the call ended by an exception or a cancellation

and, optionally::

    def show(self, *, cancel: Callable[[], object] | None) -> None
        # start() calls it on the caller's thread before the job starts: show yourself
        # now (in the cell that started the job) and let a Cancel control call cancel()

For example, a display that logs each finished file::

    class Log:
        def open(self, manager):
            manager.on("completed", lambda e: print("done:", e.path.name))
        def close(self, results, *, interrupted):
            print(results.summary())

    await rheo_nb.fetch(urls, dest="data", progress=Log())

``manager`` is the call's :class:`~rheo_nb.DownloadManager`, or for a call on a Dask
cluster (``cluster=``) the call's local view of its shards; both are a :class:`Source`.
On a cluster, ``failed``, ``retrying`` and ``restarted`` events arrive as they happen,
``completed``, ``skipped`` and ``cancelled`` ones as each shard ends, and there are no
per-file ``queued``, ``started`` or ``progress`` events: read the totals instead.

What a display shows is computed in :mod:`rheo_nb.display.view` (pure functions of the
tracker's state: the bar, the text line, the widget's view), so a display of your own can
draw the same figures. Displays hold no download logic, and nothing in the engine imports
a display.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..errors import OptionError
from .text import TextProgress

if TYPE_CHECKING:
    from ..events import EventType, Handler, Subscription
    from ..objstore import ObjectPath
    from ..options import Options
    from ..results import Results
    from ..tracker import DownloadInfo, Stats


class TrackerView(Protocol):
    """The state a display reads on its timer (a :class:`~rheo_nb.tracker.Tracker`)."""

    @property
    def downloads(self) -> Mapping[str, DownloadInfo]: ...
    def stats(self) -> Stats: ...
    def active(self, limit: int = 5) -> list[DownloadInfo]: ...


class Source(Protocol):
    """What a display watches: a :class:`~rheo_nb.DownloadManager`, or the local view of a
    call's shards on a Dask cluster, which keeps the same totals, events and results."""

    options: Options

    @property
    def dest(self) -> Path | ObjectPath: ...
    @property
    def tracker(self) -> TrackerView: ...
    @property
    def stats(self) -> Stats: ...
    def on(self, event_type: EventType | str | None, handler: Handler) -> Subscription: ...
    def results(self, ids: list[str] | None = None) -> Results: ...
    async def cancel_all(self) -> None: ...


@runtime_checkable
class Display(Protocol):
    def open(self, manager: Source) -> None: ...
    def close(self, results: Results, *, interrupted: bool) -> None: ...


ProgressArg = bool | None | Literal["auto", "text", "notebook"] | Display


def in_notebook() -> bool:
    """True inside a Jupyter kernel whose frontend can show widgets."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell: Any = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def choose(progress: ProgressArg) -> Display | None:
    """The display ``progress=`` asks for: ``"auto"``/``True`` (widgets in a notebook when
    ipywidgets is installed, else text on stderr), ``"text"``, ``"notebook"``,
    ``False``/``None`` (none), or a display object."""
    if progress is False or progress is None:
        return None
    if isinstance(progress, Display):
        return progress
    if progress in (True, "auto"):
        if in_notebook():
            try:
                from .notebook import NotebookProgress

                return NotebookProgress()
            except ImportError:  # no ipywidgets: text still works
                pass
        return TextProgress()
    if progress == "text":
        return TextProgress()
    if progress == "notebook":
        from .notebook import NotebookProgress

        return NotebookProgress()
    raise OptionError(
        f"progress={progress!r}: use 'auto', 'text', 'notebook', False, or an object with "
        "open(manager) and close(results, *, interrupted) methods"
    )


__all__ = ["Display", "Source", "TextProgress", "TrackerView", "choose", "in_notebook"]
