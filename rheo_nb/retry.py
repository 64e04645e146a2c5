"""Which failures are worth another attempt, and how long to wait before it."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

from .errors import HTTPStatusError, TransferError

#: Statuses that say "try again later"; every other error status is final.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.status in TRANSIENT_STATUSES
    return isinstance(exc, TransferError)


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait before retry number ``attempt`` (1-based): exponential, capped, half jittered.

    The lower half grows with every attempt (so waits really grow); the jittered upper
    half keeps many clients that failed together from retrying together.
    """
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


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
