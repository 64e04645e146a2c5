"""Options: defaults, validation once, and building from keywords."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from rheo_nb import OptionError, Options
from rheo_nb.options import parse_rate


def test_defaults() -> None:
    o = Options()
    assert (o.concurrency, o.retries, o.timeout, o.overwrite) == (8, 3, 30.0, False)
    assert o.total_timeout is None
    assert o.max_size is None
    assert o.headers == {}
    assert o.segments == "auto"
    assert (o.max_extract_size, o.max_extract_files, o.extract_remove) == (None, 1_000_000, False)


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Options().retries = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"concurrency": "4"}, "concurrency"),
        ({"retries": -1}, "retries"),
        ({"retries": 2.0}, "retries"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "30"}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"total_timeout": 0}, "total_timeout"),
        ({"total_timeout": "soon"}, "total_timeout"),
        ({"backoff": -0.1}, "backoff"),
        ({"backoff_max": None}, "backoff_max"),
        ({"retry_after_max": -1}, "retry_after_max"),
        ({"low_speed_time": -1}, "low_speed_time"),
        ({"progress_interval": "fast"}, "progress_interval"),
        ({"max_size": -1}, "max_size"),
        ({"max_size": "10 MB"}, "max_size"),
        ({"low_speed_limit": -5}, "low_speed_limit"),
        ({"low_speed_limit": "slow"}, "low_speed_limit"),
        ({"max_redirects": -1}, "max_redirects"),
        ({"max_redirects": None}, "max_redirects"),
        ({"max_redirects": 1.5}, "max_redirects"),
        ({"chunk_size": 100}, "chunk_size"),
        ({"chunk_size": "1M"}, "chunk_size"),
        ({"segments": 0}, "segments"),
        ({"segments": "many"}, "segments"),
        ({"headers": None}, "headers"),
        ({"headers": [("a", "b")]}, "headers"),
        ({"max_extract_size": 0}, "max_extract_size"),
        ({"max_extract_size": "1G"}, "max_extract_size"),
        ({"max_extract_files": 0}, "max_extract_files"),
        ({"max_extract_files": None}, "max_extract_files"),
        ({"extract_remove": "yes"}, "extract_remove"),
        ({"extract_remove": None}, "extract_remove"),
        ({"max_rate": 0}, "max_rate must be at least 1 byte per second"),
        ({"max_rate": -5}, "max_rate"),
        ({"max_rate": "fast"}, "max_rate='fast' is not a rate"),
        ({"max_rate": True}, "max_rate must be bytes per second, not a bool"),
        ({"max_rate": [20]}, "max_rate must be an int or a string"),
        ({"max_rate": float("inf")}, "max_rate"),
        ({"max_rate_per_host": "20 parsecs"}, "max_rate_per_host='20 parsecs' is not a rate"),
        ({"requests_per_second": 0}, "requests_per_second"),
        ({"requests_per_second": -1.0}, "requests_per_second"),
        ({"requests_per_second": "5/s"}, "requests_per_second"),
        ({"requests_per_second": True}, "requests_per_second"),
        ({"requests_per_second": float("nan")}, "requests_per_second"),
    ],
)
def test_bad_values_are_an_option_error(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(OptionError, match=words):
        Options(**changes)


def test_option_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="retries"):
        Options(retries=-1)


def test_headers_are_copied() -> None:
    headers = {"X-Team": "a"}
    o = Options(headers=headers)
    headers["X-Team"] = "b"
    assert o.headers == {"X-Team": "a"}


def test_build_from_keywords() -> None:
    o = Options.build(retries=0, concurrency=2)
    assert (o.retries, o.concurrency) == (0, 2)


def test_build_names_unknown_options() -> None:
    with pytest.raises(OptionError, match="Options has no options 'colour', 'speed'; its options"):
        Options.build(speed=1, colour="red")


def test_build_on_a_base_keeps_its_values() -> None:
    base = Options(retries=7, backoff=0.1)
    o = Options.build(base, concurrency=3)
    assert (o.retries, o.backoff, o.concurrency) == (7, 0.1, 3)
    assert base.concurrency == 8


def test_build_treats_none_as_default_except_for_nullable_options() -> None:
    base = Options(retries=7, max_size=10, total_timeout=5.0, max_extract_size=10)
    o = Options.build(base, retries=None, max_size=None, total_timeout=None, max_extract_size=None)
    assert o.retries == 7
    assert o.max_size is None
    assert o.total_timeout is None
    assert o.max_extract_size is None


def test_names() -> None:
    assert {"concurrency", "retries", "timeout", "overwrite", "headers"} <= Options.names()


@pytest.mark.parametrize(
    "name",
    [
        "concurrency",
        "retries",
        "max_redirects",
        "segments",
        "max_extract_size",
        "max_extract_files",
    ],
)
def test_a_bool_is_not_taken_for_a_count(name: str) -> None:
    changes: dict[str, Any] = {name: True}
    with pytest.raises(OptionError, match="not a bool"):
        Options(**changes)


def test_storage_options_default_to_none_and_mask_their_secrets_in_reprs() -> None:
    assert Options().storage_options == {}
    o = Options(
        storage_options={
            "key": "AKIAEXAMPLE",
            "secret": "s3cr3t-value",
            "endpoint_url": "http://127.0.0.1:9000",
            "client_kwargs": {"aws_session_token": "t0ken-value", "region_name": "eu-west-1"},
        }
    )
    assert o.storage_options["secret"] == "s3cr3t-value"  # the value itself is kept
    text = repr(o)
    for secret in ("AKIAEXAMPLE", "s3cr3t-value", "t0ken-value"):
        assert secret not in text
    assert "http://127.0.0.1:9000" in text
    assert "eu-west-1" in text


@pytest.mark.parametrize("bad", ["endpoint_url=http://x", {1: "x"}, ["key"]])
def test_storage_options_must_be_a_mapping_of_names(bad: Any) -> None:
    with pytest.raises(OptionError, match="storage_options must be a mapping"):
        Options(storage_options=bad)


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        # Bare suffixes are 1024-based, as curl --limit-rate and wget --limit-rate read them.
        ("20M", 20 * 1024**2),
        ("20m", 20 * 1024**2),
        ("500k", 500 * 1024),
        ("500K", 500 * 1024),
        ("1G", 1024**3),
        ("1.5k", 1536),
        # SI units with a B are 1000-based; IEC units 1024-based.
        ("20MB/s", 20_000_000),
        ("20 MB / s", 20_000_000),
        ("500kB/s", 500_000),
        ("500KB", 500_000),
        ("2GB/s", 2_000_000_000),
        ("500KiB/s", 500 * 1024),
        ("20MiB", 20 * 1024**2),
        ("1GiB/s", 1024**3),
        # Bits, for a network link's figure.
        ("100Mbit/s", 12_500_000),
        ("8kbit", 1000),
        # Plain numbers are bytes per second.
        ("4096", 4096),
        ("4096B/s", 4096),
        (".5k", 512),
    ],
)
def test_parse_rate_reads_curl_and_si_and_iec_units(text: str, rate: int) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    "text", ["", "M", "20mb/s", "20Mb/s", "20 M B", "1e3", "-5M", "20M/h", "20MBps", "٢٠M", "0"]
)
def test_parse_rate_refuses_what_it_cannot_read_for_sure(text: str) -> None:
    # "20mb/s" could be bits or bytes: ask rather than guess.
    with pytest.raises(OptionError, match="max_rate"):
        parse_rate(text)


def test_rates_are_parsed_once_into_ints() -> None:
    o = Options(max_rate="20MB/s", max_rate_per_host="1M", requests_per_second=2)
    assert (o.max_rate, o.max_rate_per_host, o.requests_per_second) == (20_000_000, 1 << 20, 2)
    assert Options(max_rate=1234.4).max_rate == 1234
    assert Options.build(o, concurrency=2).max_rate == 20_000_000


def test_traffic_options_are_off_by_default_and_none_turns_them_off() -> None:
    o = Options()
    assert (o.max_rate, o.max_rate_per_host, o.requests_per_second) == (None, None, None)
    base = Options(max_rate="1M", max_rate_per_host="1M", requests_per_second=1.0)
    o = Options.build(base, max_rate=None, max_rate_per_host=None, requests_per_second=None)
    assert (o.max_rate, o.max_rate_per_host, o.requests_per_second) == (None, None, None)


def test_a_rate_cap_may_be_under_the_low_speed_limit() -> None:
    # The low-speed rule does not count waits for the cap's tokens (test_traffic_fetch).
    assert Options(max_rate=500).max_rate == 500
    assert Options(max_rate_per_host="800").max_rate_per_host == 800
