"""Outcomes and Results: list behaviour, filters, errors, text and HTML views."""

from __future__ import annotations

from pathlib import Path

import pytest
from server import FAST, Server

import rheo_nb
from rheo_nb import DownloadsFailed, File, Outcome, Results
from rheo_nb.events import Status
from rheo_nb.results import MAX_ROWS


def outcome(name: str, status: Status, error: str | None = None, nbytes: int = 100) -> Outcome:
    url = f"https://example.org/{name}"
    return Outcome(url, Path("/d") / name, status, nbytes, 1.5, error, name, File(url))


@pytest.fixture
def mixed() -> Results:
    return Results(
        [
            outcome("a.bin", Status.COMPLETED),
            outcome("b.bin", Status.FAILED, "https://example.org/b.bin: HTTP 404 Not Found", 0),
            outcome("c.bin", Status.SKIPPED),
            outcome("d.bin", Status.CANCELLED, "cancelled", 40),
        ]
    )


def test_results_is_a_sequence(mixed: Results) -> None:
    assert len(mixed) == 4
    assert mixed[0].path.name == "a.bin"
    assert mixed[-1].status is Status.CANCELLED
    assert [o.path.name for o in mixed] == ["a.bin", "b.bin", "c.bin", "d.bin"]
    assert isinstance(mixed[1:3], Results)
    assert len(mixed[1:3]) == 2
    assert mixed == Results(list(mixed))
    assert mixed != list(mixed)


def test_ok_failed_and_paths(mixed: Results) -> None:
    assert [o.path.name for o in mixed.ok] == ["a.bin", "c.bin"]
    assert [o.path.name for o in mixed.failed] == ["b.bin", "d.bin"]
    assert mixed.paths == [Path("/d/a.bin"), Path("/d/c.bin")]
    assert mixed.bytes == 240
    assert mixed.counts() == {"completed": 1, "skipped": 1, "failed": 1, "cancelled": 1}
    # Plain names, as a reader wants to see them printed.
    assert repr(mixed.counts()) == "{'completed': 1, 'skipped': 1, 'failed': 1, 'cancelled': 1}"
    assert outcome("a", Status.SKIPPED).ok
    assert not outcome("a", Status.FAILED).ok


def test_raise_for_errors_returns_self_when_all_ok(mixed: Results) -> None:
    assert mixed.ok.raise_for_errors() == mixed.ok
    assert Results().raise_for_errors() == Results()


def test_raise_for_errors_lists_every_failure(mixed: Results) -> None:
    with pytest.raises(DownloadsFailed) as info:
        mixed.raise_for_errors()
    exc = info.value
    assert [o.path.name for o in exc.failures] == ["b.bin", "d.bin"]
    text = str(exc)
    assert text.startswith("2 downloads did not succeed:")
    assert "[failed] https://example.org/b.bin: HTTP 404 Not Found" in text
    assert "[cancelled] cancelled" in text


def test_downloads_failed_summarises_a_long_list() -> None:
    many = Results([outcome(f"f{i}", Status.FAILED, f"error {i}") for i in range(25)])
    with pytest.raises(DownloadsFailed) as info:
        many.raise_for_errors()
    assert len(info.value.failures) == 25
    assert "error 19" in str(info.value)
    assert "error 20" not in str(info.value)
    assert "… and 5 more" in str(info.value)


def test_summary_and_repr(mixed: Results) -> None:
    assert mixed.summary() == (
        "4 files: 1 completed, 1 skipped, 1 failed, 1 cancelled (240 B, longest 1.5s)"
    )
    text = repr(mixed)
    assert text.splitlines() == [
        f"<Results {mixed.summary()}>",
        "  failed: https://example.org/b.bin: HTTP 404 Not Found",
        "  cancelled: cancelled",
    ]
    assert repr(Results()) == "<Results 0 files: nothing to do (0 B, longest 0.0s)>"


def test_repr_summarises_many_problems() -> None:
    many = Results([outcome(f"f{i}", Status.FAILED, f"error {i}") for i in range(MAX_ROWS + 4)])
    assert repr(many).splitlines()[-1] == "  … 4 more not ok"


def test_repr_html_is_a_table_with_problems_first(mixed: Results) -> None:
    html = mixed._repr_html_()
    assert html.startswith("<div class='rheo-nb-results'>")
    assert "<table>" in html
    assert html.index("b.bin") < html.index("a.bin")
    assert html.count("<tr>") == 5  # header and four rows
    assert "HTTP 404 Not Found" in html


def test_repr_html_escapes_everything() -> None:
    nasty = Outcome(
        "https://example.org/'><script>alert(1)</script>",
        Path("/d/<img src=x onerror=alert(1)>.bin"),
        Status.FAILED,
        0,
        0.0,
        "<b>bold</b> & 'quoted'",
    )
    html = Results([nasty])._repr_html_()
    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>bold" not in html
    assert "&lt;script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#x27;quoted&#x27;" in html


def test_repr_html_summarises_long_lists() -> None:
    many = Results([outcome(f"f{i}", Status.COMPLETED) for i in range(MAX_ROWS + 7)])
    html = many._repr_html_()
    assert html.count("<tr>") == MAX_ROWS + 2
    assert "… and 7 more" in html


def test_text_table_lists_problems_first_and_counts_the_rest() -> None:
    outcomes = [
        Outcome(f"http://h/{i}.bin", Path(f"/d/{i}.bin"), Status.COMPLETED, 10, 0.1)
        for i in range(5)
    ] + [
        Outcome(
            "http://h/bad.bin",
            Path("/d/bad.bin"),
            Status.FAILED,
            0,
            0.0,
            "http://h/bad.bin: HTTP 404 Not Found",
        )
    ]
    lines = Results(outcomes).table(max_rows=3).splitlines()
    assert lines[0].startswith("6 files: 5 completed, 1 failed")
    assert lines[2].split() == [
        "failed",
        "bad.bin",
        "0",
        "B",
        "0.0s",
        "HTTP",
        "404",
        "Not",
        "Found",
    ]
    assert lines[-1] == "… and 3 more (3 completed)"
    assert len(lines) == 2 + 3 + 1


# --- the file column: paths relative to dest ---------------------------------------------


def test_two_files_of_one_name_in_two_folders_stay_apart(server: Server, dest: Path) -> None:
    results = rheo_nb.fetch_sync(
        [
            File(server.url("one.bin"), "raw/2024/one.bin"),
            File(server.url("one.bin", 2000), "raw/2025/one.bin"),
            File(server.url("gone.bin", status=404), "raw/2025/gone.bin"),
        ],
        dest,
        **FAST,
    )
    assert results.dest == dest.resolve()
    table = results.table()
    assert "raw/2024/one.bin" in table
    assert "raw/2025/one.bin" in table
    assert "raw/2025/gone.bin  " in table
    html = results._repr_html_()
    assert ">raw/2024/one.bin</td>" in html
    assert ">raw/2025/one.bin</td>" in html
    # Filters and slices keep dest, so their tables name files the same way.
    assert "raw/2025/gone.bin" in results.failed.table()
    assert "raw/2024/one.bin" in results[:1].table()


def test_items_refused_before_any_request_show_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "my-data-folder"
    results = rheo_nb.fetch_sync(
        ["not-a-url", File("http://127.0.0.1:9/x.bin", "../up.bin")], dest, **FAST
    )
    rows = results.table().splitlines()[2:]
    assert len(rows) == 2
    for row in rows:
        status, file = row.split()[:2]
        assert (status, file) == ("failed", "–"), row
    assert dest.name not in results.table()
    # The error names the URL, since no file does.
    assert "'not-a-url'" in rows[0]
    assert "http://127.0.0.1:9/x.bin: path '../up.bin' goes outside dest" in rows[1]
    html = results._repr_html_()
    assert f">{dest.name}<" not in html
    assert "<td class='l' title='not-a-url'>–</td>" in html


def test_a_table_without_dest_names_files_by_name(mixed: Results) -> None:
    assert mixed.dest is None
    assert "a.bin" in mixed.table()
