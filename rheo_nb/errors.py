"""The exception tree.

Every exception rheo_nb raises derives from :class:`RheoNbError`::

    RheoNbError
    ├── OptionError             an option has a value rheo_nb cannot use
    ├── InvalidItemError        an item cannot be downloaded as given (URL, path, hash spec)
    ├── ManifestError           a manifest cannot be read; names the file and the line or row
    ├── DownloadError           one download failed; carries the (masked) URL
    │   ├── HTTPStatusError     the server answered with an error status
    │   ├── TransferError       connection refused or lost, timeout, stalled or too slow
    │   ├── IntegrityError      wrong length or wrong hash: the bytes are not the file
    │   ├── TooLargeError       the body is over ``max_size``
    │   ├── RedirectError       too many redirects, or a redirect to a refused scheme
    │   ├── DestinationError    the destination cannot hold the file (not writable, a directory…)
    │   └── ExtractError        an archive was refused (unsafe member, over a cap) or is unreadable
    └── DownloadsFailed         raised by ``Results.raise_for_errors()``; lists every failure

Messages name the URL and the cause. URLs are masked (user info and secret-looking query
values replaced) before they reach a message, so a message can be logged as is.

Warnings go through :func:`warn`, which points them at the caller's line, not at ours.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .items import Outcome


class RheoNbError(Exception):
    """Root of every error raised by rheo_nb."""


class OptionError(RheoNbError, ValueError):
    """An option has a value rheo_nb cannot use (raised before anything is downloaded)."""


class InvalidItemError(RheoNbError, ValueError):
    """An item cannot be downloaded as given: bad URL, unsafe path or malformed hash."""


class ManifestError(RheoNbError, ValueError):
    """A manifest (checksum file, registry, aria2 input file, table) cannot be read.

    The message starts with the manifest (its masked URL or its path) and, for a bad entry,
    the line (text formats) or row (Parquet) where it is: ``"SHA256SUMS, line 3: …"``.
    ``line`` holds that number (None when the whole file is the problem).
    """

    def __init__(
        self, source: str, reason: str, line: int | None = None, *, unit: str = "line"
    ) -> None:
        where = f"{source}, {unit} {line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


class DownloadError(RheoNbError):
    """One download failed. ``url`` is the masked URL, safe to print; ``cause`` says why.

    The layers below the transfer raise these with the cause only: they do not know (and
    need not know) which file they serve. The transfer names the file once, at its
    boundary, with :meth:`attach`, so every message reads ``"<url>: <cause>"``.
    """

    #: True when another attempt may succeed (a dropped connection, a full descriptor
    #: table); the retry policy reads it.
    transient: bool = False

    def __init__(self, url: str = "", cause: str = "") -> None:
        self.url = url
        self.cause = cause
        super().__init__(self._text())

    def _text(self) -> str:
        return f"{self.url}: {self.cause}" if self.url else self.cause

    def attach(self, url: str) -> None:
        """Name the file this error is about (once: a URL already there is kept)."""
        if not self.url:
            self.url = url
            self.args = (self._text(),)

    def add_context(self, text: str) -> None:
        """Append ``text`` to the cause (how many attempts were made, say)."""
        self.cause = f"{self.cause} {text}"
        self.args = (self._text(),)


class HTTPStatusError(DownloadError):
    """The server answered with an error status.

    ``excused``: a 429 or 503 that rheo_nb answered by slowing the whole origin down
    (see :meth:`rheo_nb.traffic.Traffic.excuses`); its retry is not counted in
    ``retries``.
    """

    def __init__(
        self,
        url: str = "",
        status: int = 0,
        reason: str = "",
        *,
        retry_after: float | None = None,
        excused: bool = False,
    ) -> None:
        text = f"HTTP {status}" + (f" {reason}" if reason else "")
        super().__init__(url, text)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.excused = excused


class TransferError(DownloadError):
    """The connection failed, stalled or was too slow; another attempt may succeed."""

    transient = True


class IntegrityError(DownloadError):
    """The bytes received are not the file: wrong length or wrong hash."""


class TooLargeError(DownloadError):
    """The body is larger than the ``max_size`` limit."""


class RedirectError(DownloadError):
    """Too many redirects, or a redirect to a scheme rheo_nb refuses (``file:``…)."""


class DestinationError(DownloadError):
    """The destination cannot hold the file: not writable, full, a directory or a symlink.

    ``transient`` is set when the machine, not the destination, ran short (too many open
    files): a later attempt may succeed.
    """

    def __init__(self, url: str = "", cause: str = "", *, transient: bool = False) -> None:
        super().__init__(url, cause)
        self.transient = transient


class ExtractError(DownloadError):
    """An archive was refused or could not be extracted; nothing of it is left in the target.

    ``url`` names the archive (its masked URL, or its path); ``member`` is the member at
    fault, when one is (``"../etc/passwd"``), and ``reason`` says why.
    """

    def __init__(self, url: str, reason: str, member: str | None = None) -> None:
        super().__init__(url, f"member {member!r}: {reason}" if member is not None else reason)
        self.member = member
        self.reason = reason


class DownloadsFailed(RheoNbError):
    """Raised by :meth:`Results.raise_for_errors` when some downloads did not succeed."""

    def __init__(self, failures: Sequence[Outcome]) -> None:
        self.failures = tuple(failures)
        n = len(self.failures)
        lines = [f"{n} download{'s' if n != 1 else ''} did not succeed:"]
        shown = self.failures[:20]
        lines += [f"  [{o.status}] {o.error or o.url}" for o in shown]
        if n > len(shown):
            lines.append(f"  … and {n - len(shown)} more")
        super().__init__("\n".join(lines))


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first frame outside rheo_nb: the line of the caller's own code, which is
    where a notebook or a log should point (``verify=False`` on the user's call)."""
    frame = sys._getframe(1)
    level = 2  # 1 is this function; 2 its caller
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
