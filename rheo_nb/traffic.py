"""Traffic shaping: bandwidth caps, paced request starts, and slowing down when a server
pushes back.

One :class:`Traffic` per call holds it all, per origin (scheme, host and port):

* :class:`TokenBucket`: bytes per second shared by every stream that holds it, one for
  the whole call (``max_rate``) and one per origin (``max_rate_per_host``);
* :class:`Pacer`: evenly spaced request starts to one origin (``requests_per_second``);
* :class:`AdaptiveLimit`: the connections an origin is allowed, halved when it answers
  429 or 503 and grown back by one after a run of successes (AIMD);
* :func:`read_quota`: what the ``RateLimit`` headers (the IETF draft, its older forms and
  GitHub's ``X-RateLimit-*``) say is left of the quota, and when it is back; the requests
  already on their way count against it, and once it is spent the origin waits.

A transfer meets it at three points::

    bucket = traffic.bucket(url)            # None without a cap: the read loop tests None
    ticket = await traffic.before_request(url, download_id, display_url)  # every request
    traffic.after_response(ticket, resp.status, resp.headers)
    if traffic.excuses(ticket, resp.status): ...   # a 429 not held against its file

and, when ``bucket`` is not None, around every read::

    n = await bucket.take(want)             # tokens for the bytes about to be read
    data = await resp.content.read(n)
    bucket.refund(n - len(data))

Under a cap, what a stream reads at a time and its socket's receive buffer are sized from
its share of the cap (:attr:`Traffic.read_size`, :attr:`Traffic.socket_factory`). Each
decision about an origin is emitted as a :class:`~rheo_nb.Throttled` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

from multidict import MultiMapping
from yarl import URL

from . import retry
from .errors import HTTPStatusError
from .events import Event, Throttled
from .format import duration
from .items import host_key
from .options import Options, parse_rate

#: The most bytes one stream reads at a time (aiohttp's read buffer in the transfer).
READ_SIZE = 1 << 17
#: The largest receive buffer of a capped connection (Linux doubles it for its
#: bookkeeping): small enough that a connection holds little more than a read buffer
#: ahead of the cap; it also bounds one connection to about 1.5 MB/s at a 100 ms round
#: trip.
RECEIVE_BUFFER = 1 << 17
#: Under a cap, what a connection reads at a time, and its receive buffer, hold about
#: this many seconds of its share of the cap (and at most :data:`READ_SIZE`). The server
#: sees a connection's bytes when its buffers refill, not when they are read: buffers
#: of a fixed size, refilled in step by many connections with small shares, reach the
#: server in bursts of seconds of the cap. Sized from the share, all the buffers of a
#: call hold a few times this long of the whole cap, however many connections share it.
#: The price: a connection carries its share only up to round trips of about this long.
SHARE_TIME = 1 / 16
#: The smallest read under a cap, however small the share.
MIN_READ = 1024
#: One grant is at most this long at the bucket's rate, so that low rates flow smoothly.
GRANT_TIME = 1 / 16
#: Tokens of a gap this short (seconds) are kept for the streams that use the bucket; a
#: longer lull is idleness, and an idle bucket holds a single grant.
CATCH_UP = 0.05
#: The fewest successes in a row that grow an adaptive limit by one.
GROW_AFTER = 4
#: After a cut, the level that was refused is not tried again for this long (seconds).
HOLD = 60.0
#: Statuses that say "too much, slow down".
THROTTLE_STATUSES = frozenset({429, 503})

Headers = MultiMapping[str] | Mapping[str, str]


def origin_of(url: URL | str) -> str:
    """``"https://example.org"``: scheme, host and port (when not the default) of ``url``,
    as the connection limiter keys it (:func:`rheo_nb.items.host_key`).

    Never user info, path or query, so it is safe to show.
    """
    if isinstance(url, str):
        return host_key(url)
    # A request's URL is a yarl URL, whose parts are parsed once and cached: cheaper than
    # parsing its text again for every request.
    scheme, host, port = url.scheme, url.raw_host or "", url.explicit_port
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def capped_socket(addr_info: tuple[Any, ...], size: int = RECEIVE_BUFFER) -> socket.socket:
    """A socket with a fixed receive buffer of ``size`` bytes, for aiohttp's
    ``TCPConnector(socket_factory=...)`` when a rate cap is on
    (:attr:`Traffic.socket_factory` gives it the size the cap's shares call for).

    Without it, Linux grows a connection's receive buffer as the client reads
    (autotuning), by megabytes, and the server sees those megabytes leave at full speed
    seconds into the download, far above the cap.
    """
    family, kind, proto = addr_info[:3]
    sock = socket.socket(family, kind, proto)
    # A platform without the option keeps its own sizing.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock


def share_read_size(rate: float, connections: int) -> int:
    """What one of ``connections`` streams sharing ``rate`` bytes per second reads at a
    time, and its receive buffer: :data:`SHARE_TIME` of its share, between
    :data:`MIN_READ` and :data:`READ_SIZE`.

    >>> share_read_size(8 << 20, 64), share_read_size(8 << 20, 4), share_read_size(4096, 8)
    (8192, 131072, 1024)
    """
    share = rate / max(1, connections)
    return max(MIN_READ, min(READ_SIZE, int(share * SHARE_TIME)))


def _ignore(event: Event) -> None:
    pass


# --- bandwidth ----------------------------------------------------------------------------


class TokenBucket:
    """Bytes per second, shared by every stream that holds the bucket.

    A stream asks before it reads: ``n = await bucket.take(want)`` grants at most
    ``want`` bytes (and at most :attr:`quantum`), waiting its turn; the stream reads at
    most ``n`` bytes and gives back what it did not read with :meth:`refund`. Waiters are
    served first come, first served, one grant each, so every stream moves. A bucket
    left idle for more than :data:`CATCH_UP` holds one grant, so a burst after a lull is
    at most one grant over the rate. With a ``parent`` (the whole call's bucket above one
    origin's), a grant needs tokens of both.

    >>> bucket = TokenBucket(parse_rate("20MB/s"))        # doctest: +SKIP
    >>> n = await bucket.take(1 << 17)                    # doctest: +SKIP
    """

    __slots__ = (
        "_clock",
        "_last",
        "_parent",
        "_queue",
        "_tokens",
        "granted",
        "quantum",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        *,
        read_size: int = READ_SIZE,
        parent: TokenBucket | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 bytes per second, not {rate!r}")
        self.rate = float(rate)
        #: The most one :meth:`take` grants: a read buffer, or less at low rates, so that
        #: one grant never stands for more than about a sixteenth of a second.
        self.quantum = max(min(1024, int(rate)), min(read_size, int(rate * GRANT_TIME)))
        self._parent = parent
        self._clock = clock
        self._tokens = float(self.quantum)
        self._last = clock()
        self._queue: deque[asyncio.Future[None]] = deque()
        #: Bytes granted so far, less those given back: what the streams took of the rate.
        self.granted = 0

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, quantum={self.quantum})"

    @property
    def parent(self) -> TokenBucket | None:
        """The bucket above this one (the whole call's, above an origin's), if any."""
        return self._parent

    async def take(self, want: int) -> int:
        """Wait for, and take, tokens for up to ``want`` bytes; returns how many."""
        n = min(want, self.quantum)
        if n <= 0:
            return 0
        if self._queue or self._refill() < n:
            await self._wait(n)
        else:
            self._tokens -= n
        if self._parent is not None:
            try:
                got = await self._parent.take(n)
            except BaseException:
                self._tokens += n
                raise
            self._tokens += n - got
            n = got
        self.granted += n
        return n

    def refund(self, n: int) -> None:
        """Give back tokens taken for bytes that were not read after all."""
        if n > 0:
            self._tokens += n
            self.granted -= n
            if self._parent is not None:
                self._parent.refund(n)

    def _refill(self) -> float:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        self._tokens += elapsed * self.rate
        # An idle bucket holds one grant. But a gap shorter than CATCH_UP is not idleness:
        # streams are waiting for their turn, or a stream is busy between two reads (its
        # write, a late wake-up of the loop); the tokens of that gap are still theirs.
        idle = elapsed >= CATCH_UP and not self._queue
        most = self.quantum + (0.0 if idle else self.rate * CATCH_UP)
        if self._tokens > most:
            self._tokens = most
        return self._tokens

    async def _wait(self, n: int) -> None:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refill()
        self._queue.append(turn)
        try:
            if self._queue[0] is not turn:
                await turn
            # Tokens come with time, not with an event: sleep until enough have come.
            while (short := n - self._refill()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(short / self.rate)
            self._tokens -= n
        finally:
            self._leave(turn)

    def _leave(self, turn: asyncio.Future[None]) -> None:
        if self._queue[0] is not turn:  # cancelled while waiting for its turn
            self._queue.remove(turn)
            return
        self._refill()
        self._queue.popleft()
        if self._queue and not self._queue[0].done():
            self._queue[0].set_result(None)


# --- request starts -----------------------------------------------------------------------


class Pacer:
    """Evenly spaced request starts: one every ``1 / per_second`` seconds, no burst.

    :meth:`reserve` books the next start and says how long to wait for it; after a lull
    the first start goes at once and the next one a full interval later.

    >>> pacer = Pacer(2.0, clock=lambda: 10.0)
    >>> pacer.reserve(), pacer.reserve(), pacer.reserve()
    (0.0, 0.5, 1.0)
    """

    __slots__ = ("_clock", "_next", "interval")

    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not per_second > 0:
            raise ValueError(f"per_second must be > 0, not {per_second!r}")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._next = -math.inf

    def reserve(self) -> float:
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval
        return start - now


# --- adaptive concurrency -----------------------------------------------------------------


class AdaptiveLimit:
    """How many connections one origin is allowed: additive increase, multiplicative
    decrease.

    A 429 or 503 (without a wait the server named) halves the level the origin was
    answering at, down to 1. Answers to requests sent before that cut say nothing new and
    are ignored. After twice as many successes in a row as the limit (at least
    :data:`GROW_AFTER`), counted only while the limit is in use, the limit grows by one,
    up to ``ceiling``; but not back to a level that was refused, for ``hold`` seconds.
    ``strikes`` counts cuts since the last success, for the backoff that follows a cut.

    >>> limit = AdaptiveLimit(8)
    >>> limit.throttled(sent=1.0, now=1.1)
    4
    >>> limit.throttled(sent=1.05, now=1.2) is None    # sent before the cut: old news
    True
    """

    __slots__ = (
        "_bad",
        "_bad_until",
        "_changed",
        "_cut",
        "_successes",
        "ceiling",
        "hold",
        "limit",
        "strikes",
    )

    def __init__(self, ceiling: int, *, hold: float = HOLD) -> None:
        self.ceiling = self.limit = max(1, ceiling)
        self.hold = hold
        self.strikes = 0
        self._cut = self._changed = self._bad_until = -math.inf
        self._bad = self.ceiling + 1
        self._successes = 0

    def throttled(self, sent: float, now: float, in_use: int | None = None) -> int | None:
        """A 429/503 to a request sent at ``sent``: the new limit, or None when ignored.

        ``in_use``: connections open to the origin, when known: the level to halve when
        fewer than the limit were running.
        """
        if sent <= self._cut:
            return None
        level = self.limit if in_use is None else max(1, min(self.limit, in_use))
        self.limit = max(1, level // 2)
        self._bad, self._bad_until = level, now + self.hold
        self._cut = self._changed = now
        self._successes = 0
        self.strikes += 1
        return self.limit

    def succeeded(self, sent: float, now: float, in_use: int | None = None) -> int | None:
        """A good answer to a request sent at ``sent``: the new limit when it grew."""
        if sent <= self._changed:
            return None
        self.strikes = 0
        if self.limit >= self.ceiling or (in_use is not None and in_use < self.limit):
            return None  # a limit not in use proves nothing about a higher one
        self._successes += 1
        if self._successes < self.run:
            return None
        if self.limit + 1 >= self._bad and now < self._bad_until:
            return None
        self.limit += 1
        self._successes = 0
        self._changed = now
        return self.limit

    @property
    def refused(self) -> int:
        """The level the last cut halved: the connections that were too many."""
        return self._bad

    @property
    def run(self) -> int:
        """Successes in a row that grow the limit by one."""
        return max(GROW_AFTER, 2 * self.limit)


# --- the servers' own words: RateLimit headers ------------------------------------------

_SF_VALUE = re.compile(
    r'"(?P<s>(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"])*)"'
    r"|(?P<n>-?[0-9]{1,15}(?:\.[0-9]{1,3})?)"
    r"|(?P<t>[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*)"
    r"|:(?P<b>[A-Za-z0-9+/=]*):"
    r"|\?(?P<q>[01])"
)
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_T = TypeVar("_T")
SfValue = str | int | float | bool
SfParams = dict[str, SfValue]


class _Fields:
    """Reads RFC 9651 structured field values, as far as the RateLimit fields need: lists
    of items and dictionaries (no inner lists, no dates). Raises ValueError when the text
    is not well formed; a caller then ignores the whole field, as the draft asks."""

    def __init__(self, text: str) -> None:
        self.text = text.strip(" ")
        self.pos = 0

    def items(self) -> list[tuple[SfValue, SfParams]]:
        return self._members(lambda: self._item())

    def dictionary(self) -> dict[str, tuple[SfValue, SfParams]]:
        def member() -> tuple[str, tuple[SfValue, SfParams]]:
            key = self._key()
            if self._eat("="):
                return key, self._item()
            return key, (True, self._params())

        return dict(self._members(member))

    def _members(self, read: Callable[[], _T]) -> list[_T]:
        out: list[_T] = []
        while self.pos < len(self.text):
            out.append(read())
            self._gap()
            if self.pos == len(self.text):
                return out
            if not self._eat(","):
                raise ValueError("expected a comma")
            self._gap()
            if self.pos == len(self.text):
                raise ValueError("a trailing comma")
        return out

    def _gap(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def _item(self) -> tuple[SfValue, SfParams]:
        return self._value(), self._params()

    def _params(self) -> SfParams:
        params: SfParams = {}
        while self._eat(";"):
            while self._eat(" "):
                pass
            key = self._key()
            params[key] = self._value() if self._eat("=") else True
        return params

    def _value(self) -> SfValue:
        m = _SF_VALUE.match(self.text, self.pos)
        if m is None:
            raise ValueError("expected a value")
        self.pos = m.end()
        if m["s"] is not None:
            return re.sub(r"\\(.)", r"\1", m["s"])
        if m["n"] is not None:
            number = m["n"]
            if "." in number:
                if len(number.split(".")[0].lstrip("-")) > 12:
                    raise ValueError("a decimal too large")
                return float(number)
            return int(number)
        if m["q"] is not None:
            return m["q"] == "1"
        return m["t"] if m["t"] is not None else m["b"]

    def _key(self) -> str:
        m = _SF_KEY.match(self.text, self.pos)
        if m is None:
            raise ValueError("expected a key")
        self.pos = m.end()
        return m.group()

    def _eat(self, char: str) -> bool:
        if self.text.startswith(char, self.pos):
            self.pos += 1
            return True
        return False


def _field(headers: Headers, name: str) -> str | None:
    """The field's value; several lines of it joined as one list, as RFC 9110 says."""
    if isinstance(headers, MultiMapping):
        values = headers.getall(name, ())
        return ", ".join(values) if values else None
    return headers.get(name)


def _number(value: object) -> float | None:
    """A count or a number of seconds: an int or a decimal, not negative, not a bool."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def read_quota(headers: Headers, now: float | None = None) -> tuple[int, float] | None:
    """``(remaining, reset)``: requests the server still allows, and the seconds until its
    quota is back, from the most restrictive RateLimit header of the response.

    None without one that says both, and for malformed fields, which are ignored.
    ``now`` is the wall clock (for tests). Read:

    * ``RateLimit: "default";r=0;t=30`` (the IETF httpapi draft: a structured list of
      policies; ``t`` the seconds until the quota is back, else the window ``w`` that
      ``RateLimit-Policy`` gives the same policy), and its older dictionary form
      ``RateLimit: limit=10, remaining=0, reset=30``;
    * ``RateLimit-Remaining`` / ``RateLimit-Reset`` (earlier drafts) and GitHub's
      ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset``. A reset of 10**9 or more is a
      Unix time (10**12 or more, in milliseconds), measured against the response's
      ``Date`` when it has one; smaller values are seconds from now.

    >>> read_quota({"RateLimit": '"default";r=0;t=30'})
    (0, 30.0)
    """
    if not (
        "RateLimit" in headers
        or "RateLimit-Remaining" in headers
        or "X-RateLimit-Remaining" in headers
    ):
        return None  # most answers: three lookups, nothing parsed
    found = [
        *_ietf_quotas(headers),
        *_pair_quota(headers, "RateLimit-", now),
        *_pair_quota(headers, "X-RateLimit-", now),
    ]
    # The fewest requests left binds; of equals, the later reset.
    return min(found, key=lambda q: (q[0], -q[1])) if found else None


def _ietf_quotas(headers: Headers) -> list[tuple[int, float]]:
    value = _field(headers, "RateLimit")
    if value is None:
        return []
    try:
        items = _Fields(value).items()
    except ValueError:
        try:  # the dictionary of draft 07 and before: limit=10, remaining=0, reset=30
            members = _Fields(value).dictionary()
        except ValueError:
            return []
        left, reset = (_number(members.get(k, (None,))[0]) for k in ("remaining", "reset"))
        return [] if left is None or reset is None else [(int(left), reset)]
    windows = _policy_windows(headers)
    found = []
    for name, params in items:
        left, reset = _number(params.get("r")), _number(params.get("t"))
        if reset is None and isinstance(name, str):
            reset = windows.get(name)
        if left is not None and reset is not None:
            found.append((int(left), reset))
    return found


def _policy_windows(headers: Headers) -> dict[str, float]:
    value = _field(headers, "RateLimit-Policy")
    try:
        items = _Fields(value).items() if value is not None else []
    except ValueError:
        return {}
    return {
        name: w
        for name, params in items
        if isinstance(name, str) and (w := _number(params.get("w"))) is not None
    }


def _pair_quota(headers: Headers, prefix: str, now: float | None) -> list[tuple[int, float]]:
    try:
        left = float(_field(headers, prefix + "Remaining") or "x")
        reset = float(_field(headers, prefix + "Reset") or "x")
    except ValueError:
        return []
    if not (math.isfinite(left) and left >= 0 and math.isfinite(reset) and reset >= 0):
        return []
    if reset >= 1e9:
        if reset >= 1e12:
            reset /= 1000
        # Against the server's own clock when it says what time it is: a client clock
        # that is off by minutes would otherwise wait minutes too long, or not at all.
        base = _server_time(headers)
        if base is None:
            base = time.time() if now is None else now
        reset = max(0.0, reset - base)
    return [(int(left), reset)]


def _server_time(headers: Headers) -> float | None:
    value = _field(headers, "Date")
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return None if when.tzinfo is None else when.timestamp()


# --- one call's traffic -------------------------------------------------------------------


class HostSlots(Protocol):
    """The per-origin connection limiter the adaptive limit steers (``client.HostLimiter``).

    Keys are origins as :func:`origin_of` spells them; ``per_host`` is the capacity of an
    origin the limiter has not been told otherwise about.
    """

    per_host: int

    def capacity(self, host: str) -> int: ...
    def set_capacity(self, host: str, n: int) -> None: ...
    def in_use(self, host: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request on its way: what :meth:`Traffic.after_response` needs to judge it."""

    origin: str
    sent: float
    download_id: str
    url: str  # masked, for events and messages
    number: int  # of the requests sent to the origin, this one included


class _Origin:
    __slots__ = (
        "asked_until",
        "bucket",
        "eased",
        "limit",
        "pacer",
        "paused_until",
        "quota_left",
        "quota_until",
        "reacted_at",
        "reacted_to",
        "reason",
        "sent",
        "status",
    )

    def __init__(self, bucket: TokenBucket | None, pacer: Pacer | None, ceiling: int) -> None:
        self.bucket = bucket
        self.pacer = pacer
        self.limit = AdaptiveLimit(ceiling)
        #: No request starts before this (a pause the server asked for, or a backoff).
        self.paused_until = -math.inf
        #: The end of the last pause the server asked for, with its status and reason.
        self.asked_until = -math.inf
        self.status = 429
        self.reason = ""
        #: Requests the server's quota still allows until ``quota_until`` (None: no quota
        #: known), counting those sent since the answer that told it.
        self.quota_left: int | None = None
        self.quota_until = -math.inf
        #: Requests sent to the origin so far.
        self.sent = 0
        #: When the origin was last slowed down (a cut, or the start of a pause), the
        #: number of the request whose answer did it, and whether that answer lowered
        #: the connections in use (a pause, or a cut at one connection, does not).
        self.reacted_at = -math.inf
        self.reacted_to = 0
        self.eased = False


class Traffic:
    """The traffic of one call: caps, pacing and backoff, per origin.

    ``emit`` receives a :class:`~rheo_nb.Throttled` event for every decision; ``slots``
    is the connection limiter whose per-origin capacity the adaptive limit sets; ``clock``
    and ``sleep`` are the time every pause and pace is measured and waited in.

    >>> traffic = Traffic(Options(max_rate="20MB/s", requests_per_second=5))  # doctest: +SKIP
    >>> bucket = traffic.bucket(url)                                         # doctest: +SKIP
    >>> ticket = await traffic.before_request(url, download_id, shown_url)   # doctest: +SKIP
    >>> traffic.after_response(ticket, resp.status, resp.headers)            # doctest: +SKIP
    """

    def __init__(
        self,
        options: Options,
        *,
        emit: Callable[[Event], object] = _ignore,
        slots: HostSlots | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.options = options
        self._emit = emit
        self._slots = slots
        self._clock = clock
        self._sleep = sleep
        total = options.max_rate
        per_host = options.max_rate_per_host
        # The most connections a bucket may feed: every download holds one of its origin,
        # and a split file borrows more of them.
        host_slots = options.concurrency if slots is None else slots.per_host
        connections = max(options.concurrency, host_slots)
        self._total = None
        self._per_host = None if per_host is None else parse_rate(per_host)
        sizes = []
        if total is not None:
            rate = parse_rate(total)
            sizes.append(share_read_size(rate, connections))
            self._total = TokenBucket(rate, read_size=sizes[-1], clock=clock)
        if self._per_host is not None:
            sizes.append(share_read_size(self._per_host, host_slots))
        #: What a capped stream reads at a time, and its socket's receive buffer (None:
        #: no cap). See :data:`SHARE_TIME`.
        self.read_size = min(sizes) if sizes else None
        self._origins: dict[str, _Origin] = {}

    @property
    def socket_factory(self) -> Callable[[tuple[Any, ...]], socket.socket] | None:
        """The sockets of a capped call (:func:`capped_socket`, sized from the shares of
        the cap), for ``aiohttp.TCPConnector(socket_factory=...)``; None without a cap."""
        if self.read_size is None:
            return None
        return functools.partial(capped_socket, size=self.read_size)

    def bucket(self, url: URL | str) -> TokenBucket | None:
        """The bucket a stream from ``url`` takes its tokens from; None when uncapped."""
        if self._per_host is None:
            return self._total
        return self._origin(origin_of(url)).bucket

    def concurrency(self, url: URL | str) -> int:
        """The connections the origin of ``url`` is allowed now."""
        return self._origin(origin_of(url)).limit.limit

    async def before_request(self, url: URL | str, download_id: str, display_url: str) -> Ticket:
        """Wait until a request to ``url`` may start: the origin's pause, then its pace.

        Raises :class:`HTTPStatusError` at once, without sending anything, while the
        origin has asked every request to wait longer than ``retry_after_max``.
        """
        key = origin_of(url)
        o = self._origin(key)
        while True:
            now = self._clock()
            asked = o.asked_until - now
            if asked > self.options.retry_after_max:
                host = key.partition("://")[2]
                raise HTTPStatusError(
                    display_url,
                    o.status,
                    f"(not sent: {host} asks every request to wait {duration(asked)}: {o.reason})",
                    retry_after=asked,
                )
            wait = o.paused_until - now
            if wait > 0:
                await self._sleep(wait)
                continue
            if o.pacer is not None and (delay := o.pacer.reserve()) > 0:
                await self._sleep(delay)
            now = self._clock()
            if o.paused_until <= now:  # no pause began while it waited its pace
                break
        o.sent += 1
        ticket = Ticket(key, now, download_id, display_url, o.sent)
        if o.quota_left is not None:
            if now >= o.quota_until:
                o.quota_left = None  # that window is over: the next answer tells the new one
            else:
                o.quota_left -= 1
                self._spent(o, ticket)
        return ticket

    def after_response(self, ticket: Ticket, status: int, headers: Headers) -> Throttled | None:
        """Learn from an answer; the decision it led to, if any (also emitted)."""
        o = self._origins[ticket.origin]
        spent = None
        quota = read_quota(headers)
        if quota is not None:
            self._budget(o, ticket, *quota)
            spent = self._spent(o, ticket)
        if status in THROTTLE_STATUSES:
            after = retry.parse_retry_after(_field(headers, "Retry-After"))
            if after is not None:  # the server named the wait: no guessing
                return self._pause(o, ticket, status, after, f"{status}, Retry-After")
            if quota is not None and o.quota_left is not None and o.quota_left <= 0:
                return spent  # a quota, not an overload
            return self._cut(o, ticket, status)
        if spent is not None or status >= 400:
            return spent
        return self._grow(o, ticket)

    def excuses(self, ticket: Ticket, status: int) -> bool:
        """Whether a 429 or 503, once :meth:`after_response` has learnt from it, is not
        held against the file that drew it: its retry is not counted in ``retries``.

        Excused: an answer that cut the connections in use to the origin, and one to a
        request sent before the origin was slowed down (the cut or pause it would ask for
        is in place). Held: any other, which is what ends a file whose server keeps
        refusing it: one that finds a single connection in use already, one that starts
        a pause (``Retry-After``, a spent quota), a ``Retry-After: 0``.
        """
        if status not in THROTTLE_STATUSES:
            return False
        o = self._origins[ticket.origin]
        if o.reacted_to == ticket.number:
            return o.eased
        return ticket.sent < o.reacted_at

    def pause_left(self, url: URL | str) -> float:
        """Seconds until requests to the origin of ``url`` may start again (0: now)."""
        o = self._origins.get(origin_of(url))
        return 0.0 if o is None else max(0.0, o.paused_until - self._clock())

    def _origin(self, key: str) -> _Origin:
        o = self._origins.get(key)
        if o is None:
            bucket = self._total
            if self._per_host is not None:
                bucket = TokenBucket(
                    self._per_host,
                    read_size=self.read_size or READ_SIZE,
                    parent=self._total,
                    clock=self._clock,
                )
            rps = self.options.requests_per_second
            pacer = None if rps is None else Pacer(rps, clock=self._clock)
            ceiling = self.options.concurrency if self._slots is None else self._slots.capacity(key)
            o = self._origins[key] = _Origin(bucket, pacer, ceiling)
        return o

    def _budget(self, o: _Origin, ticket: Ticket, left: int, reset: float) -> None:
        """What the quota still allows: what the answer says is left, less the requests
        sent after the one it answers (the server had not counted them yet)."""
        now = self._clock()
        budget = left - (o.sent - ticket.number)
        if o.quota_left is None or now >= o.quota_until:
            o.quota_left, o.quota_until = budget, now + reset
        else:  # the same window: answers may come out of order, the lowest count holds
            o.quota_left = min(o.quota_left, budget)
            o.quota_until = max(o.quota_until, now + reset)

    def _spent(self, o: _Origin, ticket: Ticket) -> Throttled | None:
        """A pause until the quota is back, when nothing is left of it."""
        now = self._clock()
        if o.quota_left is None or o.quota_left > 0 or now >= o.quota_until:
            return None
        return self._pause(o, ticket, 429, o.quota_until - now, "quota spent")

    def _pause(
        self, o: _Origin, ticket: Ticket, status: int, seconds: float, reason: str
    ) -> Throttled | None:
        until = self._clock() + seconds
        # Many answers in flight repeat the same request to wait: one event is enough.
        news = until > o.paused_until + 1.0
        o.paused_until = max(o.paused_until, until)
        if until > o.asked_until:
            o.asked_until = until
            o.status = status if status >= 400 else 429
            o.reason = reason
        if seconds <= 0 or not news:
            return None
        o.reacted_at, o.reacted_to, o.eased = self._clock(), ticket.number, False
        n = o.limit.limit
        return self._decide(ticket, n, n, reason, seconds)

    def _cut(self, o: _Origin, ticket: Ticket, status: int) -> Throttled | None:
        before = o.limit.limit
        n = o.limit.throttled(ticket.sent, self._clock(), self._in_use(ticket.origin))
        if n is None:
            return None
        delay = retry.backoff(o.limit.strikes, self.options.backoff, self.options.backoff_max)
        o.reacted_at, o.reacted_to, o.eased = self._clock(), ticket.number, n < o.limit.refused
        o.paused_until = max(o.paused_until, o.reacted_at + delay)
        if self._slots is not None:
            self._slots.set_capacity(ticket.origin, n)
        return self._decide(ticket, n, before, str(status), delay)

    def _grow(self, o: _Origin, ticket: Ticket) -> Throttled | None:
        before, run = o.limit.limit, o.limit.run
        n = o.limit.succeeded(ticket.sent, self._clock(), self._in_use(ticket.origin))
        if n is None:
            return None
        if self._slots is not None:
            self._slots.set_capacity(ticket.origin, n)
        return self._decide(ticket, n, before, f"{run} good answers in a row", 0.0)

    def _in_use(self, key: str) -> int | None:
        return None if self._slots is None else self._slots.in_use(key)

    def _decide(self, ticket: Ticket, n: int, before: int, reason: str, delay: float) -> Throttled:
        event = Throttled(ticket.download_id, ticket.url, ticket.origin, n, before, reason, delay)
        self._emit(event)
        return event
