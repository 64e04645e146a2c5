"""Per-file outcomes and :class:`Results`, their list-like container with a table view."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

from . import format
from .errors import DownloadsFailed
from .events import Status
from .items import File

#: Rows shown by ``_repr_html_`` and ``repr`` before the rest is summarised as a count.
MAX_ROWS = 30

_ICONS = {
    Status.COMPLETED: "✅",
    Status.SKIPPED: "⏭️",
    Status.FAILED: "❌",
    Status.CANCELLED: "⏹️",
    Status.QUEUED: "…",
    Status.RUNNING: "⏳",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one file. ``url`` is masked (safe to show); ``error`` is None
    unless the download failed or was cancelled."""

    url: str
    path: Path
    status: Status
    bytes: int
    elapsed: float
    error: str | None = None
    download_id: str = ""
    file: File = field(default_factory=lambda: File(""), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status.ok


class Results(Sequence[Outcome]):
    """The outcomes of one call, one per file in the order given (duplicates once).

    >>> results = rheo_nb.fetch_sync(urls, dest="data")        # doctest: +SKIP
    >>> results.ok, results.failed                               # doctest: +SKIP
    >>> results.raise_for_errors()                               # doctest: +SKIP
    >>> rheo_nb.fetch_sync(results.failed, dest="data")          # re-run only those

    In a notebook a ``Results`` renders as a table.
    """

    __slots__ = ("_outcomes",)

    def __init__(self, outcomes: Sequence[Outcome] = ()) -> None:
        self._outcomes = tuple(outcomes)

    @overload
    def __getitem__(self, index: int) -> Outcome: ...
    @overload
    def __getitem__(self, index: slice) -> Results: ...
    def __getitem__(self, index: int | slice) -> Outcome | Results:
        if isinstance(index, slice):
            return Results(self._outcomes[index])
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
        return Results([o for o in self._outcomes if o.status.ok])

    @property
    def failed(self) -> Results:
        """Failed and cancelled files: pass them to ``fetch`` again to retry just those."""
        return Results([o for o in self._outcomes if not o.status.ok])

    @property
    def paths(self) -> list[Path]:
        """Paths of the files on disk (completed and skipped)."""
        return [o.path for o in self._outcomes if o.status.ok]

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self._outcomes)

    def counts(self) -> dict[Status, int]:
        counts = Counter(o.status for o in self._outcomes)
        return {s: counts[s] for s in Status if counts[s]}

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

    def _repr_html_(self) -> str:
        # Problems first: they are what a reader needs to see in a long list.
        rows = sorted(self._outcomes, key=lambda o: o.status.ok)
        shown = rows[:MAX_ROWS]
        esc = html.escape
        body = "".join(
            "<tr>"
            f"<td title='{esc(o.status)}'>{_ICONS[o.status]}</td>"
            f"<td style='text-align:left' title='{esc(o.url)}'>"
            f"{esc(format.short_name(o.path.name, 48))}</td>"
            f"<td style='text-align:right'>{esc(format.size(o.bytes))}</td>"
            f"<td style='text-align:right'>{esc(format.duration(o.elapsed))}</td>"
            f"<td style='text-align:left'>{esc(o.error or '')}</td>"
            "</tr>"
            for o in shown
        )
        hidden = len(rows) - len(shown)
        more = (
            f"<tr><td colspan='5' style='text-align:left'>… and {hidden} more</td></tr>"
            if hidden
            else ""
        )
        return (
            "<div class='rheo-nb-results'>"
            f"<p><b>rheo_nb</b> · {esc(self.summary())}</p>"
            "<table><thead><tr><th></th><th style='text-align:left'>file</th><th>size</th>"
            "<th>time</th><th style='text-align:left'>error</th></tr></thead>"
            f"<tbody>{body}{more}</tbody></table></div>"
        )
