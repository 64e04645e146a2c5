"""What to download: :class:`File`, and turning what callers pass into planned downloads."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from . import files, format
from .errors import InvalidItemError
from .events import Status
from .hashing import ExpectedHash, parse_hash

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True, slots=True)
class File:
    """One file to download.

    >>> rheo_nb.File("https://example.org/data/train.csv", "raw/train.csv",
    ...              hash="sha256:" + "0" * 64, priority=1)  # doctest: +SKIP

    ``path`` is relative to ``dest`` (sub-folders allowed); by default it is a safe name
    taken from the URL's path. ``hash`` is ``"<algorithm>:<hex>"`` with md5, sha1, sha256
    or sha512. Higher ``priority`` starts earlier. ``headers`` are sent with this file's
    requests only (and never to another origin after a redirect).
    """

    url: str
    path: str | os.PathLike[str] | None = None
    _: KW_ONLY
    hash: str | None = None
    priority: int = 0
    headers: Mapping[str, str] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        parts = [repr(format.mask_url(self.url))]
        if self.path is not None:
            parts.append(f"path={os.fspath(self.path)!r}")
        if self.hash is not None:
            parts.append(f"hash={self.hash!r}")
        if self.priority:
            parts.append(f"priority={self.priority}")
        if self.headers:
            parts.append(f"headers=<{len(self.headers)} hidden>")
        return f"File({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one file. ``url`` is masked (safe to show); ``error`` is None
    unless the download failed or was cancelled."""

    url: str
    path: Path
    status: Status
    bytes: int
    elapsed: float
    error: str | None = None
    download_id: str = ""
    file: File = field(default_factory=lambda: File(""), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status.ok


Items = File | Iterable["str | File | Outcome"] | Mapping[str, "str | None"]


def as_files(items: Items) -> list[File]:
    """Normalise ``items``: URL strings, :class:`File` objects, outcomes of an earlier call
    (``results.failed`` re-runs just those), or a mapping ``{url: hash}``."""
    return list(iter_files(items))


def count(items: Items) -> int | None:
    """How many items ``items`` holds, when that is known without reading them."""
    if isinstance(items, str | File):
        return 1
    return len(items) if isinstance(items, Sized) else None


def iter_files(items: Items) -> Iterator[File]:
    """:func:`as_files` one at a time: a long or lazy sequence of items is read as it is
    consumed (a cluster call cuts it into shards without holding it all)."""
    if isinstance(items, str | File):
        items = [items]
    if isinstance(items, Mapping):
        yield from (File(url, hash=h) for url, h in items.items())
        return
    for item in items:
        if isinstance(item, File):
            yield item
        elif isinstance(item, str):
            yield File(item)
        elif isinstance(item, Outcome):
            yield item.file
        else:
            raise TypeError(
                f"cannot download a {type(item).__name__}: give URL strings, rheo_nb.File "
                "objects, or a mapping of URL to hash"
            )


@dataclass(frozen=True, slots=True)
class Planned:
    """A validated :class:`File`: where it goes and how it is checked."""

    download_id: str
    file: File
    url: str = field(repr=False)  # may hold a password: display_url is the one to show
    display_url: str
    relpath: PurePosixPath
    final: Path
    expected: ExpectedHash | None
    headers: dict[str, str] = field(repr=False)
    #: ``scheme://host:port``: what connection limits count by.
    host: str = ""


def host_key(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return f"{parts.scheme.lower()}://{parts.hostname}:{port}"


def check_url(url: str, secret_params: frozenset[str] = frozenset()) -> str:
    if not isinstance(url, str):
        raise InvalidItemError(f"URL must be a string, not {type(url).__name__}")
    if not url:
        raise InvalidItemError("empty URL")
    if _BAD_URL_CHARS.search(url):
        raise InvalidItemError(
            f"URL {format.mask_url(url, secret_params)!r} contains whitespace or control "
            "characters (CR, LF, NUL…); percent-encode them"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        # The parser's words can quote a piece of the URL (a password read as a port).
        reason = (
            "its port is not a number (percent-encode a '/', '?' or '#' in a password)"
            if "port" in str(exc).lower()
            else "it cannot be parsed"
        )
        raise InvalidItemError(
            f"malformed URL {format.mask_url(url, secret_params)!r}: {reason}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidItemError(
            f"unsupported URL scheme {scheme + ':' if scheme else '(none)'} in "
            f"{format.mask_url(url, secret_params)!r}; rheo_nb downloads http: and https: URLs"
        )
    if not parts.hostname:
        raise InvalidItemError(f"URL {format.mask_url(url, secret_params)!r} has no host")
    return url


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise InvalidItemError(f"invalid header name {name!r}")
        if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            raise InvalidItemError(f"header {name!r} has a value with CR, LF or NUL (or not text)")
        out[name] = value
    return out


def download_id(url: str, relpath: PurePosixPath) -> str:
    return hashlib.sha1(f"{url}\0{relpath}".encode(), usedforsecurity=False).hexdigest()[:16]


def plan(
    file: File,
    dest: Path,
    base_headers: Mapping[str, str],
    secret_params: frozenset[str] = frozenset(),
) -> Planned:
    """Validate one file against ``dest`` (pure: no filesystem access).

    ``secret_params``: query parameters to mask in the shown URL besides those that look
    secret (an API key's parameter).

    :raises InvalidItemError: with a message naming the (masked) URL and the problem.
    """
    url = check_url(file.url, secret_params)
    relpath = (
        files.relative_path(file.path)
        if file.path is not None
        else PurePosixPath(files.name_from_url(url))
    )
    expected = parse_hash(file.hash) if file.hash is not None else None
    if not isinstance(file.priority, int):
        raise InvalidItemError(f"priority must be an int, not {type(file.priority).__name__}")
    headers = {**check_headers(base_headers), **check_headers(file.headers)}
    return Planned(
        download_id=download_id(url, relpath),
        file=file,
        url=url,
        display_url=format.mask_url(url, secret_params),
        relpath=relpath,
        final=dest.joinpath(*relpath.parts),
        expected=expected,
        headers=headers,
        host=host_key(url),
    )


class Claims:
    """The files of one call by download id and by final path: an item given again is the
    same download, and no two items share a path. One call's manager keeps one; a cluster
    call keeps one for all its shards, so that the rule holds across them too.
    """

    def __init__(self) -> None:
        self.plans: dict[str, Planned] = {}
        #: Final paths taken, and the download taking each (server-given names join later).
        self.paths: dict[Path, str] = {}

    def take(self, planned: Planned) -> bool:
        """Claim ``planned``'s path: True when it is new, False when the same file (same
        URL, path, hash and headers) was given before.

        :raises InvalidItemError: the same URL and path with another hash or other
            headers, or a path that another item of the call already has.
        """
        first = self.plans.get(planned.download_id)
        if first is not None:
            differs = _differs(first, planned)
            if differs:
                raise InvalidItemError(
                    f"{planned.display_url}: given twice with {differs}; give it once, "
                    "or give the copies different paths with File(url, path=...)"
                )
            return False
        owner = self.paths.get(planned.final)
        if owner is not None:
            raise InvalidItemError(
                f"{planned.display_url}: {planned.relpath} is already the path of "
                f"{self.plans[owner].display_url} in this call; give one of them another "
                "path with File(url, path=...)"
            )
        self.plans[planned.download_id] = planned
        self.paths[planned.final] = planned.download_id
        return True


def _differs(first: Planned, again: Planned) -> str:
    """What two items for the same URL and path disagree on (``""``: nothing)."""
    if first.expected != again.expected:
        return "different hashes"
    if first.headers != again.headers:
        return "different headers"
    return ""


def refusal(
    file: File,
    error: str,
    planned: Planned | None,
    dest: Path,
    download_id: str,
    secret_params: frozenset[str] = frozenset(),
) -> Outcome:
    """The outcome of an item refused before any request: failed, with a message that
    names its (masked) URL."""
    url = planned.display_url if planned else describe(file, secret_params)
    path = planned.final if planned else dest
    if url not in error:  # every message names its URL (an unsafe path's does not)
        error = f"{url}: {error}"
    return Outcome(url, path, Status.FAILED, 0, 0.0, error, download_id, file)


def describe(item: Any, secret_params: frozenset[str] = frozenset()) -> str:
    """A safe label for an item that could not even be planned."""
    url = getattr(item, "url", item)
    return format.mask_url(url, secret_params) if isinstance(url, str) else repr(type(url).__name__)
