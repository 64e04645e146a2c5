"""Per-file outcomes and :class:`Results`, their list-like container with a table view."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, overload

from . import format
from .errors import DownloadsFailed
from .events import Status
from .items import Outcome

if TYPE_CHECKING:
    from .objstore import ObjectPath

#: Rows shown by ``_repr_html_`` and ``repr`` before the rest is summarised as a count.
MAX_ROWS = 30

# Plain symbols with a colour, not emoji: they show in any font, a CI screenshot included.
_ICONS = {
    Status.COMPLETED: "<span style='color:#388e3c'>✔</span>",
    Status.SKIPPED: "<span style='color:#1976d2'>↷</span>",
    Status.FAILED: "<span style='color:#d32f2f'>✖</span>",
    Status.CANCELLED: "<span style='color:#757575'>■</span>",
    Status.QUEUED: "…",
    Status.RUNNING: "▸",
}


class Results(Sequence[Outcome]):
    """The outcomes of one call, one per file in the order given (duplicates once).

    >>> results = rheo_nb.fetch_sync(urls, dest="data")        # doctest: +SKIP
    >>> results.ok, results.failed                               # doctest: +SKIP
    >>> results.raise_for_errors()                               # doctest: +SKIP
    >>> rheo_nb.fetch_sync(results.failed, dest="data")          # re-run only those

    In a notebook a ``Results`` renders as a table. ``dest``: the folder (or the
    ``s3://bucket/prefix`` of a bucket) the paths are relative to, in tables
    (``raw/2024/one.bin``); without it a table shows file names.
    """

    __slots__ = ("_outcomes", "dest")

    def __init__(
        self, outcomes: Sequence[Outcome] = (), *, dest: Path | ObjectPath | None = None
    ) -> None:
        self._outcomes = tuple(outcomes)
        self.dest = dest

    def _like(self, outcomes: Sequence[Outcome]) -> Results:
        return Results(outcomes, dest=self.dest)

    @overload
    def __getitem__(self, index: int) -> Outcome: ...
    @overload
    def __getitem__(self, index: slice) -> Results: ...
    def __getitem__(self, index: int | slice) -> Outcome | Results:
        if isinstance(index, slice):
            return self._like(self._outcomes[index])
        return self._outcomes[index]

    def __len__(self) -> int:
        return len(self._outcomes)

    def __iter__(self) -> Iterator[Outcome]:
        return iter(self._outcomes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Results) and self._outcomes == other._outcomes

    __hash__ = None  # type: ignore[assignment]

    @property
    def ok(self) -> Results:
        """Completed and skipped files: the ones on disk."""
        return self._like([o for o in self._outcomes if o.status.ok])

    @property
    def failed(self) -> Results:
        """Failed and cancelled files: pass them to ``fetch`` again to retry just those."""
        return self._like([o for o in self._outcomes if not o.status.ok])

    @property
    def paths(self) -> list[Path | ObjectPath]:
        """Paths of the files on disk (completed and skipped); for a bucket, the objects'
        ``s3://`` URLs, which pandas, Dask and fsspec open as they are. An archive removed
        once extracted (``extract_remove``) is gone: what it became is listed instead."""
        return [o.on_disk for o in self._outcomes if o.status.ok]

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self._outcomes)

    def counts(self) -> dict[str, int]:
        """How many files ended each way, e.g. ``{'completed': 12, 'failed': 1}``."""
        counts = Counter(o.status for o in self._outcomes)
        return {s.value: counts[s] for s in Status if counts[s]}

    def raise_for_errors(self) -> Results:
        """Raise :class:`~rheo_nb.DownloadsFailed` listing every failure; else return self."""
        failures = self.failed
        if failures:
            raise DownloadsFailed(failures)
        return self

    def summary(self) -> str:
        n = len(self._outcomes)
        counts = ", ".join(f"{c} {s}" for s, c in self.counts().items()) or "nothing to do"
        elapsed = max((o.elapsed for o in self._outcomes), default=0.0)
        return (
            f"{n} file{'s' if n != 1 else ''}: {counts} "
            f"({format.size(self.bytes)}, longest {format.duration(elapsed)})"
        )

    def __repr__(self) -> str:
        lines = [f"<Results {self.summary()}>"]
        problems = self.failed
        lines += [f"  {o.status}: {o.error or o.url}" for o in problems[:MAX_ROWS]]
        if len(problems) > MAX_ROWS:
            lines.append(f"  … {len(problems) - MAX_ROWS} more not ok")
        return "\n".join(lines)

    def _rows(self, limit: int) -> tuple[list[Outcome], str]:
        """The rows a table shows (problems first: they are what a reader needs to see in
        a long list) and a note on the rest, e.g. "… and 15 more (10 completed, 5 skipped)"."""
        rows = sorted(self._outcomes, key=lambda o: o.status.ok)
        shown, hidden = rows[:limit], rows[limit:]
        if not hidden:
            return shown, ""
        counts = Counter(o.status for o in hidden)
        kinds = ", ".join(f"{counts[s]} {s}" for s in Status if counts[s])
        return shown, f"… and {len(hidden)} more ({kinds})"

    def _name(self, o: Outcome, width: int) -> str:
        """The file column: the path relative to ``dest``; nothing for an item refused
        before any request (it never had a path: its error names the URL)."""
        if self.dest is not None and o.path == self.dest:
            return "–"
        return format.shown_path(o.path, self.dest, o.url, width)

    def _error_text(self, o: Outcome) -> str:
        """The error without the URL it starts with when the row names the file already."""
        error = o.error or ""
        prefix = o.url + ": "
        refused = self.dest is not None and o.path == self.dest
        return error[len(prefix) :] if error.startswith(prefix) and not refused else error

    def _error_title(self, o: Outcome) -> str:
        if not o.error or self._error_text(o) == o.error:
            return ""
        return f" title='{html.escape(o.error)}'"

    def table(self, max_rows: int = MAX_ROWS, *, summary: bool = True) -> str:
        """The outcomes as a plain-text table, problems first, for terminals and logs;
        the first line is the :meth:`summary` unless ``summary=False``.

        >>> print(results.table())  # doctest: +SKIP
        """
        shown, more = self._rows(max_rows)
        cells = [("", "file", "size", "time", "error")] + [
            (
                str(o.status),
                self._name(o, 40),
                format.size(o.bytes),
                format.duration(o.elapsed),
                self._error_text(o),
            )
            for o in shown
        ]
        w = [max(len(row[i]) for row in cells) for i in range(4)]
        lines = [self.summary()] if summary else []
        lines += [
            f"{st:<{w[0]}}  {name:<{w[1]}}  {sz:>{w[2]}}  {tm:>{w[3]}}  {err}".rstrip()
            for st, name, sz, tm, err in cells
        ]
        if more:
            lines.append(more)
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        shown, note = self._rows(MAX_ROWS)
        esc = html.escape
        body = "".join(
            "<tr>"
            f"<td title='{esc(o.status)}'>{_ICONS[o.status]}</td>"
            f"<td class='l' title='{esc(o.url)}'>{esc(self._name(o, 48))}</td>"
            f"<td>{esc(format.size(o.bytes))}</td>"
            f"<td>{esc(format.duration(o.elapsed))}</td>"
            f"<td class='e'{self._error_title(o)}>{esc(self._error_text(o))}</td>"
            "</tr>"
            for o in shown
        )
        more = f"<tr><td colspan='5' class='l'>{esc(note)}</td></tr>" if note else ""
        return (
            f"<div class='rheo-nb-results'><style>{_CSS}</style>"
            f"<p><b>rheo_nb</b> · {esc(self.summary())}</p>"
            "<table><thead><tr><th></th><th class='l'>file</th><th>size</th>"
            "<th>time</th><th class='l'>error</th></tr></thead>"
            f"<tbody>{body}{more}</tbody></table></div>"
        )


#: Scoped to the table's class, and specific enough to win over JupyterLab's own table
#: style; a viewer that drops <style> still shows a plain table.
_CSS = (
    "div.rheo-nb-results p{margin:0 0 4px}"
    "div.rheo-nb-results table td,div.rheo-nb-results table th{padding:1px 8px;"
    "vertical-align:top;white-space:nowrap}"
    "div.rheo-nb-results table td.l,div.rheo-nb-results table th.l{text-align:left}"
    "div.rheo-nb-results table td.e{text-align:left;white-space:normal;max-width:48em}"
)
