"""Which failures are retried, backoff, and Retry-After parsing."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from rheo_nb import retry
from rheo_nb.errors import (
    DestinationError,
    DownloadError,
    HTTPStatusError,
    IntegrityError,
    RedirectError,
    TooLargeError,
    TransferError,
)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert retry.is_transient(HTTPStatusError("u", status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 416, 501, 505])
def test_other_statuses_are_final(status: int) -> None:
    assert not retry.is_transient(HTTPStatusError("u", status))


def test_connection_problems_are_retried_and_the_rest_is_final() -> None:
    assert retry.is_transient(TransferError("u", "connection reset"))
    for exc in (
        IntegrityError("u", "sha256 mismatch"),
        TooLargeError("u", "too big"),
        RedirectError("u", "loop"),
        DestinationError("u", "disk full"),
        DownloadError("u", "TLS certificate not trusted"),
        ValueError("bug"),
    ):
        assert not retry.is_transient(exc)


def test_backoff_grows_exponentially_within_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        for _ in range(20):
            delay = retry.backoff(attempt, 0.5, 30.0, rng)
            assert ceiling / 2 <= delay <= ceiling


def test_backoff_is_capped() -> None:
    assert max(retry.backoff(50, 1.0, 4.0) for _ in range(100)) <= 4.0


@pytest.mark.parametrize("attempt", [1024, 1025, 10**6])
def test_backoff_of_a_long_run_stays_at_its_cap(attempt: int) -> None:
    # 2.0 ** 1024 overflows a float: an overnight run must not turn that into a crash.
    assert 2.0 <= retry.backoff(attempt, 0.5, 4.0) <= 4.0
    assert retry.backoff(attempt, 0.0, 0.0) == 0.0


def test_backoff_is_jittered() -> None:
    rng = random.Random(1)
    assert len({retry.backoff(3, 1.0, 60.0, rng) for _ in range(10)}) > 1


def test_backoff_zero_base_means_no_wait() -> None:
    assert retry.backoff(5, 0.0, 30.0) == 0.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("5", 5.0),
        (" 120 ", 120.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-3", None),
        ("1.5", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert retry.parse_retry_after(value) == seconds


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert retry.parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == 30.0


def test_parse_retry_after_date_in_the_past_means_now() -> None:
    now = 1_700_000_000.0
    assert retry.parse_retry_after(formatdate(now - 300, usegmt=True), now=now) == 0.0


def test_parse_retry_after_date_without_zone_is_unreadable() -> None:
    assert retry.parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000") is None
