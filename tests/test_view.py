"""What the displays show, computed without a terminal, a kernel or ipywidgets.

Views are pure functions of the tracker's state: a tracker fed synthetic events (with a
fake clock) is as good as a real download here, and the notebook and browser tiers check
the same views on real downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rheo_nb
from rheo_nb.display.view import (
    SCALE,
    bar,
    cluster,
    final_line,
    final_phase,
    fraction,
    line,
    notice_rows,
    percent,
    render,
    restart_note,
    retry_note,
    throttle_note,
)
from rheo_nb.events import (
    Cancelled,
    Completed,
    Extracting,
    Failed,
    Progress,
    Queued,
    Restarted,
    Started,
    Throttled,
)
from rheo_nb.format import shown_path
from rheo_nb.tracker import ClusterStats, DownloadInfo, Stats, Tracker

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def stats(**changes: Any) -> Stats:
    base: dict[str, Any] = {
        "files": 10,
        "queued": 4,
        "running": 2,
        "completed": 3,
        "skipped": 1,
        "failed": 0,
        "cancelled": 0,
        "bytes_done": 0,
        "bytes_total": None,
        "speed": 2.0 * MiB,
        "eta": 12.0,
        "elapsed": 3.0,
    }
    return Stats(**{**base, **changes})


def info(file: str, nbytes: int, total: int | None, **changes: Any) -> DownloadInfo:
    d = DownloadInfo(file, f"http://127.0.0.1/{file}", Path("/d") / file, bytes=nbytes, total=total)
    for key, value in changes.items():
        setattr(d, key, value)
    return d


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- what the widget draws (pure) ------------------------------------------------------------


def test_overall_share_is_by_bytes_when_every_size_is_known() -> None:
    s = stats(bytes_done=30 * MiB, bytes_total=120 * MiB)
    assert fraction(s) == 0.25
    view = render(s, [], [], failed=0)
    assert view.value == SCALE // 4
    assert view.label.startswith("25% · 4 / 10 files")
    assert "30.0 MiB of 120.0 MiB" in view.details
    assert "2.0 MiB/s" in view.details
    assert f"ETA {rheo_nb.format.duration(12.0)}" in view.details


def test_overall_share_counts_files_and_running_shares_while_sizes_are_unknown() -> None:
    running = [info("a.bin", 50, 100), info("b.bin", 10, None)]
    s = stats()
    # 4 done + half of a.bin (b.bin's size is unknown) of 10 files.
    assert fraction(s, running) == pytest.approx(0.45)
    assert render(s, running, [], failed=0).value == 450
    assert fraction(stats(files=0)) is None
    # Failed files are not done: they never count as progress.
    assert fraction(stats(failed=5, completed=0, skipped=0)) == 0.0


def test_active_rows_show_a_few_files_and_count_the_rest() -> None:
    running = [info(f"f{i}.bin", i * 10, 100, speed=1.5 * MiB) for i in range(8)]
    view = render(stats(running=8, queued=90, files=100), running, [], failed=0, rows=5)
    assert view.active.count("f") >= 5
    assert "f4.bin" in view.active
    assert "f5.bin" not in view.active
    assert "+ 3 more running · 90 queued" in view.active
    assert "1.5 MiB/s" in view.active


def test_active_rows_say_verifying_and_retrying() -> None:
    running = [
        info("v.bin", 100, 100, validating=True),
        info("r.bin", 0, None, retries=2),
        info("u.bin", 3 * KiB, None),
    ]
    view = render(stats(running=3, queued=0), running, [], failed=0)
    assert "verifying" in view.active
    assert "retry 2" in view.active
    assert "3.0 KiB" in view.active


def test_an_archive_being_extracted_shows_members_done_of_total() -> None:
    tracker = Tracker(Clock())
    path = Path("/d/train.tar.gz")
    tracker.apply(Queued("a", "u/train.tar.gz", path, 0))
    tracker.apply(Started("a", "u/train.tar.gz", path, 4 * MiB, 0))
    tracker.apply(Progress("a", "u/train.tar.gz", 4 * MiB, 4 * MiB))
    tracker.apply(Extracting("a", "u/train.tar.gz", 120, 400))
    s = tracker.stats()
    running = tracker.active(s.running)
    view = render(s, running, [], failed=0, dest=Path("/d"))
    assert "extracting 120/400" in view.active
    assert "width:30.0%" in view.active  # its own bar counts members now, not bytes
    assert line(s, running).endswith(" · train.tar.gz: extracting 120/400")
    # A tar is read once, front to back: its total is not known until the end.
    tracker.apply(Extracting("a", "u/train.tar.gz", 7, None))
    running = tracker.active(s.running)
    assert "extracting 7<" in render(s, running, [], failed=0).active
    assert line(tracker.stats(), running).endswith(" · train.tar.gz: extracting 7")
    # Once done, the file is simply done.
    tracker.apply(Completed("a", "u/train.tar.gz", path, 4 * MiB, 1.0))
    assert "extracting" not in final_line(tracker.stats(), "done")
    assert "extracting" not in line(tracker.stats(), tracker.active())


def test_names_and_causes_are_escaped() -> None:
    evil = info("<img src=x onerror=alert(1)>.bin", 1, 2)
    view = render(stats(running=1), [evil], [("<b>x</b>", "<script>")], failed=1)
    for text in (view.active, view.failures):
        assert "<img" not in text
        assert "<script>" not in text
        assert "<b>x" not in text


def test_failures_are_listed_and_the_rest_counted() -> None:
    failures = [(f"f{i}.csv", "HTTP 404 Not Found") for i in range(5)]
    view = render(stats(failed=12), [], failures, failed=12)
    assert view.failures.count("— HTTP 404 Not Found") == 5
    assert "… and 7 more failed" in view.failures
    assert render(stats(), [], [], failed=0).failures == ""


@pytest.mark.parametrize(
    ("changes", "interrupted", "cancel_requested", "phase", "style"),
    [
        ({"failed": 0}, False, False, "done", "success"),
        ({"failed": 2}, False, False, "partial", "warning"),
        ({"failed": 10}, False, False, "failed", "danger"),
        ({"cancelled": 3}, False, False, "cancelled", ""),
        ({"failed": 0}, False, True, "cancelled", ""),
        ({"failed": 0}, True, False, "stopped", ""),
    ],
)
def test_final_colour_tells_how_the_call_ended(
    changes: dict[str, int], interrupted: bool, cancel_requested: bool, phase: str, style: str
) -> None:
    s = stats(queued=0, running=0, **changes)
    got = final_phase(s, interrupted=interrupted, cancel_requested=cancel_requested)
    assert got == phase
    view = render(s, [], [], failed=s.failed, phase=got)
    assert view.bar_style == style
    assert (view.bar_color is not None) == (style == "")
    assert view.button == "hidden"
    assert view.active == ""


def test_running_colour_and_the_cancel_button() -> None:
    view = render(stats(), [], [], failed=0)
    assert (view.bar_style, view.bar_color, view.button) == ("info", None, "cancel")
    assert render(stats(), [], [], failed=0, cancel_requested=True).button == "cancelling"
    blocking = render(stats(), [], [], failed=0, can_cancel=False)
    assert blocking.button == "hidden"
    assert "interrupt the kernel" in blocking.details


def test_a_finished_batch_fills_the_bar_a_cancelled_one_shows_what_was_done() -> None:
    done = stats(queued=0, running=0, completed=9, skipped=1)
    assert render(done, [], [], failed=0, phase="done").value == SCALE
    cut = stats(queued=0, running=0, completed=2, skipped=0, cancelled=8)
    view = render(cut, [], [], failed=0, phase="cancelled")
    assert view.value == 200
    assert view.label.startswith("20% · 2 / 10 files")
    assert "partial files kept" in view.details


def test_a_partly_failed_batch_ends_short_of_full() -> None:
    s = stats(queued=0, running=0, completed=8, skipped=1, failed=1)
    view = render(s, [], [("gone.csv", "HTTP 404")], failed=1, phase="partial")
    assert view.value == 900
    assert view.label == "90% · 9 / 10 files · ⚠ some failed"


# --- honest progress after an interrupt, from the tracker's events ---------------------------


def interrupted_big_download() -> Tracker:
    """A 6 GiB file cancelled at 1.7 GiB, as a Ctrl-C leaves it."""
    clock = Clock()
    tracker = Tracker(clock)
    path = Path("/d/big.bin")
    tracker.apply(Queued("a", "u/big.bin", path, 0))
    tracker.apply(Started("a", "u/big.bin", path, 6 * GiB, 0))
    clock.now += 10
    tracker.apply(Progress("a", "u/big.bin", int(1.7 * GiB), 6 * GiB))
    tracker.apply(Cancelled("a", "u/big.bin", path, int(1.7 * GiB)))
    return tracker


def test_after_an_interrupt_the_final_line_shows_done_out_of_asked() -> None:
    s = interrupted_big_download().stats()
    assert s.bytes_total == 6 * GiB  # the size asked for, not the bytes that arrived
    phase = final_phase(s, interrupted=True)
    text = final_line(s, phase)
    assert text.startswith("▕█████░░░░░░░░░░░░░░░▏  28% 0/1 files · 1.7 GiB/6.0 GiB")
    assert text.endswith("1 cancelled · ■ stopped")
    assert "100%" not in text


def test_after_an_interrupt_the_widget_shows_done_out_of_asked() -> None:
    s = interrupted_big_download().stats()
    view = render(s, [], [], failed=0, phase=final_phase(s, interrupted=True))
    assert view.value == 283
    assert view.label == "28% · 0 / 1 files · ■ stopped"
    assert "1.7 GiB of 6.0 GiB" in view.details
    assert "partial files kept: run again to resume" in view.details
    assert view.plain.startswith("▕█████░")


def test_a_failed_file_keeps_its_size_but_leaves_the_eta() -> None:
    clock = Clock()
    tracker = Tracker(clock)
    for did in "ab":
        tracker.apply(Queued(did, f"u/{did}", Path(did), 0))
        tracker.apply(Started(did, f"u/{did}", Path(did), 100 * MiB, 0))
    clock.now += 1
    tracker.apply(Progress("a", "u/a", 10 * MiB, 100 * MiB))
    tracker.apply(Progress("b", "u/b", 10 * MiB, 100 * MiB))
    tracker.apply(Failed("b", "u/b", Path("b"), "u/b: HTTP 500", 1.0))
    clock.now += 0.5
    s = tracker.stats()
    assert (s.bytes_done, s.bytes_total) == (20 * MiB, 200 * MiB)
    # 90 MiB of a.bin remain; b.bin's 90 MiB will not come in this run.
    assert s.eta == pytest.approx(90 * MiB / s.speed)


def test_the_text_line_never_says_100_before_the_end() -> None:
    assert percent(0.999) == "99%"
    assert bar(0.999) == "▕" + "█" * 19 + "░▏"
    assert percent(1.0) == "100%"
    assert percent(None) == "?%"
    assert bar(None) == "▕" + "·" * 20 + "▏"


def test_the_running_line_counts_files_done_not_files_failed() -> None:
    s = stats(files=20, completed=10, skipped=2, failed=3, running=1, queued=4)
    text = line(s)
    assert " 12/20 files" in text
    assert text.endswith("2 skipped · 3 failed")


# --- names, retries and restarts --------------------------------------------------------------


def test_names_are_relative_to_dest_and_unplanned_items_are_named_by_url() -> None:
    dest = Path("/data")
    assert shown_path(Path("/data/raw/2024/one.bin"), dest, "u") == "raw/2024/one.bin"
    assert shown_path(Path("/data/raw/2025/one.bin"), dest, "u") == "raw/2025/one.bin"
    assert shown_path(dest, dest, "not-a-url") == "not-a-url"
    assert shown_path(Path("/elsewhere/x.bin"), dest, "u") == "x.bin"
    assert shown_path(Path("/data/x.bin"), None, "u") == "x.bin"


def test_notes_say_what_happens_in_words() -> None:
    assert (
        retry_note("flaky.bin", 1, 0.2, "HTTP 503 Service Unavailable", 4)
        == "retrying flaky.bin in 0.2s (attempt 2 of 4): HTTP 503 Service Unavailable"
    )
    assert (
        restart_note("x.bin", "the server does not support resume", 12 * MiB)
        == "restarting x.bin: the server does not support resume (12.0 MiB discarded)"
    )
    assert restart_note("x.bin", "the file changed on the server", 0) == (
        "restarting x.bin: the file changed on the server"
    )


def test_a_restart_resets_the_bytes_and_marks_the_row() -> None:
    clock = Clock()
    tracker = Tracker(clock)
    path = Path("/d/x.bin")
    tracker.apply(Queued("x", "u/x.bin", path, 0))
    tracker.apply(Started("x", "u/x.bin", path, 10 * MiB, 6 * MiB))
    assert tracker.stats().bytes_done == 6 * MiB
    tracker.apply(Restarted("x", "u/x.bin", 6 * MiB, "the server does not support resume"))
    s = tracker.stats()
    assert (s.bytes_done, s.bytes_total, s.running) == (0, 10 * MiB, 1)
    record = tracker.downloads["x"]
    assert (record.restarts, record.restart_reason, record.resumed_from) == (
        1,
        "the server does not support resume",
        0,
    )
    # The restart brings no speed: nothing new arrived.
    clock.now += 0.5
    tracker.apply(Progress("x", "u/x.bin", MiB, 10 * MiB))
    assert s.speed == 0.0
    assert tracker.downloads["x"].speed == pytest.approx(2 * MiB)
    view = render(tracker.stats(), tracker.active(5), [], failed=0, dest=Path("/d"))
    assert "↻ 10%" in view.active
    note = restart_note("x.bin", "the server does not support resume", 6 * MiB)
    view = render(tracker.stats(), tracker.active(5), [], failed=0, notices=[note])
    assert "restarting x.bin: the server does not support resume" in view.notices
    assert render(tracker.stats(), [], [], failed=0).notices == ""


def test_a_completed_file_after_a_restart_counts_once() -> None:
    tracker = Tracker(Clock())
    path = Path("/d/x.bin")
    tracker.apply(Queued("x", "u", path, 0))
    tracker.apply(Started("x", "u", path, 1000, 600))
    tracker.apply(Restarted("x", "u", 600, "the file changed on the server"))
    tracker.apply(Progress("x", "u", 1000, 1000))
    tracker.apply(Completed("x", "u", path, 1000, 1.0))
    s = tracker.stats()
    assert (s.bytes_done, s.bytes_total, s.completed, s.done) == (1000, 1000, 1, 1)


def test_a_file_speed_is_its_real_rate_from_the_first_sample() -> None:
    now = [100.0]
    tracker = Tracker(lambda: now[0])
    tracker.apply(Queued("a", "u", Path("a.bin"), 0))
    tracker.apply(Started("a", "u", Path("a.bin"), 4 * MiB, 0))
    now[0] += 0.25
    tracker.apply(Progress("a", "u", MiB // 2, 4 * MiB))
    # The row beside the file's bar shows 2 MiB/s at once, not a fraction climbing to it.
    assert tracker.downloads["a"].speed == pytest.approx(2 * MiB)
    view = render(tracker.stats(), tracker.active(5), [], failed=0)
    assert "2.0 MiB/s" in view.active
    assert rheo_nb.format.duration(0.5) == "0.5s"


def test_objects_in_a_bucket_are_shown_by_their_key_under_the_prefix() -> None:
    # What the widget and the text display draw for an s3:// destination: the key under
    # the prefix, as for a folder, never the URL mangled into a local path ("s3:/b").
    tracker = Tracker(Clock())
    dest = rheo_nb.ObjectPath.of("s3://bucket/data/")
    path = dest.joinpath("raw", "2024", "one.bin")
    tracker.apply(Queued("x", "u/one.bin", path, 0))
    tracker.apply(Started("x", "u/one.bin", path, 10 * MiB, 0))
    tracker.apply(Progress("x", "u/one.bin", MiB, 10 * MiB))
    view = render(tracker.stats(), tracker.active(5), [], failed=0, dest=dest)
    assert "raw/2024/one.bin" in view.active
    assert "s3:" not in view.active
    outcome = rheo_nb.Outcome("u/one.bin", path, rheo_nb.Status.COMPLETED, 10 * MiB, 1.0)
    table = rheo_nb.Results([outcome], dest=dest).table()
    assert "raw/2024/one.bin" in table
    assert "s3:" not in table


# --- a call on a Dask cluster ----------------------------------------------------------------


def test_a_cluster_call_shows_workers_busy_and_shards_done_in_the_line_and_the_widget() -> None:
    running = stats(cluster=ClusterStats(workers=2, busy=2, shards_done=3, shards=8))
    assert line(running).endswith(" · 2/2 workers busy · 3/8 shards done")
    drawn = render(running, (), (), failed=0)
    assert "cluster: 2/2 workers busy · 3/8 shards done" in drawn.details
    assert drawn.plain == line(running)
    # At the end: the shards, not the workers; a rerun after a worker died is said.
    done = stats(queued=0, running=0, completed=10, cluster=ClusterStats(2, 0, 8, 8, reruns=1))
    assert final_line(done, "done").endswith(" · 8/8 shards done · 1 rerun · ✔ done")
    assert (
        "cluster: 8/8 shards done · 1 rerun" in render(done, (), (), failed=0, phase="done").details
    )
    # A lazy input of unknown length: the total is not known yet.
    assert cluster(ClusterStats(3, 1, 0, None)) == "1/3 workers busy · 0/? shards done"


def test_a_local_call_has_no_cluster_line() -> None:
    assert "shards" not in line(stats())
    assert "cluster" not in render(stats(), (), (), failed=0).details


@pytest.mark.parametrize(
    ("event", "note"),
    [
        (
            Throttled("d", "u", "https://example.org", 2, 4, "429", 0.5),
            "⇣ example.org slowed to 2 connections: 429, waiting 0.5s",
        ),
        (
            Throttled("d", "u", "http://127.0.0.1:8080", 8, 8, "503, Retry-After", 30.0),
            "⇣ 127.0.0.1:8080 paused for 0:30: 503, Retry-After",
        ),
        (
            Throttled("d", "u", "https://example.org", 3, 2, "4 good answers in a row"),
            "⇡ example.org back up to 3 connections: 4 good answers in a row",
        ),
    ],
)
def test_a_throttle_is_a_notice_in_a_few_words(event: Throttled, note: str) -> None:
    assert throttle_note(event) == note


def test_notices_keep_their_own_marks_and_are_escaped() -> None:
    rows = notice_rows(["↻ restarting a.bin: x", "⇣ <b>host</b> slowed to 1 connection: 429"])
    assert "↻ restarting a.bin: x" in rows
    assert "⇣ &lt;b&gt;host&lt;/b&gt; slowed to 1 connection: 429" in rows
    assert "<b>host" not in rows
