"""Turning what callers pass into planned downloads: File, as_files, plan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from rheo_nb import File, InvalidItemError
from rheo_nb.events import Status
from rheo_nb.hashing import ExpectedHash
from rheo_nb.items import (
    BadRow,
    Outcome,
    as_files,
    check_headers,
    check_url,
    count,
    describe,
    download_id,
    iter_files,
    plan,
)

DEST = Path("/data")
URL = "https://example.org/sets/train.csv"
SHA = "sha256:" + "ab" * 32


def test_as_files_accepts_strings_files_mappings_and_outcomes() -> None:
    f = File("https://example.org/b", "b.bin", hash=SHA)
    outcome = Outcome("masked", Path("/x"), Status.FAILED, 0, 0.0, "boom", "id", f)
    assert as_files(URL) == [File(URL)]
    assert as_files(f) == [f]
    assert as_files([URL, f, outcome]) == [File(URL), f, f]
    assert as_files({URL: SHA, "https://example.org/c": None}) == [
        File(URL, hash=SHA),
        File("https://example.org/c"),
    ]
    assert as_files(u for u in [URL]) == [File(URL)]


def test_as_files_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match="cannot download a int"):
        as_files([URL, 42])  # type: ignore[list-item]


def test_file_repr_masks_the_url_and_hides_headers() -> None:
    f = File(
        "https://me:pw@example.org/a?token=abc",
        "a.bin",
        hash=SHA,
        priority=2,
        headers={"Authorization": "Bearer s3cret"},
    )
    text = repr(f)
    assert "pw" not in text
    assert "abc" not in text
    assert "s3cret" not in text
    assert "headers=<1 hidden>" in text
    assert "priority=2" in text
    assert "path='a.bin'" in text


def test_file_is_frozen_and_hashable() -> None:
    assert len({File(URL), File(URL)}) == 1


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty URL"),
        ("https://example.org/a b", "whitespace or control"),
        ("https://example.org/a\r\nHost: evil", "whitespace or control"),
        ("ftp://example.org/a", "unsupported URL scheme ftp:"),
        ("file:///etc/passwd", "unsupported URL scheme file:"),
        ("example.org/a", r"unsupported URL scheme \(none\)"),
        ("https:///a", "has no host"),
        ("https://example.org:99999/a", "malformed URL"),
        ("https://example.org:port/a", "malformed URL"),
        ("https://[::1/a", r"malformed URL 'https://\[::1/a': a '\[' opens an IPv6"),
        ("https://a..b.example/a", "'a..b.example' has an empty label"),
        ("https://.example/a", "has an empty label"),
        ("https://" + "a" * 64 + ".example/a", "has a label of 64 characters"),
        ("https://" + "a." * 127 + "ab/a", "is 256 characters long"),
        ("https://xn--zz.example/a", "not a valid internationalised name"),
        ("https://a\u200bb.example/a", "not a valid host name"),
    ],
)
def test_check_url_rejects_unusable_urls(url: str, words: str) -> None:
    with pytest.raises(InvalidItemError, match=words):
        check_url(url)


def test_check_url_never_shows_secrets() -> None:
    with pytest.raises(InvalidItemError) as info:
        check_url("ftp://me:hunter2@example.org/a?token=abc")
    assert "hunter2" not in str(info.value)
    assert "abc" not in str(info.value)


def test_check_url_accepts_http_and_https() -> None:
    assert check_url("HTTP://example.org/a") == "HTTP://example.org/a"
    assert check_url("https://127.0.0.1:8080/a?b=c") == "https://127.0.0.1:8080/a?b=c"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org./a",  # the root's trailing dot
        "https://" + "a" * 63 + ".example/a",
        "https://b\u00fccher.example/a",
        "https://xn--bcher-kva.example/a",
        "http://[::1]:8080/a",
        "http://[fe80::1%25eth0]/a",
        "http://my_host/a",
    ],
)
def test_check_url_accepts_every_host_a_resolver_takes(url: str) -> None:
    assert check_url(url) == url


def test_a_bad_host_with_a_login_never_shows_the_password() -> None:
    with pytest.raises(InvalidItemError, match="has an empty label") as info:
        check_url("https://alice:hunter2@a..b.example/a")
    assert "hunter2" not in str(info.value)


def test_check_headers() -> None:
    assert check_headers(None) == {}
    assert check_headers({"X-Key": "v"}) == {"X-Key": "v"}
    with pytest.raises(InvalidItemError, match="invalid header name"):
        check_headers({"Bad Name": "v"})
    with pytest.raises(InvalidItemError, match="CR, LF or NUL"):
        check_headers({"X-Key": "v\r\nInjected: yes"})
    with pytest.raises(InvalidItemError, match="not text"):
        check_headers({"X-Key": 3})  # type: ignore[dict-item]


def test_plan_names_the_file_from_the_url() -> None:
    p = plan(File(URL), DEST, {})
    assert p.relpath == PurePosixPath("train.csv")
    assert p.final == DEST / "train.csv"
    assert p.expected is None
    assert p.url == URL


def test_plan_uses_the_given_path_inside_dest() -> None:
    p = plan(File(URL, "raw/2024/train.csv", hash=SHA), DEST, {})
    assert p.final == DEST / "raw" / "2024" / "train.csv"
    assert p.expected == ExpectedHash("sha256", "ab" * 32)


@pytest.mark.parametrize("path", ["../train.csv", "/etc/passwd", "", "a/../../b"])
def test_plan_rejects_paths_outside_dest(path: str) -> None:
    with pytest.raises(InvalidItemError):
        plan(File(URL, path), DEST, {})


def test_plan_masks_the_display_url() -> None:
    p = plan(File("https://example.org/a.csv?api_key=abc"), DEST, {})
    assert p.display_url == "https://example.org/a.csv?api_key=***"
    assert p.url.endswith("api_key=abc")


def test_plan_rejects_a_bad_hash_or_priority() -> None:
    with pytest.raises(InvalidItemError, match="malformed sha256"):
        plan(File(URL, hash="sha256:xyz"), DEST, {})
    with pytest.raises(InvalidItemError, match="priority must be an int"):
        plan(File(URL, priority="high"), DEST, {})  # type: ignore[arg-type]


def test_plan_merges_headers_per_file_winning() -> None:
    p = plan(File(URL, headers={"X-A": "file"}), DEST, {"X-A": "call", "X-B": "call"})
    assert p.headers == {"X-A": "file", "X-B": "call"}


def test_download_id_depends_on_url_and_path() -> None:
    a = plan(File(URL), DEST, {}).download_id
    assert a == plan(File(URL, "train.csv"), DEST, {}).download_id
    assert a == download_id(URL, PurePosixPath("train.csv"))
    assert a != plan(File(URL, "other.csv"), DEST, {}).download_id
    assert a != plan(File(URL + "?v=2"), DEST, {}).download_id


def test_describe_is_safe_for_anything() -> None:
    assert describe(File("https://example.org/a?token=x")) == "https://example.org/a?token=***"
    assert describe(File(42)) == "'int'"  # type: ignore[arg-type]


def test_iter_files_is_lazy() -> None:
    taken: list[int] = []

    def rows() -> Iterator[str]:
        for i in range(1_000_000):
            taken.append(i)
            yield f"{URL}?n={i}"

    files = iter_files(rows())
    assert [next(files).url for _ in range(3)] == [f"{URL}?n={i}" for i in range(3)]
    assert taken == [0, 1, 2]


def test_mirrors_and_extract_are_planned_and_checked() -> None:
    p = plan(
        File(URL, mirrors=["https://m1.example/t.csv", "http://m2.example/t.csv"], extract=True),
        DEST,
        {},
    )
    assert p.mirrors == ("https://m1.example/t.csv", "http://m2.example/t.csv")
    assert p.extract is True
    assert plan(File(URL, extract="models/bert"), DEST, {}).extract == PurePosixPath("models/bert")
    assert plan(File(URL), DEST, {}).extract is False
    assert plan(File(URL), DEST, {}).mirrors == ()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mirrors": "https://m.example/x"}, "mirrors must be a list or tuple of URLs, not str"),
        ({"mirrors": ["ftp://m.example/x"]}, "unsupported URL scheme ftp:"),
        ({"mirrors": [None]}, "URL must be a string"),
        ({"extract": "../up"}, "extract folder: .*outside dest"),
        ({"extract": "/abs"}, "extract folder: .*absolute"),
        ({"extract": "."}, "extract folder: .*names no"),
        ({"extract": 1}, "extract must be True, False or a folder"),
        ({"extract_remove": "yes"}, "extract_remove must be True, False or None"),
    ],
)
def test_bad_mirrors_or_extract_fail_planning(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidItemError, match=words):
        plan(File(URL, **kwargs), DEST, {})


def test_a_list_of_mirrors_keeps_the_file_hashable() -> None:
    f = File(URL, mirrors=["https://m.example/x"])
    assert f.mirrors == ("https://m.example/x",)
    assert len({f, File(URL, mirrors=("https://m.example/x",))}) == 1


def test_repr_masks_mirrors_and_shows_extraction() -> None:
    f = File(
        URL,
        mirrors=["https://u:pw@m.example/x?token=abc"],
        extract="models",
        extract_remove=True,
    )
    text = repr(f)
    assert "pw" not in text
    assert "abc" not in text
    assert "mirrors=['https://u:***@m.example/x?token=***']" in text
    assert "extract='models'" in text
    assert "extract_remove=True" in text


def test_a_bad_row_fails_planning_with_its_message() -> None:
    row = BadRow("https://example.org/x?token=abc", error="list.csv, line 4: no url")
    assert isinstance(row, File)
    with pytest.raises(InvalidItemError, match=r"^list\.csv, line 4: no url$"):
        plan(row, DEST, {})
    assert "abc" not in repr(row)
    assert "error='list.csv, line 4: no url'" in repr(row)
    assert as_files([row]) == [row]


def test_count_knows_how_many_items_without_reading_them() -> None:
    assert count("http://example.org/a") == 1  # one URL, not its characters
    assert count(File("http://example.org/a")) == 1
    assert count({"http://example.org/a": None, "http://example.org/b": None}) == 2
    assert count(["http://example.org/a"] * 3) == 3
    assert count(u for u in ["http://example.org/a"]) is None  # lazy: unknown until read
