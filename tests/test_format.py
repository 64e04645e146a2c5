"""Sizes, rates, durations, masked URLs and short names as text."""

from __future__ import annotations

import pytest

from rheo_nb import format


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "?"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3.5 * 1024**3, "3.5 GiB"),
        (2 * 1024**5, "2.0 PiB"),
        (2048 * 1024**5, "2048.0 PiB"),
    ],
)
def test_size(n: float | None, text: str) -> None:
    assert format.size(n) == text


def test_rate() -> None:
    assert format.rate(None) == "–"
    assert format.rate(1536) == "1.5 KiB/s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "–"),
        (float("nan"), "–"),
        (float("inf"), "–"),
        (0, "0.0s"),
        (3.25, "3.2s"),
        (9.94, "9.9s"),
        (10, "0:10"),
        (75, "1:15"),
        (3600, "1:00:00"),
        (3 * 3600 + 62, "3:01:02"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert format.duration(seconds) == text


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://example.org/a.csv?version=2", "https://example.org/a.csv?version=2"),
        ("https://user:hunter2@example.org/a", "https://user:***@example.org/a"),
        ("https://tok3n@example.org/a", "https://***@example.org/a"),
        (
            "https://example.org/a?api_key=s3cret&x=1",
            "https://example.org/a?api_key=***&x=1",
        ),
        (
            "https://s3.example.org/a?X-Amz-Signature=abc&X-Amz-Credential=def&n=1",
            "https://s3.example.org/a?X-Amz-Signature=***&X-Amz-Credential=***&n=1",
        ),
        (
            "https://example.org/a?access_token=t&sid=1",
            "https://example.org/a?access_token=***&sid=1",
        ),
        ("https://example.org/a?Password=p", "https://example.org/a?Password=***"),
        # Unparsable, yet shown (which URL of thousands?), with its secrets masked.
        ("http://[::1", "http://[::1"),
        ("http://u:pw@[::1/a?token=t&n=1", "http://u:***@[::1/a?token=***&n=1"),
        ("http://tok@[::1/a?x&Signature=s#f", "http://***@[::1/a?x&Signature=***#f"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert format.mask_url(url) == masked


def test_mask_url_extra_secret_parameters() -> None:
    url = "https://example.org/a?k=v1&q=2"
    assert format.mask_url(url, frozenset({"k"})) == "https://example.org/a?k=***&q=2"


def test_short_name_keeps_both_ends() -> None:
    assert format.short_name("short.csv") == "short.csv"
    name = "a_very_long_dataset_name_for_the_year_2024_part_0001.parquet"
    short = format.short_name(name, 24)
    assert len(short) == 24
    assert short.startswith("a_very")
    assert short.endswith("parquet")
    assert "…" in short
