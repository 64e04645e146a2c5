"""Properties of the pure parts, whatever the input: names never leave ``dest``, ranges
cover every byte exactly once, ``Content-Range`` parsing accepts only what is consistent,
waits stay within their bounds."""

from __future__ import annotations

import os
import random
from pathlib import PurePosixPath
from urllib.parse import quote

from hypothesis import assume, given
from hypothesis import strategies as st

from rheo_nb import files, retry, segments
from rheo_nb.errors import InvalidItemError
from rheo_nb.http import parse_content_range
from rheo_nb.segments import Segment

DEST = "/srv/data/dest"


def stays_in_dest(name: str) -> bool:
    """``name`` is one plain component: joined to dest, it lands directly inside it."""
    if not name:
        return True  # the caller falls back to a default name
    joined = os.path.normpath(os.path.join(DEST, name))
    return (
        os.path.dirname(joined) == DEST
        and os.path.basename(joined) == name
        and name not in (".", "..")
        and not name.startswith(".")
        and "\x00" not in name
    )


# --- names ----------------------------------------------------------------------------------------

hostile_text = st.text() | st.lists(
    st.sampled_from(["..", ".", "/", "\\", "%2e", "%2f", "\x00", "C:", "con", "~", " ", "a"]),
    max_size=12,
).map("".join)


@given(hostile_text)
def test_sanitize_name_never_escapes_dest(raw: str) -> None:
    assert stays_in_dest(files.sanitize_name(raw))


@given(hostile_text)
def test_names_from_url_paths_never_escape_dest(path: str) -> None:
    name = files.name_from_url("https://example.org/" + quote(path, safe="/%"))
    assert name
    assert stays_in_dest(name)


@given(hostile_text)
def test_content_disposition_names_never_escape_dest(raw: str) -> None:
    for header in (
        raw,
        f"attachment; filename={raw}",
        f'attachment; filename="{raw}"',
        f"attachment; filename*=UTF-8''{quote(raw, safe='')}",
        f"attachment; filename*=UTF-8''{raw}",
    ):
        assert stays_in_dest(files.name_from_disposition(header))


@given(st.binary(max_size=40))
def test_content_disposition_with_any_encoded_bytes_never_escapes_dest(raw: bytes) -> None:
    header = f"attachment; filename*=UTF-8''{quote(raw, safe='')}"
    assert stays_in_dest(files.name_from_disposition(header))


@given(st.lists(hostile_text, min_size=1, max_size=5).map("/".join))
def test_accepted_relative_paths_stay_under_dest(raw: str) -> None:
    try:
        rel = files.relative_path(raw)
    except InvalidItemError:
        return
    joined = os.path.normpath(os.path.join(DEST, *rel.parts))
    assert joined.startswith(DEST + "/")
    assert ".." not in PurePosixPath(joined).parts


# --- range planning -------------------------------------------------------------------------------


def assert_cover(segs: list[Segment], total: int) -> None:
    """Contiguous, in order, non-empty: every byte of ``total`` in exactly one segment."""
    position = 0
    for s in segs:
        assert s.start == position
        assert s.end > s.start
        assert 0 <= s.done <= s.size
        position = s.end
    assert position == total


def split(total: int, count: int, min_size: int) -> list[Segment]:
    """Segments as the coordinator makes them: one whole range, then idle connections
    each taking half of the range with the most left."""
    segs = [Segment(0, total)]
    while len(segs) < count and (new := segments.steal(segs, min_size)) is not None:
        owner = next(s for s in segs if s.end == new.start)
        segs.insert(segs.index(owner) + 1, new)
    return segs


@given(st.integers(1, 1 << 40), st.integers(1, 64))
def test_splitting_covers_every_byte_exactly_once(total: int, count: int) -> None:
    split_up = split(total, count, max(1, total // 256))
    assert_cover(split_up, total)
    assert 1 <= len(split_up) <= count


@given(
    st.integers(1, 1 << 34),
    st.integers(1, 16),
    st.lists(st.tuples(st.booleans(), st.floats(0, 1), st.integers(0, 1000)), max_size=40),
)
def test_progress_and_steals_keep_an_exact_cover(
    total: int, count: int, steps: list[tuple[bool, float, int]]
) -> None:
    min_size = max(1, total // 64)
    segs = split(total, count, min_size)
    for steal, fraction, which in steps:
        if steal:
            new = segments.steal(segs, min_size)
            if new is None:
                continue
            assert new.done == 0
            owner = next(s for s in segs if s.end == new.start)
            assert owner.position <= new.start  # never takes bytes already on disk
            segs.insert(segs.index(owner) + 1, new)
        else:
            s = segs[which % len(segs)]
            s.done += int(s.remaining * fraction)
        assert_cover(segs, total)


@given(st.integers(1, 1 << 34), st.integers(1, 16), st.randoms(use_true_random=False))
def test_restore_round_trips_and_rejects_what_is_not_a_cover(
    total: int, count: int, rnd: random.Random
) -> None:
    segs = split(total, count, max(1, total // 64))
    for s in segs:
        s.done = rnd.randint(0, s.size)
    raw = [s.as_list() for s in segs]
    assert segments.restore(raw, total) == segs
    broken = [list(x) for x in raw]
    i = rnd.randrange(len(broken))
    kind = rnd.choice(["overlap", "gap", "done", "total"])
    if kind == "overlap" and broken[i][0] > 0:
        broken[i][0] -= 1
    elif kind == "gap":
        broken[i][0] += 1
    elif kind == "done":
        broken[i][2] = broken[i][1] - broken[i][0] + 1
    else:
        assert segments.restore(raw, total + 1) is None
        return
    if broken != raw:
        assert segments.restore(broken, total) is None


# --- Content-Range --------------------------------------------------------------------------------


@given(st.integers(0, 1 << 50), st.integers(0, 1 << 50), st.integers(1, 1 << 50))
def test_content_range_parses_consistent_values_back(a: int, b: int, total: int) -> None:
    start, end = min(a, b), max(a, b)
    parsed = parse_content_range(f"bytes {start}-{end}/{total}")
    if end < total:
        assert parsed == (start, end, total)
    else:
        assert parsed is None  # a range past the end of the file


@given(st.integers(0, 1 << 50), st.integers(0, 1 << 50))
def test_content_range_rejects_a_backward_range(a: int, b: int) -> None:
    assume(a != b)
    assert parse_content_range(f"bytes {max(a, b)}-{min(a, b)}/*") is None


#: Characters that ``str.isdigit`` accepts but ``int`` does not, or that are digits of
#: other scripts: a header is ASCII, and none of them is a number in it.
NOT_ASCII_DIGITS = "²³¹⁰₀①١٠٣۵߁०๑０９"

header_text = st.text(
    alphabet=" bytes0123456789-/*,+xB\t" + NOT_ASCII_DIGITS, max_size=30
) | st.text(max_size=30)


@given(header_text)
def test_content_range_parsing_accepts_only_consistent_ranges(value: str) -> None:
    parsed = parse_content_range(value)
    if parsed is None:
        return
    start, end, total = parsed
    if start == -1:
        assert end == -1
        assert total is not None
        assert total >= 0
        return
    assert 0 <= start <= end
    assert total is None or end < total
    assert value.strip().isascii()


@given(st.sampled_from(NOT_ASCII_DIGITS), st.integers(0, 2))
def test_content_range_with_other_digits_is_rejected(digit: str, where: int) -> None:
    parts = ["5", "9", "10"]
    parts[where] = digit
    assert parse_content_range(f"bytes {parts[0]}-{parts[1]}/{parts[2]}") is None


# --- waits ----------------------------------------------------------------------------------------


@given(
    st.integers(1, 100),
    st.floats(0, 60, allow_nan=False),
    st.floats(0, 600, allow_nan=False),
    st.randoms(use_true_random=False),
)
def test_backoff_stays_within_its_capped_bounds(
    attempt: int, base: float, cap: float, rnd: random.Random
) -> None:
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    delay = retry.backoff(attempt, base, cap, rnd)
    assert ceiling / 2 <= delay <= ceiling


@given(header_text | st.text(alphabet=NOT_ASCII_DIGITS, min_size=1))
def test_retry_after_never_raises_and_is_never_negative(value: str) -> None:
    parsed = retry.parse_retry_after(value, now=1_700_000_000)
    assert parsed is None or parsed >= 0
