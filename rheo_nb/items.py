"""What to download: :class:`File`, and turning what callers pass into planned downloads."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from yarl import URL

from . import files, format
from .errors import InvalidItemError
from .events import Status
from .hashing import ExpectedHash, parse_hash

if TYPE_CHECKING:
    from .objstore import ObjectPath

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
SCHEMES = frozenset({"http", "https"})
#: A host name sent as it is written (:func:`urlsplit` gives it lower-cased).
_PLAIN_HOST = re.compile(r"^[a-z0-9._-]+$")


@dataclass(frozen=True, slots=True)
class File:
    """One file to download.

    >>> rheo_nb.File("https://example.org/data/train.csv", "raw/train.csv",
    ...              hash="sha256:" + "0" * 64, priority=1)  # doctest: +SKIP

    ``path`` is relative to ``dest`` (sub-folders allowed); by default it is a safe name
    taken from the URL's path. ``hash`` is ``"<algorithm>:<hex>"`` with md5, sha1, sha256
    or sha512. Higher ``priority`` starts earlier. ``headers`` are sent with this file's
    requests only (and never to another origin after a redirect).

    ``mirrors`` are more URLs of the same file, tried in order after ``url``.
    ``extract=True`` unpacks the file once it is complete, into a folder beside it named
    after it (``data/train.tar.gz`` → ``data/train/``); a string names that folder
    instead, relative to ``dest``. ``extract_remove`` deletes the archive after a
    successful extraction (None: as the call's ``extract_remove`` option says).
    """

    url: str
    path: str | os.PathLike[str] | None = None
    _: KW_ONLY
    hash: str | None = None
    priority: int = 0
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    mirrors: Sequence[str] = ()
    extract: bool | str | os.PathLike[str] = False
    extract_remove: bool | None = None

    def __post_init__(self) -> None:
        # A list would make the File unhashable; anything else is judged when planned.
        if isinstance(self.mirrors, list):
            object.__setattr__(self, "mirrors", tuple(self.mirrors))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._repr_parts())})"

    def _repr_parts(self) -> list[str]:
        parts = [repr(format.mask_url(self.url)) if isinstance(self.url, str) else "<not text>"]
        if self.path is not None:
            parts.append(f"path={os.fspath(self.path)!r}")
        if self.hash is not None:
            parts.append(f"hash={self.hash!r}")
        if self.priority:
            parts.append(f"priority={self.priority}")
        if self.headers:
            parts.append(f"headers=<{len(self.headers)} hidden>")
        if self.mirrors:
            shown = [
                format.mask_url(m) if isinstance(m, str) else "<not text>" for m in self.mirrors
            ]
            parts.append(f"mirrors={shown!r}")
        if self.extract:
            parts.append(f"extract={self.extract!r}")
        if self.extract_remove is not None:
            parts.append(f"extract_remove={self.extract_remove!r}")
        return parts


@dataclass(frozen=True, slots=True, repr=False)
class BadRow(File):
    """A manifest entry that could not be read, kept as an item when the manifest was read
    with ``errors="skip"``: a download reports it failed with ``error`` and the others go
    on. ``url`` is the entry's URL text, as far as there was one."""

    _: KW_ONLY
    error: str = ""

    def _repr_parts(self) -> list[str]:
        return [*File._repr_parts(self), f"error={self.error!r}"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one file. ``url`` is masked (safe to show); ``error`` is None
    unless the download failed or was cancelled. ``path`` is a local ``Path``, or for an
    object in a bucket its ``s3://bucket/key`` URL (an :class:`~rheo_nb.ObjectPath`).
    ``source_url`` is the (masked) URL that served the file when a mirror did;
    ``extracted`` the folder an archive was unpacked into (None when nothing was
    extracted); ``archive_removed`` is True when the archive itself is gone, deleted
    once extracted (``extract_remove``): ``extracted`` is then what is on disk."""

    url: str
    path: Path | ObjectPath
    status: Status
    bytes: int
    elapsed: float
    error: str | None = None
    download_id: str = ""
    file: File = field(default_factory=lambda: File(""), repr=False, compare=False)
    source_url: str | None = None
    extracted: Path | ObjectPath | None = None
    archive_removed: bool = False

    @property
    def ok(self) -> bool:
        return self.status.ok

    @property
    def on_disk(self) -> Path | ObjectPath:
        """What the file is on disk (or in the bucket) now: its path, or for an archive
        removed once extracted, what it was extracted into."""
        if self.archive_removed and self.extracted is not None:
            return self.extracted
        return self.path


Items = File | Iterable["str | File | Outcome"] | Mapping[str, "str | None"]


def in_memory(items: Items) -> bool:
    """True for items already in memory (a list, a tuple, a mapping, one item); any
    other iterable is a lazy source, read as the downloads go."""
    from .results import Results

    return isinstance(items, list | tuple | str | File | Mapping | Results)


def count(items: Items) -> int | None:
    """How many items ``items`` holds, when that is known without reading them."""
    if isinstance(items, str | File):
        return 1
    return len(items) if isinstance(items, Sized) else None


def iter_files(items: Items) -> Iterator[File]:
    """Normalise ``items`` one at a time: URL strings, :class:`File` objects, outcomes of an
    earlier call (``results.failed`` re-runs just those), or a mapping ``{url: hash}``.

    Lazy, so that a manifest of a million rows is never a million objects at once here
    (a cluster call cuts it into shards as it reads it).
    """
    if isinstance(items, str | File):
        items = [items]
    if isinstance(items, Mapping):
        for url, h in items.items():
            yield File(url, hash=h)
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


def as_files(items: Items) -> list[File]:
    """:func:`iter_files` as a list."""
    return list(iter_files(items))


@dataclass(frozen=True, slots=True)
class Planned:
    """A validated :class:`File`: where it goes and how it is checked."""

    download_id: str
    file: File
    url: str = field(repr=False)  # may hold a password: display_url is the one to show
    display_url: str
    relpath: PurePosixPath
    final: Path | ObjectPath
    expected: ExpectedHash | None
    headers: dict[str, str] = field(repr=False)
    #: ``scheme://host:port``: what connection limits count by.
    host: str = ""
    #: More URLs of the file, checked like ``url``.
    mirrors: tuple[str, ...] = field(default=(), repr=False)
    #: ``False``, ``True`` (beside the file) or a folder relative to ``dest``.
    extract: bool | PurePosixPath = False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_key(url: str | SplitResult) -> str:
    """The origin of ``url`` (``"https://example.org"``, ``"http://127.0.0.1:8080"``):
    scheme, host, and the port unless it is the scheme's default. What connection limits,
    caps and pacing count by; never user info, path or query, so it is safe to show."""
    parts = urlsplit(url) if isinstance(url, str) else url
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    return (
        f"{scheme}://{host}"
        if port in (None, _DEFAULT_PORTS.get(scheme))
        else f"{scheme}://{host}:{port}"
    )


def check_url(url: str, secret_params: frozenset[str] = frozenset()) -> str:
    """``url`` when rheo_nb can download it.

    :raises InvalidItemError: saying why not.
    """
    _check_url(url, secret_params)
    return url


def _check_url(url: str, secret_params: frozenset[str]) -> SplitResult:
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
        text = str(exc).lower()
        if "port" in text:
            reason = "its port is not a number (percent-encode a '/', '?' or '#' in a password)"
        elif "ipv6" in text:
            reason = "a '[' opens an IPv6 address that no ']' closes"
        else:
            reason = "it cannot be parsed"
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
    problem = host_problem(url, parts.hostname)
    if problem:
        raise InvalidItemError(f"URL {format.mask_url(url, secret_params)!r}: its host {problem}")
    return parts


def host_problem(url: str | URL, hostname: str) -> str:
    """Why the host of ``url`` can never be looked up, or ``""``: what the request would
    otherwise meet deep in the connection, as an error no retry can mend. For the URLs
    given and for every redirect's target. ``hostname``: the host as :func:`urlsplit`
    (or yarl's ``raw_host``) reads it."""
    if _PLAIN_HOST.match(hostname) and "xn--" not in hostname:
        return dns_name_problem(hostname)  # sent as written: no second parse (most URLs)
    try:
        parsed = URL(url) if isinstance(url, str) else url
        # The host as it goes on the wire (IDNA form), and as read back (an xn-- label
        # must decode): the connection needs both.
        host = parsed.raw_host or ""
        parsed.host  # noqa: B018
    except ValueError as exc:  # UnicodeError included: an undecodable xn-- label
        what = "internationalised" if isinstance(exc, UnicodeError) else "host"
        return f"{hostname!r} is not a valid {what} name"
    return dns_name_problem(host)


#: Most characters of a DNS name, and of one of its labels (RFC 1035).
_MAX_DNS_NAME = 253
_MAX_DNS_LABEL = 63


def dns_name_problem(host: str) -> str:
    """Why ``host`` (ASCII, as sent) is no name a resolver can look up, or ``""``.

    An IP address is always fine; a name needs labels of 1 to 63 characters and at most
    253 in all (one trailing dot, the root, is allowed).

    >>> dns_name_problem("a..b.example")
    "'a..b.example' has an empty label"
    """
    if ":" in host:  # an IPv6 address
        return ""
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if not all(labels):
        return f"{host!r} has an empty label"
    longest = max(labels, key=len)
    if len(longest) > _MAX_DNS_LABEL:
        return (
            f"{format.short_name(host, 60)!r} has a label of {len(longest)} characters, "
            f"over the {_MAX_DNS_LABEL} a DNS name allows"
        )
    if len(name) > _MAX_DNS_NAME:
        return (
            f"{format.short_name(host, 60)!r} is {len(name)} characters long, over the "
            f"{_MAX_DNS_NAME} a DNS name allows"
        )
    return ""


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
    dest: Path | ObjectPath,
    base_headers: Mapping[str, str],
    secret_params: frozenset[str] = frozenset(),
) -> Planned:
    """Validate one file against ``dest`` (pure: no filesystem access).

    ``secret_params``: query parameters to mask in the shown URL besides those that look
    secret (an API key's parameter).

    :raises InvalidItemError: with a message naming the (masked) URL and the problem.
    """
    if isinstance(file, BadRow):
        raise InvalidItemError(file.error)
    url = file.url
    parts = _check_url(url, secret_params)
    relpath = (
        files.relative_path(file.path)
        if file.path is not None
        else PurePosixPath(files.name_from_url(url))
    )
    expected = parse_hash(file.hash) if file.hash is not None else None
    if not isinstance(file.priority, int):
        raise InvalidItemError(f"priority must be an int, not {type(file.priority).__name__}")
    headers = {**check_headers(base_headers), **check_headers(file.headers)}
    mirrors = check_mirrors(file.mirrors, secret_params)
    extract = check_extract(file.extract)
    if file.extract_remove is not None and not isinstance(file.extract_remove, bool):
        raise InvalidItemError(
            f"extract_remove must be True, False or None, not {type(file.extract_remove).__name__}"
        )
    return Planned(
        download_id=download_id(url, relpath),
        file=file,
        url=url,
        display_url=format.mask_url(url, secret_params),
        relpath=relpath,
        final=dest.joinpath(*relpath.parts),
        expected=expected,
        headers=headers,
        host=host_key(parts),
        mirrors=mirrors,
        extract=extract,
    )


def check_mirrors(
    mirrors: Sequence[str], secret_params: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    if isinstance(mirrors, str) or not isinstance(mirrors, Sequence):
        raise InvalidItemError(
            f"mirrors must be a list or tuple of URLs, not {type(mirrors).__name__}"
        )
    return tuple(check_url(m, secret_params) for m in mirrors)


def check_extract(extract: bool | str | os.PathLike[str]) -> bool | PurePosixPath:
    """``True``/``False``, or the folder (relative to ``dest``) to extract into."""
    if isinstance(extract, bool):
        return extract
    if not isinstance(extract, str | os.PathLike):
        raise InvalidItemError(
            f"extract must be True, False or a folder relative to dest, "
            f"not {type(extract).__name__}"
        )
    try:
        return files.relative_path(extract)
    except InvalidItemError as exc:
        raise InvalidItemError(f"extract folder: {exc}") from None


class Claims:
    """The files of one call by download id and by final path: an item given again is the
    same download, and no two items share a path, an extraction's output included (where
    an archive's name says it extracts; ``extract``: the call's option). One call's
    manager keeps one; a cluster call keeps one for all its shards, so that the rule holds
    across them too.

    What stays for every file of the call is small (a number for what it asked, its path,
    its URL to show): a million files cost numbers, not plans. The plans of the files not
    finished yet are in :attr:`active`.

    ``server_names``: the call takes names from ``Content-Disposition``; then a file given
    no path has no path until its server answers (``/download?id=1`` and ``?id=2`` are
    not one path), and the transfer claims the name it gets then in :attr:`paths`.
    """

    def __init__(self, *, extract: bool = False, server_names: bool = False) -> None:
        self.extract = extract
        self.server_names = server_names
        #: Paths taken (final paths and extraction targets), and the download taking each;
        #: server-given names and the targets the archives' bytes tell join later.
        self.paths: dict[Path | ObjectPath, str] = {}
        self._unpacked: set[Path | ObjectPath] = set()  # those that are extraction targets
        #: The plans of the downloads queued or running (see :meth:`release`).
        self.active: dict[str, Planned] = {}
        self._specs: dict[str, int] = {}
        self._shown: dict[str, str] = {}

    def take(self, planned: Planned) -> bool:
        """Claim ``planned``'s path: True when it is new, False when the same file (same
        URL and path, and the same hash, headers, mirrors and extraction) came before.

        :raises InvalidItemError: the same URL and path asking for something else, or a
            path another item of the call already has.
        """
        did = planned.download_id
        spec = _spec(planned)
        first = self._specs.get(did)
        if first is not None:
            if first == spec:
                return False
            earlier = self.active.get(did)
            differs = _differs(earlier, planned) if earlier is not None else ""
            raise InvalidItemError(
                f"{planned.display_url}: given twice with "
                f"{differs or 'a different hash, headers, mirrors or extract= setting'}; give "
                "it once, or give the copies different paths with File(url, path=...)"
            )
        named_later = self.server_names and planned.file.path is None
        if not named_later:  # its path and extraction are claimed once its server names it
            self._check(planned, planned.final, str(planned.relpath), False)
            target = unpacks_to(planned, self.extract)
            if target is not None:
                self._check(planned, target, f"its extraction {target.name}", True)
                self.paths[target] = did
                self._unpacked.add(target)
            self.paths[planned.final] = did
        self._specs[did] = spec
        self._shown[did] = planned.display_url
        self.active[did] = planned
        return True

    def _check(self, planned: Planned, path: Path | ObjectPath, what: str, extracts: bool) -> None:
        """:raises InvalidItemError: ``path`` (``what``; ``extracts``: the item's
        extraction target) is another item's already."""
        owner = self.paths.get(path)
        if owner is None or owner == planned.download_id:
            return
        shown = self.shown(owner)
        if path in self._unpacked:
            theirs = f"where the archive {shown} extracts"
        else:
            theirs = f"the path of {shown}"
        fix = "another path with File(url, path=...)"
        if extracts or path in self._unpacked:
            fix += " or a folder to extract into with File(url, extract='folder')"
        raise InvalidItemError(
            f"{planned.display_url}: {what} is already {theirs} in this call; give one of "
            f"them {fix}"
        )

    def release(self, download_id: str) -> None:
        """The download is over: forget its plan (its claim stays)."""
        self.active.pop(download_id, None)

    def shown(self, download_id: str) -> str:
        """The URL to show of a download of the call."""
        return self._shown.get(download_id, download_id)


def unpacks_to(p: Planned, extract_all: bool) -> Path | ObjectPath | None:
    """Where ``p`` is extracted, as the names tell before any byte is read (None: not
    extracted); ``extract_all``: the call's ``extract`` option. The archive's bytes may
    tell another kind, and another target: the extraction claims that one again."""
    if isinstance(p.extract, PurePosixPath):
        dest = p.final
        for _ in p.relpath.parts:
            dest = dest.parent
        return dest.joinpath(*p.extract.parts)
    if not (p.extract or extract_all):
        return None
    name = files.extraction_name(p.final.name, explicit=p.extract is True)
    return None if name is None else p.final.with_name(name)


def _spec(p: Planned) -> int:
    """What an item asks for beyond its URL and path, as one number."""
    return hash((p.expected, tuple(sorted(p.headers.items())), p.mirrors, p.extract))


def _differs(first: Planned, again: Planned) -> str:
    """What two items for the same URL and path disagree on, in words."""
    if first.expected != again.expected:
        return "different hashes"
    if first.headers != again.headers:
        return "different headers"
    if first.mirrors != again.mirrors:
        return "different mirrors"
    if first.extract != again.extract:
        return "different extract= settings"
    return ""


def refusal(
    file: File,
    error: str,
    planned: Planned | None,
    dest: Path | ObjectPath,
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
