"""What a progress display shows, as pure functions of the tracker's state.

The text line (:mod:`rheo_nb.display.text`) and the widget (:mod:`rheo_nb.display.notebook`)
only draw what is computed here, so every figure they show can be tested without a
terminal, a kernel or ipywidgets.

Progress is *done out of asked*: the share of the bytes asked for that are on disk when
every size is known, else the share of the files done (completed or skipped), each running
file counting for its share received. A failed or interrupted batch never ends at 100%.

>>> from rheo_nb.display.view import line
>>> print(line(manager.stats))  # doctest: +SKIP
▕████████░░░░░░░░░░░░▏  40% 4/10 files · 48.0 MiB/120.0 MiB · 9.8 MiB/s · ETA 7.3s
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from .. import format
from ..events import Throttled
from ..tracker import ClusterStats, DownloadInfo, Stats

BAR_WIDTH: Final = 20
#: The widget's bar counts in thousandths: finer steps would only cost messages.
SCALE: Final = 1000

Phase = Literal["running", "done", "partial", "failed", "cancelled", "stopped"]

#: The closing word of each phase.
WORDS: dict[Phase, str] = {
    "running": "",
    "done": "✔ done",
    "partial": "⚠ some failed",
    "failed": "✖ failed",
    "cancelled": "■ cancelled",
    # Stopped from outside: job.cancel(), a kernel interrupt, Ctrl-C, a timeout, an error.
    "stopped": "■ stopped",
}

#: bar_style and bar colour of each phase (ipywidgets has no grey style: cancelled sets one).
COLOURS: dict[Phase, tuple[str, str | None]] = {
    "running": ("info", None),
    "done": ("success", None),
    "partial": ("warning", None),
    "failed": ("danger", None),
    "cancelled": ("", "#9e9e9e"),
    "stopped": ("", "#9e9e9e"),
}

_MUTED = "color:var(--jp-ui-font-color2,#616161)"
_ERROR = "color:var(--jp-error-color1,#d32f2f)"
_WARN = "color:var(--jp-warn-color1,#e65100)"
_SMALL = "font-size:var(--jp-ui-font-size0,11px);line-height:1.5"


# --- figures ---------------------------------------------------------------------------------


def fraction(stats: Stats, running: Sequence[DownloadInfo] = ()) -> float | None:
    """Share of what was asked that is done, or None before anything is known.

    By bytes when every size is known; else by files done (completed or skipped), where
    each running file of known size counts for its share received, so the bar moves before
    the first file finishes. ``running``: the running downloads,
    ``tracker.active(stats.running)``. Failed and cancelled files count for what they left
    on disk, never for their whole size.
    """
    if stats.bytes_total:
        return min(1.0, stats.bytes_done / stats.bytes_total)
    if stats.files:
        partial = sum(min(1.0, info.bytes / info.total) for info in running if info.total)
        return min(1.0, (stats.done + partial) / stats.files)
    return None


def bar(share: float | None, width: int = BAR_WIDTH) -> str:
    """``▕██████░░░░▏``; an unknown share draws dots."""
    if share is None:
        return "▕" + "·" * width + "▏"
    filled = int(max(0.0, min(1.0, share)) * width)  # never a full bar before the end
    return "▕" + "█" * filled + "░" * (width - filled) + "▏"


def percent(share: float | None) -> str:
    """``'61%'``; never rounds up to 100% before everything is done."""
    if share is None:
        return "?%"
    value = int(max(0.0, min(1.0, share)) * 100)
    return f"{value}%"


def _bytes(stats: Stats) -> str:
    done = format.size(stats.bytes_done)
    return done if stats.bytes_total is None else f"{done}/{format.size(stats.bytes_total)}"


def _counts(stats: Stats) -> list[str]:
    return [
        f"{count} {word}"
        for count, word in (
            (stats.skipped, "skipped"),
            (stats.failed, "failed"),
            (stats.cancelled, "cancelled"),
        )
        if count
    ]


def cluster(c: ClusterStats, *, running: bool = True) -> str:
    """The line of a call on a Dask cluster: ``2/2 workers busy · 3/8 shards done``; at
    the end, ``8/8 shards done``. A shard started again after its worker died is a rerun."""
    total = "?" if c.shards is None else str(c.shards)
    parts = [f"{c.busy}/{c.workers} workers busy"] if running else []
    parts.append(f"{c.shards_done}/{total} shards done")
    if c.reruns:
        parts.append(f"{c.reruns} rerun{'s' if c.reruns != 1 else ''}")
    return " · ".join(parts)


def _cluster(stats: Stats, *, running: bool) -> list[str]:
    return [] if stats.cluster is None else [cluster(stats.cluster, running=running)]


def line(stats: Stats, running: Sequence[DownloadInfo] = ()) -> str:
    """One line of progress while downloads run, e.g.
    ``▕████████████░░░░░░░░▏  61% 12/20 files · 48.0 MiB/78.7 MiB · 9.8 MiB/s · ETA 3.1s``
    (and, on a cluster, ``· 2/2 workers busy · 3/8 shards done``); while an archive is
    being extracted, ``· train.tar.gz: extracting 120/400`` too.
    """
    share = fraction(stats, running)
    parts = [
        f"{bar(share)} {percent(share):>4} {stats.done}/{stats.files} files",
        _bytes(stats),
        format.rate(stats.speed),
        f"ETA {format.duration(stats.eta)}",
        *_counts(stats),
        *_cluster(stats, running=True),
    ]
    unpacking = next((info for info in running if info.extracting is not None), None)
    if unpacking is not None:
        parts.append(f"{unpacking.path.name}: {extracting(unpacking)}")
    return " · ".join(parts)


def extracting(info: DownloadInfo) -> str:
    """``extracting 120/400`` (members done of total), ``extracting 120`` while the total
    is unknown (a tar is read once, front to back); '' when it is not being extracted."""
    if info.extracting is None:
        return ""
    members, total = info.extracting
    return f"extracting {members}/{total}" if total is not None else f"extracting {members}"


def final_line(stats: Stats, phase: Phase) -> str:
    """The closing line: what was done out of what was asked, and how it ended, e.g.
    ``▕█████░░░░░░░░░░░░░░░▏  28% 0/1 files · 1.7 GiB/6.0 GiB · 1 cancelled · ■ stopped``.
    """
    share = 1.0 if phase == "done" else fraction(stats)
    parts = [
        f"{bar(share)} {percent(share):>4} {stats.done}/{stats.files} files",
        _bytes(stats),
        f"in {format.duration(stats.elapsed)}",
        *_counts(stats),
        *_cluster(stats, running=False),
        WORDS[phase],
    ]
    return " · ".join(parts)


def final_phase(stats: Stats, *, interrupted: bool, cancel_requested: bool = False) -> Phase:
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


# --- names and notes -------------------------------------------------------------------------


def short_cause(error: str, url: str) -> str:
    """The cause of a failure without the URL it starts with (the name is shown beside it)."""
    prefix = url + ": "
    cause = error[len(prefix) :] if error.startswith(prefix) else error
    return cause if len(cause) <= 160 else cause[:159] + "…"


def retry_note(
    shown: str, failed_attempts: int, delay: float, cause: str, attempts: int | None = None
) -> str:
    """``retrying flaky.bin in 0.2s (attempt 2 of 4): HTTP 503 Service Unavailable``.

    ``failed_attempts``: attempts made so far (:attr:`rheo_nb.Retrying.attempt`);
    ``attempts``: how many there may be in all (``retries + 1``).
    """
    of = f" of {attempts}" if attempts else ""
    when = f"in {format.duration(delay)}" if delay >= 0.05 else "now"
    return f"retrying {shown} {when} (attempt {failed_attempts + 1}{of}): {cause}"


def restart_note(shown: str, reason: str, discarded: int) -> str:
    """``restarting x.bin: the server does not support resume (12.0 MiB discarded)``."""
    lost = f" ({format.size(discarded)} discarded)" if discarded else ""
    return f"restarting {shown}: {reason}{lost}"


# --- the widget's view -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    """Every value the widget shows; the widget sends only the fields that changed."""

    value: int
    bar_style: str
    bar_color: str | None
    label: str
    details: str
    active: str
    notices: str
    failures: str
    button: Literal["cancel", "cancelling", "hidden"]
    #: The whole state as one plain line (the text a viewer without widgets shows).
    plain: str


def _mini_bar(share: float | None) -> str:
    width = "0" if share is None else f"{max(0.0, min(1.0, share)) * 100:.1f}"
    return (
        "<div style='background:var(--jp-layout-color3,#e0e0e0);height:6px;border-radius:3px;"
        "margin-top:5px;overflow:hidden'><div style='height:100%;"
        f"width:{width}%;background:var(--jp-brand-color1,#1976d2)'></div></div>"
    )


def _row_state(info: DownloadInfo) -> str:
    share = info.bytes / info.total if info.total else None
    if info.extracting is not None:
        return extracting(info)
    if info.validating:
        return "verifying"
    if info.retries:
        return f"retry {info.retries}"
    state = format.size(info.bytes) if share is None else percent(share)
    return f"↻ {state}" if info.restarts else state


def active_rows(
    active: Sequence[DownloadInfo], stats: Stats, dest: Path | str | None = None
) -> str:
    """The running downloads: name, own bar, share or state, speed; then what else waits."""
    rows = []
    for info in active:
        share = info.bytes / info.total if info.total else None
        if info.extracting is not None:  # the bar shows the members now, not the bytes
            members, total = info.extracting
            share = members / total if total else None
        rows.append(
            f"<span title='{html.escape(info.url)}' style='overflow:hidden;"
            f"text-overflow:ellipsis;white-space:nowrap'>"
            f"{html.escape(format.shown_path(info.path, dest, info.url, 48))}</span>"
            f"{_mini_bar(share)}<span style='text-align:right'>"
            f"{html.escape(_row_state(info))}</span>"
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


def throttle_note(event: Throttled) -> str:
    """``⇣ example.org slowed to 2 connections: 429``: how rheo_nb answered an origin
    that pushed back (``⇡`` when it grows back), in a few words."""
    mark = "⇡" if event.concurrency > event.previous else "⇣"
    return f"{mark} {event.message}"


def notice_rows(notices: Sequence[str]) -> str:
    """Things worth knowing that are not failures, each with its mark: a file restarting
    from zero (``↻``), an origin slowed down or paused (:func:`throttle_note`)."""
    if not notices:
        return ""
    items = "".join(
        f"<div style='white-space:nowrap;overflow:hidden;text-overflow:ellipsis' "
        f"title='{html.escape(text)}'>{html.escape(text)}</div>"
        for text in notices
    )
    return f"<div style='{_SMALL};{_WARN}'>{items}</div>"


def failure_rows(failures: Sequence[tuple[str, str]], failed: int) -> str:
    if not failed:
        return ""
    items = "".join(
        f"<div style='white-space:nowrap;overflow:hidden;text-overflow:ellipsis' "
        f"title='{html.escape(cause)}'>✖ <b>{html.escape(shown)}</b> — {html.escape(cause)}</div>"
        for shown, cause in failures
    )
    hidden = failed - len(failures)
    if hidden > 0:
        items += f"<div>… and {hidden} more failed (the results table lists them all)</div>"
    return f"<div style='{_SMALL};{_ERROR}'>{items}</div>"


def _details(stats: Stats, phase: Phase, can_cancel: bool) -> str:
    running = phase == "running"
    parts = [
        format.size(stats.bytes_done)
        + ("" if stats.bytes_total is None else f" of {format.size(stats.bytes_total)}")
    ]
    if running:
        parts += [format.rate(stats.speed), f"ETA {format.duration(stats.eta)}"]
    else:
        parts.append(f"in {format.duration(stats.elapsed)}")
        if stats.completed:
            parts.append(f"{stats.completed} downloaded")
    parts += _counts(stats)
    if stats.cancelled or phase == "stopped":
        parts.append("partial files kept: run again to resume")
    if running and not can_cancel:
        parts.append("to stop: interrupt the kernel (■)")
    return " · ".join(parts)


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
    notices: Sequence[str] = (),
    dest: Path | str | None = None,
) -> View:
    """What the widget shows (pure: a test compares views, no kernel needed).

    ``active``: the running downloads (all of them: each counts towards the overall bar
    while sizes are unknown); the first ``rows`` get a line of their own. Once the call
    has ended the bar shows what was done out of what was asked: full only when every
    file is on disk.
    """
    running = phase == "running"
    share = 1.0 if phase == "done" else fraction(stats, active if running else ())
    value = 0 if share is None else min(SCALE, int(share * SCALE))
    if phase == "done":
        value = SCALE
    style, colour = COLOURS[phase]
    label = f"{percent(share)} · {stats.done} / {stats.files} files"
    if not running:
        label += f" · {WORDS[phase]}"
    details = _details(stats, phase, can_cancel)
    button: Literal["cancel", "cancelling", "hidden"] = "hidden"
    if running and can_cancel:
        button = "cancelling" if cancel_requested else "cancel"
    plain = line(stats, active) if running else final_line(stats, phase)
    return View(
        value=value,
        bar_style=style,
        bar_color=colour,
        label=html.escape(label),
        details=f"<div style='{_SMALL};{_MUTED}'>{html.escape(details)}</div>"
        + "".join(
            f"<div style='{_SMALL};{_MUTED}'>cluster: {html.escape(text)}</div>"
            for text in _cluster(stats, running=running)
        ),
        active=active_rows(active[:rows], stats, dest) if running else "",
        notices=notice_rows(notices),
        failures=failure_rows(failures, failed),
        button=button,
        plain=plain,
    )


__all__ = [
    "SCALE",
    "View",
    "bar",
    "cluster",
    "extracting",
    "final_line",
    "final_phase",
    "fraction",
    "line",
    "percent",
    "render",
    "restart_note",
    "retry_note",
    "throttle_note",
]
