"""The traffic module on its own: buckets, pacing, the adaptive limit, RateLimit headers.

Pure parts run on an injected clock; the bucket and the pacer also run on a real loop.
The same pieces against real servers, measured there, are in test_traffic_servers.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from rheo_nb import HTTPStatusError, Options, Throttled
from rheo_nb.events import Event
from rheo_nb.traffic import (
    CATCH_UP,
    GROW_AFTER,
    READ_SIZE,
    RECEIVE_BUFFER,
    AdaptiveLimit,
    Pacer,
    TokenBucket,
    Traffic,
    _Fields,
    capped_socket,
    origin_of,
    read_quota,
)


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class VirtualTime(Clock):
    """A clock whose sleeps pass in no time: they move the clock instead."""

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)


class FakeSlots:
    """The connection limiter's interface, recording what the adaptive limit set."""

    def __init__(self, per_host: int, in_use: int | None = None) -> None:
        self.per_host = per_host
        self.used = in_use
        self.set: list[tuple[str, int]] = []

    def capacity(self, host: str) -> int:
        return self.per_host

    def set_capacity(self, host: str, n: int) -> None:
        self.set.append((host, n))

    def in_use(self, host: str) -> int:
        return self.per_host if self.used is None else self.used


# --- origins ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://example.org/data/x.csv?token=abc", "https://example.org"),
        ("https://alice:s3cret@Example.ORG:443/x", "https://example.org"),
        ("http://127.0.0.1:8080/files/a", "http://127.0.0.1:8080"),
        ("http://[::1]:9000/a", "http://[::1]:9000"),
    ],
)
def test_origin_is_scheme_host_and_port_without_secrets(url: str, origin: str) -> None:
    assert origin_of(url) == origin


def test_a_capped_socket_has_a_fixed_receive_buffer() -> None:
    info = socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)[0]
    with capped_socket(info) as sock:
        # Linux reports twice what was set (its bookkeeping), and no autotuning after.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) in (
            RECEIVE_BUFFER,
            2 * RECEIVE_BUFFER,
        )


# --- the token bucket: pure parts ------------------------------------------------------


def test_a_grant_is_a_read_buffer_at_most_and_a_sixteenth_of_a_second_at_low_rates() -> None:
    assert TokenBucket(100e6).quantum == READ_SIZE
    assert TokenBucket(1 << 20).quantum == (1 << 20) // 16
    assert TokenBucket(4096).quantum == 1024  # never below 1 KiB…
    assert TokenBucket(100).quantum == 100  # …unless that is more than a second's worth


def test_a_bucket_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        TokenBucket(0)


async def test_an_idle_bucket_holds_one_grant_whatever_the_lull() -> None:
    clock = Clock()
    bucket = TokenBucket(100e6, clock=clock)
    q = bucket.quantum
    clock.advance(3600)  # an hour of silence earns no burst
    at_once = 0
    while bucket._refill() >= 1:
        at_once += await bucket.take(q)
    assert at_once == q
    # The clock stands still: the next grant would have to wait for time that never comes.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bucket.take(q), 0.05)


async def test_a_newcomer_waits_behind_the_queue_even_when_tokens_are_there() -> None:
    clock = Clock()
    bucket = TokenBucket(100e6, clock=clock)
    q = bucket.quantum
    await bucket.take(q)
    order: list[str] = []

    async def take(name: str) -> None:
        await bucket.take(q)
        order.append(name)

    head = asyncio.create_task(take("head"))
    await asyncio.sleep(0.01)
    clock.advance(2.5 * q / bucket.rate)  # enough for both, before the head wakes to see it
    newcomer = asyncio.create_task(take("newcomer"))
    await asyncio.wait_for(asyncio.gather(head, newcomer), 1.0)
    assert order == ["head", "newcomer"]


async def test_a_short_gap_between_reads_keeps_its_tokens() -> None:
    # A single stream busy for a moment between two reads (a write to disk, a late
    # wake-up) must not lose the tokens of that moment, or it could never reach the cap.
    clock = Clock()
    bucket = TokenBucket(100e6, clock=clock)
    q = bucket.quantum
    await bucket.take(q)
    clock.advance(CATCH_UP * 0.9)
    at_once = 0
    while bucket._refill() >= q:
        at_once += await bucket.take(q)
    assert at_once >= 100e6 * CATCH_UP * 0.9 - q
    # A lull longer than that is idleness: one grant, no more.
    clock.advance(CATCH_UP * 1.1)
    assert bucket._refill() == q


async def test_a_refund_is_there_for_the_next_grant() -> None:
    clock = Clock()
    bucket = TokenBucket(1 << 20, clock=clock)
    q = bucket.quantum
    assert await bucket.take(q) == q
    bucket.refund(q // 2)  # only half was read
    assert await asyncio.wait_for(bucket.take(q // 2), 0.05) == q // 2


async def test_a_grant_is_no_bigger_than_asked() -> None:
    bucket = TokenBucket(1 << 20)
    assert await bucket.take(10) == 10
    assert await bucket.take(0) == 0


async def test_a_per_origin_bucket_also_takes_from_the_whole_call() -> None:
    clock = Clock()
    total = TokenBucket(1 << 20, clock=clock)
    host = TokenBucket(4 << 20, parent=total, clock=clock)
    assert await host.take(READ_SIZE) == total.quantum  # the smaller grant of the two
    with pytest.raises(TimeoutError):  # the call's bucket is empty now
        await asyncio.wait_for(host.take(1024), 0.05)
    assert host._tokens == host.quantum - total.quantum  # the cancelled wait gave them back
    host.refund(total.quantum)  # nothing was read: both buckets get it back
    assert await asyncio.wait_for(host.take(total.quantum), 0.05) == total.quantum


# --- the token bucket on a real loop -------------------------------------------------------


async def _stream(bucket: TokenBucket, until: float, got: list[int], i: int) -> None:
    while time.monotonic() < until:
        got[i] += await bucket.take(READ_SIZE)


async def test_streams_sharing_a_bucket_get_the_rate_between_them_and_no_more() -> None:
    rate = 4 << 20
    start = time.monotonic()
    bucket = TokenBucket(rate)
    got = [0] * 8
    async with asyncio.TaskGroup() as tg:
        for i in range(8):
            tg.create_task(_stream(bucket, start + 1.0, got, i))
    elapsed = time.monotonic() - start
    # One grant to start with, then the rate: never more. A loaded machine may give less.
    assert sum(got) <= bucket.quantum + rate * elapsed
    assert sum(got) >= rate * 0.5


async def test_no_stream_starves_first_come_first_served() -> None:
    bucket = TokenBucket(8 << 20)
    order: list[int] = []

    async def stream(i: int) -> None:
        for _ in range(5):
            await bucket.take(READ_SIZE)
            order.append(i)

    async with asyncio.TaskGroup() as tg:
        for i in range(16):
            tg.create_task(stream(i))
    # Grants go round in turn: at no moment is a stream more than two grants ahead of
    # another (the first one also had the bucket's first grant).
    counts = [0] * 16
    for i in order:
        counts[i] += 1
        assert max(counts) - min(c for c in counts if c < 5 or max(counts) == 5) <= 2


async def test_a_waiter_cancelled_in_the_queue_takes_nothing_and_holds_up_no_one() -> None:
    clock = Clock()
    bucket = TokenBucket(1 << 20, clock=clock)
    q = bucket.quantum
    await bucket.take(q)  # empty: each grant below needs the clock to move q / rate
    first = asyncio.create_task(bucket.take(q))
    second = asyncio.create_task(bucket.take(q))
    third = asyncio.create_task(bucket.take(q))
    await asyncio.sleep(0.01)
    second.cancel()
    clock.advance(q / bucket.rate)
    assert await asyncio.wait_for(first, 1.0) == q
    await asyncio.sleep(0.1)
    assert not third.done()
    clock.advance(q / bucket.rate)  # one more grant's time: the third's, not the second's
    assert await asyncio.wait_for(third, 1.0) == q
    assert second.cancelled()
    assert not bucket._queue


async def test_the_head_of_the_queue_cancelled_hands_its_turn_on() -> None:
    clock = Clock()
    bucket = TokenBucket(1 << 20, clock=clock)
    q = bucket.quantum
    await bucket.take(q)
    head = asyncio.create_task(bucket.take(q))
    nxt = asyncio.create_task(bucket.take(q))
    await asyncio.sleep(0.01)
    head.cancel()
    clock.advance(q / bucket.rate)
    assert await asyncio.wait_for(nxt, 1.0) == q
    assert not bucket._queue


# --- pacing ----------------------------------------------------------------------------


def test_starts_are_evenly_spaced_and_a_lull_earns_no_burst() -> None:
    clock = Clock()
    pacer = Pacer(4.0, clock=clock)
    assert [pacer.reserve() for _ in range(4)] == [0.0, 0.25, 0.5, 0.75]
    clock.advance(60)
    assert [pacer.reserve() for _ in range(3)] == [0.0, 0.25, 0.5]


def test_a_late_caller_waits_only_for_the_rest_of_its_interval() -> None:
    clock = Clock()
    pacer = Pacer(2.0, clock=clock)
    assert pacer.reserve() == 0.0
    clock.advance(0.2)
    assert pacer.reserve() == pytest.approx(0.3)


def test_a_pacer_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError, match="per_second"):
        Pacer(0)


async def test_requests_to_one_origin_start_evenly_on_a_real_loop() -> None:
    traffic = Traffic(Options(requests_per_second=20))
    url = "http://127.0.0.1:9/x"
    start = time.monotonic()
    tickets = await asyncio.gather(*(traffic.before_request(url, "d", url) for _ in range(6)))
    # The k-th start is k intervals after the first at the earliest (a sleep may run
    # long on a busy machine, never short beyond the timer's slack).
    for k, sent in enumerate(sorted(t.sent for t in tickets)):
        assert sent - start >= k * 0.05 - 0.002


async def test_other_origins_are_not_paced_by_a_busy_one() -> None:
    traffic = Traffic(Options(requests_per_second=0.1))
    a, b = "http://127.0.0.1:9/x", "http://127.0.0.1:10/x"
    await traffic.before_request(a, "d", a)
    await asyncio.wait_for(traffic.before_request(b, "d", b), 1.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(traffic.before_request(a, "d", a), 0.2)


# --- the adaptive limit ------------------------------------------------------------------


def test_each_throttle_halves_the_limit_down_to_one() -> None:
    limit = AdaptiveLimit(8)
    levels = [limit.throttled(sent=t, now=t + 0.01) for t in (1.0, 2.0, 3.0, 4.0, 5.0)]
    assert levels == [4, 2, 1, 1, 1]
    assert limit.strikes == 5


def test_answers_to_requests_sent_before_a_cut_are_old_news() -> None:
    limit = AdaptiveLimit(8)
    assert limit.throttled(sent=1.0, now=1.5) == 4
    # Eight requests were in flight: the other seven 429s say the same thing again.
    assert all(limit.throttled(sent=1.2, now=1.6) is None for _ in range(7))
    assert limit.limit == 4
    assert limit.throttled(sent=1.7, now=1.8) == 2


def test_the_cut_halves_what_was_running_when_fewer_than_the_limit_ran() -> None:
    limit = AdaptiveLimit(16)
    assert limit.throttled(sent=1.0, now=1.1, in_use=6) == 3


def test_a_run_of_successes_grows_the_limit_by_one_up_to_the_ceiling() -> None:
    limit = AdaptiveLimit(4, hold=0.0)
    limit.throttled(sent=0.0, now=0.0)
    assert limit.limit == 2
    t = 1.0
    grown = []
    for _ in range(40):
        t += 0.1
        if (n := limit.succeeded(sent=t, now=t)) is not None:
            grown.append(n)
    assert grown == [3, 4]
    assert limit.limit == limit.ceiling == 4


def test_growth_needs_twice_the_limit_in_successes_at_least_four() -> None:
    limit = AdaptiveLimit(16, hold=0.0)
    limit.throttled(sent=0.0, now=0.0)  # 8
    limit.throttled(sent=1.0, now=1.0)  # 4
    limit.throttled(sent=2.0, now=2.0)  # 2
    limit.throttled(sent=3.0, now=3.0)  # 1
    results = [limit.succeeded(sent=4.0 + i, now=4.0 + i) for i in range(GROW_AFTER)]
    assert results == [None] * (GROW_AFTER - 1) + [2]
    results = [limit.succeeded(sent=10.0 + i, now=10.0 + i) for i in range(4)]
    assert results == [None, None, None, 3]
    assert limit.run == 6


def test_successes_of_requests_sent_before_a_change_do_not_count() -> None:
    limit = AdaptiveLimit(8, hold=0.0)
    limit.throttled(sent=0.0, now=5.0)  # 4, changed at 5.0
    assert all(limit.succeeded(sent=4.0, now=6.0) is None for _ in range(50))
    assert limit.limit == 4


def test_a_limit_not_in_use_proves_nothing_about_a_higher_one() -> None:
    limit = AdaptiveLimit(8, hold=0.0)
    limit.throttled(sent=0.0, now=0.0)  # 4
    assert all(limit.succeeded(sent=1.0, now=1.0, in_use=2) is None for _ in range(50))
    assert limit.limit == 4


def test_the_refused_level_is_not_tried_again_until_the_hold_is_over() -> None:
    limit = AdaptiveLimit(8, hold=60.0)
    limit.throttled(sent=0.0, now=0.0, in_use=4)  # refused at 4: down to 2
    t = 1.0
    for _ in range(100):
        t += 0.1
        limit.succeeded(sent=t, now=t)
    assert limit.limit == 3  # 4 was refused less than a minute ago
    t = 61.0
    for _ in range(6):
        t += 0.1
        limit.succeeded(sent=t, now=t)
    assert limit.limit == 4


def test_a_success_clears_the_strikes() -> None:
    limit = AdaptiveLimit(8)
    limit.throttled(sent=0.0, now=0.0)
    limit.throttled(sent=1.0, now=1.0)
    assert limit.strikes == 2
    limit.succeeded(sent=2.0, now=2.0)
    assert limit.strikes == 0


# --- RateLimit headers ---------------------------------------------------------------------


def h(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


@pytest.mark.parametrize(
    ("headers", "quota"),
    [
        # The IETF draft: a list of policies, r the quota left, t the seconds until reset.
        (h(("RateLimit", '"default";r=0;t=30')), (0, 30.0)),
        (h(("RateLimit", '"default";r=5;t=30')), (5, 30.0)),
        (h(("RateLimit", '"burst";r=3;t=1, "daily";r=0;t=3600')), (0, 3600.0)),
        (h(("RateLimit", '"burst";r=3;t=1'), ("RateLimit", '"daily";r=0;t=7')), (0, 7.0)),
        (h(("ratelimit", '"default";r=0;t=30;pk=:cHJvamVjdC0xMjM=:')), (0, 30.0)),
        # No t: the window of the same policy in RateLimit-Policy.
        (
            h(
                ("RateLimit", '"hour";r=0'),
                ("RateLimit-Policy", '"min";q=10;w=60,"hour";q=99;w=3600'),
            ),
            (0, 3600.0),
        ),
        (h(("RateLimit", '"hour";r=0')), None),  # no way to know when: not a quota
        # Draft 07 and before: one dictionary.
        (h(("RateLimit", "limit=10, remaining=0, reset=12")), (0, 12.0)),
        (h(("RateLimit", "limit=10, remaining=2, reset=12")), (2, 12.0)),
        # Drafts 00 to 06, and GitHub's X- headers with seconds from now.
        (h(("RateLimit-Remaining", "0"), ("RateLimit-Reset", "9")), (0, 9.0)),
        (h(("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "2.5")), (0, 2.5)),
        (h(("X-RateLimit-Remaining", "1"), ("X-RateLimit-Reset", "2.5")), (1, 2.5)),
        (h(("X-RateLimit-Remaining", "0")), None),
        # Malformed fields are ignored, as the draft says.
        (h(("RateLimit", '"default";r=0;t=30,')), None),
        (h(("RateLimit", '"default";r=?0;t=30')), None),  # a boolean is not a count
        (h(("RateLimit", '"default";r=0;t=-5')), None),
        (h(("RateLimit", '"unterminated;r=0;t=5')), None),
        (h(("RateLimit", "remaining=0, reset=soon")), None),
        (h(("X-RateLimit-Remaining", "zero"), ("X-RateLimit-Reset", "5")), None),
        (h(("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "nan")), None),
        (h(("X-RateLimit-Remaining", "-1"), ("X-RateLimit-Reset", "5")), None),
        (h(), None),
    ],
)
def test_read_quota_reads_every_form_of_the_ratelimit_headers(
    headers: CIMultiDict[str], quota: tuple[int, float] | None
) -> None:
    assert read_quota(headers, now=0.0) == quota


def test_a_reset_of_a_billion_or_more_is_a_unix_time() -> None:
    headers = h(("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "1700000100"))
    assert read_quota(headers, now=1_700_000_000.0) == (0, 100.0)
    assert read_quota(headers, now=1_700_000_500.0) == (0, 0.0)  # already past
    ms = h(("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "1700000100000"))
    assert read_quota(ms, now=1_700_000_000.0) == (0, 100.0)


def test_a_unix_reset_is_read_against_the_servers_date_not_the_clients_clock() -> None:
    headers = h(
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", "1700000100"),
        ("Date", "Tue, 14 Nov 2023 22:13:00 GMT"),  # 1699999980
    )
    # The client's clock is ten minutes fast; the server's Date says 120 s are left.
    assert read_quota(headers, now=1_700_000_600.0) == (0, 120.0)


def test_a_plain_mapping_of_headers_is_read_too() -> None:
    assert read_quota({"RateLimit": '"default";r=0;t=4'}) == (0, 4.0)


@given(
    st.lists(
        st.tuples(
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
            st.dictionaries(
                st.from_regex(r"[a-z][a-z0-9_\-.*]{0,6}", fullmatch=True),
                st.integers(min_value=0, max_value=10**15 - 1),
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_structured_lists_read_back_what_was_written(
    items: list[tuple[str, dict[str, int]]],
) -> None:
    def string(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    text = ", ".join(string(name) + "".join(f";{k}={v}" for k, v in p.items()) for name, p in items)
    assert _Fields(text).items() == [(name, p) for name, p in items]


@given(st.text(max_size=60))
def test_any_header_text_is_read_or_ignored_never_a_crash(text: str) -> None:
    headers = h(("RateLimit", text), ("RateLimit-Policy", text), ("X-RateLimit-Remaining", text))
    quota = read_quota(headers, now=0.0)
    assert quota is None or (quota[0] >= 0 and quota[1] >= 0)


# --- one call's traffic, on an injected clock ----------------------------------------------


URL = "https://example.org/data/file.bin"


@dataclass
class Call:
    """One call's traffic on virtual time, and the events it emitted."""

    traffic: Traffic
    events: list[Event]
    clock: VirtualTime


def make(slots: FakeSlots | None = None, **options: Any) -> Call:
    events: list[Event] = []
    clock = VirtualTime()
    traffic = Traffic(
        Options.build(backoff=0.5, backoff_max=4.0, **options),
        emit=events.append,
        slots=slots,
        clock=clock,
        sleep=clock.sleep,
    )
    return Call(traffic, events, clock)


def test_no_cap_means_no_bucket_at_all() -> None:
    traffic = Traffic(Options())
    assert traffic.bucket(URL) is None
    assert traffic._origins == {}  # nothing was even set up for the origin


def test_one_bucket_for_the_whole_call_and_one_per_origin() -> None:
    traffic = Traffic(Options(max_rate="8M"))
    assert traffic.bucket(URL) is traffic.bucket("http://127.0.0.1:1/x") is not None
    traffic = Traffic(Options(max_rate="8M", max_rate_per_host="2M"))
    a, b = traffic.bucket(URL), traffic.bucket("http://127.0.0.1:1/x")
    assert a is not None
    assert b is not None
    assert a is not b
    assert a is traffic.bucket("https://example.org/other")
    assert (a.rate, a._parent) == (2 << 20, traffic._total)


async def test_a_429_without_retry_after_halves_the_origin_and_backs_off() -> None:
    slots = FakeSlots(8)
    call = make(slots)
    ticket = await call.traffic.before_request(URL, "id-1", URL)
    decision = call.traffic.after_response(ticket, 429, h())
    assert isinstance(decision, Throttled)
    assert call.events == [decision]
    assert (decision.origin, decision.concurrency, decision.previous) == (
        "https://example.org",
        4,
        8,
    )
    assert (decision.download_id, decision.url, decision.reason) == ("id-1", URL, "429")
    assert 0.25 <= decision.delay <= 0.5  # the first backoff step
    assert decision.message.startswith("example.org slowed to 4 connections: 429, waiting")
    assert slots.set == [("https://example.org", 4)]
    assert call.traffic.concurrency(URL) == 4
    # The other answers in flight at the time change nothing.
    assert call.traffic.after_response(ticket, 503, h()) is None
    assert len(call.events) == 1


@pytest.mark.parametrize("retry_after_max", [120.0, 0.0])
async def test_the_backoff_after_a_cut_holds_every_request_to_the_origin(
    retry_after_max: float,
) -> None:
    # retry_after_max=0 (wait for no server) leaves rheo_nb's own backoff in place.
    call = make(FakeSlots(8), retry_after_max=retry_after_max)
    ticket = await call.traffic.before_request(URL, "d", URL)
    decision = call.traffic.after_response(ticket, 429, h())
    assert decision is not None
    before = call.clock.now
    await call.traffic.before_request(URL, "d", URL)
    assert call.clock.now - before == pytest.approx(decision.delay)


async def test_retry_after_pauses_the_whole_origin_without_a_cut() -> None:
    slots = FakeSlots(8)
    call = make(slots)
    ticket = await call.traffic.before_request(URL, "d", URL)
    decision = call.traffic.after_response(ticket, 503, h(("Retry-After", "5")))
    assert decision is not None
    assert (decision.concurrency, decision.previous, decision.delay) == (8, 8, 5.0)
    assert decision.message == "example.org paused for 5.0s: 503, Retry-After"
    assert slots.set == []
    before = call.clock.now
    await call.traffic.before_request("https://other.example/x", "d3", "x")
    assert call.clock.now == before  # another origin goes at once
    await call.traffic.before_request(URL + "?2", "d2", URL)
    assert call.clock.now - before == pytest.approx(5.0)  # another file of this one waits


async def test_many_answers_asking_the_same_pause_make_one_event() -> None:
    call = make()
    tickets = [await call.traffic.before_request(URL, f"d{i}", URL) for i in range(8)]
    for ticket in tickets:
        call.traffic.after_response(ticket, 429, h(("Retry-After", "10")))
    assert len(call.events) == 1


async def test_retry_after_zero_is_no_pause_and_no_cut() -> None:
    call = make(FakeSlots(8))
    ticket = await call.traffic.before_request(URL, "d", URL)
    assert call.traffic.after_response(ticket, 503, h(("Retry-After", "0"))) is None
    assert call.events == []
    assert call.traffic.concurrency(URL) == 8


async def test_a_spent_quota_pauses_the_origin_until_its_reset() -> None:
    call = make()
    ticket = await call.traffic.before_request(URL, "d", URL)
    decision = call.traffic.after_response(ticket, 200, h(("RateLimit", '"default";r=0;t=30')))
    assert decision is not None
    assert (decision.reason, decision.delay) == ("quota spent", 30.0)
    before = call.clock.now
    await call.traffic.before_request(URL, "d", URL)
    assert call.clock.now - before == pytest.approx(30.0)


async def test_requests_in_flight_count_against_the_quota_an_answer_reports() -> None:
    call = make()
    # Four requests left before the first answer came back: it says 3 remain, but the
    # server has not counted the three sent after it yet. Nothing is left.
    tickets = [await call.traffic.before_request(URL, f"d{i}", URL) for i in range(4)]
    decision = call.traffic.after_response(tickets[0], 200, h(("RateLimit", '"q";r=3;t=10')))
    assert decision is not None
    assert (decision.reason, decision.delay) == ("quota spent", 10.0)
    before = call.clock.now
    await call.traffic.before_request(URL, "d5", URL)
    assert call.clock.now - before == pytest.approx(10.0)
    assert len(call.events) == 1


async def test_a_quota_left_is_spent_by_the_requests_that_follow() -> None:
    call = make()
    ticket = await call.traffic.before_request(URL, "d", URL)
    assert call.traffic.after_response(ticket, 200, h(("RateLimit", '"q";r=2;t=10'))) is None
    start = call.clock.now
    await call.traffic.before_request(URL, "d1", URL)
    await call.traffic.before_request(URL, "d2", URL)  # the last one the quota allows
    assert call.clock.now == start
    [spent] = call.events
    assert isinstance(spent, Throttled)
    assert spent.message == "example.org paused for 0:10: quota spent"
    await call.traffic.before_request(URL, "d3", URL)
    assert call.clock.now - start == pytest.approx(10.0)


async def test_a_429_that_reports_a_spent_quota_is_a_pause_not_a_cut() -> None:
    slots = FakeSlots(8)
    call = make(slots)
    ticket = await call.traffic.before_request(URL, "d", URL)
    decision = call.traffic.after_response(ticket, 429, h(("RateLimit", '"q";r=0;t=3')))
    assert decision is not None
    assert (decision.reason, decision.concurrency, decision.delay) == ("quota spent", 8, 3.0)
    assert slots.set == []


async def test_a_pause_longer_than_retry_after_max_fails_requests_at_once_unsent() -> None:
    call = make(retry_after_max=120)
    ticket = await call.traffic.before_request(URL, "d", URL)
    call.traffic.after_response(ticket, 429, h(("Retry-After", "3600")))
    shown = "https://example.org/data/other.bin"
    with pytest.raises(HTTPStatusError) as info:
        await asyncio.wait_for(call.traffic.before_request(URL, "d2", shown), 1.0)
    err = info.value
    assert (err.status, err.url) == (429, shown)
    assert err.retry_after == pytest.approx(3600)
    assert "not sent: example.org asks every request to wait 1:00:00" in str(err)
    assert call.clock.now == 1000.0  # and it did not wait at all
    call.clock.advance(3600)
    await call.traffic.before_request(URL, "d2", shown)


async def test_a_run_of_successes_grows_the_origin_back_with_an_event() -> None:
    slots = FakeSlots(8)
    call = make(slots)
    ticket = await call.traffic.before_request(URL, "d", URL)
    call.traffic.after_response(ticket, 429, h())
    call.clock.advance(10)
    call.events.clear()
    slots.used = 4
    for i in range(8):
        ticket = await call.traffic.before_request(URL, f"d{i}", URL)
        call.traffic.after_response(ticket, 200, h())
    [grown] = call.events
    assert isinstance(grown, Throttled)
    assert (grown.concurrency, grown.previous, grown.download_id) == (5, 4, "d7")
    assert grown.message == "example.org back up to 5 connections: 8 good answers in a row"
    assert slots.set[-1] == ("https://example.org", 5)


async def test_errors_other_than_429_and_503_neither_cut_nor_grow() -> None:
    call = make(FakeSlots(8, in_use=8))
    for status in (404, 500, 403, 416):
        ticket = await call.traffic.before_request(URL, "d", URL)
        assert call.traffic.after_response(ticket, status, h()) is None
    assert call.events == []


async def test_no_secret_of_the_url_reaches_an_event() -> None:
    call = make(FakeSlots(8))
    url = "https://alice:s3cret@example.org/f.bin?token=abc123"
    shown = "https://alice:***@example.org/f.bin?token=***"
    ticket = await call.traffic.before_request(url, "d", shown)
    decision = call.traffic.after_response(ticket, 429, h())
    assert decision is not None
    assert "s3cret" not in repr(decision)
    assert "abc123" not in repr(decision)
    assert "s3cret" not in decision.message
    assert "abc123" not in decision.message
    assert decision.origin == "https://example.org"
