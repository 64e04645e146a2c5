"""Which failures are worth another attempt, and how long to wait before it.

One :class:`RetryPolicy` serves every retry loop of a call: the whole-file attempts and
each range of a segmented download. It owns the classification, the backoff with its
jitter, and ``Retry-After`` with its cap, so the loops cannot drift apart.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from .errors import DownloadError, HTTPStatusError

if TYPE_CHECKING:
    from .options import Options

#: Statuses that say "try again later"; every other error status is final.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.status in TRANSIENT_STATUSES
    return isinstance(exc, DownloadError) and exc.transient


#: The largest power of two a float holds.
_MAX_DOUBLINGS = 1023


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait before retry number ``attempt`` (1-based): exponential, capped, half jittered.

    The lower half grows with every attempt (so waits really grow); the jittered upper
    half keeps many clients that failed together from retrying together.
    """
    # A long run reaches attempts whose 2.0 ** n overflows a float (n >= 1024); by then
    # every wait is the cap, so the doubling can stop at the largest finite power.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many further attempts a failure earns, and the wait before each.

    >>> policy = RetryPolicy(retries=3)
    >>> policy.delay(HTTPStatusError("u", 503, retry_after=2.0), attempt=1)
    2.0
    """

    retries: int = 3
    backoff: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_options(cls, options: Options) -> RetryPolicy:
        return cls(options.retries, options.backoff, options.backoff_max, options.retry_after_max)

    def after(self, exc: DownloadError, failed: int) -> tuple[int, float]:
        """After ``failed`` attempts and now ``exc``: the failed attempts that count, and
        the wait before the next attempt. The one call every retry loop makes.

        A 429 or 503 the traffic slowed the origin down for (``excused``) does not count:
        its wait is the origin's pause, up to ``retry_after_max``.

        :raises DownloadError: ``exc``, when it earns no further attempt (see :meth:`delay`).
        """
        if isinstance(exc, HTTPStatusError) and exc.excused:
            return failed, min(exc.retry_after or 0.0, self.retry_after_max)
        return failed + 1, self.delay(exc, failed + 1)

    def delay(self, exc: DownloadError, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        :raises DownloadError: ``exc`` itself, with the reason added, when it earns no
            further attempt: a final error, retries used up, or a ``Retry-After`` beyond
            ``retry_after_max``.
        """
        if not is_transient(exc) or attempt > self.retries:
            if attempt > 1:
                exc.add_context(f"(after {attempt} attempts)")
            raise exc
        retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
        if retry_after is None:
            return backoff(attempt, self.backoff, self.backoff_max, self.rng)
        if retry_after > self.retry_after_max:
            exc.add_context(
                f"(the server asks to retry after {retry_after:.0f} s, longer than "
                f"retry_after_max={self.retry_after_max:g} s; not waiting)"
            )
            raise exc
        return retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date).

    Returns None when the header is absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # not "²", which isdigit() also accepts
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
