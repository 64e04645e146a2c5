"""Every download option in one frozen dataclass, validated once."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .auth import Auth, check_cookies, coerce
from .errors import OptionError
from .format import MASK

MiB = 1 << 20
#: The default cap on the members of an archive (``max_extract_files``).
MAX_EXTRACT_FILES = 1_000_000

#: Names of storage options whose values are secrets (s3fs's ``key``/``secret``/``token``,
#: botocore's ``aws_secret_access_key``, Azure's ``account_key``/``sas_token``…).
_SECRET_OPTION = re.compile(r"(secret|key|token|passw|credential|sas|connection_string)", re.I)


class StorageOptions(dict[str, Any]):
    """``storage_options`` for object-storage destinations, named as s3fs names them
    (``key``, ``secret``, ``token``, ``profile``, ``endpoint_url``, ``client_kwargs``…).

    A plain dict whose ``repr`` shows secret-looking values, nested ones too, as ``***``:

    >>> StorageOptions(key="AKIA…", secret="s3cr3t", endpoint_url="http://127.0.0.1:9000")
    {'key': '***', 'secret': '***', 'endpoint_url': 'http://127.0.0.1:9000'}
    """

    def __repr__(self) -> str:
        return repr(_masked(self))


def is_secret_option(name: str) -> bool:
    """Whether the storage option ``name`` (or a part of a dotted name) holds a secret."""
    return _SECRET_OPTION.search(name) is not None


def _masked(options: Mapping[Any, Any]) -> dict[Any, Any]:
    return {
        name: _masked(value)
        if isinstance(value, Mapping)
        else MASK
        if isinstance(name, str) and _SECRET_OPTION.search(name)
        else value
        for name, value in options.items()
    }


def storage_options(value: object) -> StorageOptions:
    """``value`` checked (a mapping with string names) and copied."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise OptionError(
            "storage_options must be a mapping of option names to values, as for "
            "fsspec/s3fs (e.g. {'endpoint_url': 'http://127.0.0.1:9000'})"
        )
    return StorageOptions(value)


#: Rate units: bare letters are 1024-based as curl and wget read them (``20M``, ``500k``);
#: ``kB``/``MB``/``GB``/``TB`` are SI (1000-based); ``KiB``/``MiB``/``GiB``/``TiB`` are
#: 1024-based; ``kbit``/``Mbit``/``Gbit`` are bits (an eighth of the SI bytes).
_RATE_UNITS: dict[str, float] = {
    "": 1,
    "B": 1,
    **{c: 1024.0**i for i, c in enumerate("KMGTP", 1)},
    **{c.lower(): 1024.0**i for i, c in enumerate("KMGTP", 1)},
    **{f"{c}B": 1000.0**i for i, c in enumerate("kMGT", 1)},
    "KB": 1000.0,
    **{f"{c}iB": 1024.0**i for i, c in enumerate("KMGT", 1)},
    "bit": 1 / 8,
    **{f"{c}bit": 1000.0**i / 8 for i, c in enumerate("kMG", 1)},
    "Kbit": 1000.0 / 8,
}
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*(?:/\s*s)?\s*")


def parse_rate(value: int | float | str, name: str = "max_rate") -> int:
    """Bytes per second from ``value``: a number, or text as curl and wget spell it.

    >>> parse_rate("20M"), parse_rate("20MB/s"), parse_rate("500KiB/s"), parse_rate(4096)
    (20971520, 20000000, 512000, 4096)

    Bare suffixes (``k``, ``M``, ``G``, ``T``, ``P``, either case) are 1024-based, as in
    ``curl --limit-rate`` and ``wget --limit-rate``; ``kB``, ``MB``, ``GB``, ``TB`` are
    1000-based; ``KiB``, ``MiB``, ``GiB``, ``TiB`` 1024-based; ``kbit``, ``Mbit``, ``Gbit``
    are bits. ``/s`` may follow. Raises :class:`OptionError` for anything else, and for
    rates under one byte per second.
    """
    if isinstance(value, bool):
        raise OptionError(f"{name} must be bytes per second, not a bool")
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str):
        m = _RATE.fullmatch(value)
        factor = _RATE_UNITS.get(m.group(2)) if m else None
        if m is None or factor is None:
            raise OptionError(
                f"{name}={value!r} is not a rate: write bytes per second as a number, or "
                'as "20M" (1024-based, as curl), "20MB/s" (1000-based), "20MiB/s" '
                '(1024-based) or "100Mbit/s"'
            )
        rate = float(m.group(1)) * factor
    else:
        raise OptionError(f"{name} must be an int or a string such as '20MB/s' (or None)")
    if not math.isfinite(rate) or rate < 1:
        raise OptionError(f"{name} must be at least 1 byte per second (None: no limit)")
    return round(rate)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise OptionError(message)


def _whole(name: str, value: object, what: str, least: int = 0, none: bool = False) -> None:
    """A count: an int of at least ``least`` (None too when ``none``), never a bool."""
    if value is None and none:
        return
    # bool is an int to isinstance; concurrency=True is a mistake, not "1".
    _need(not isinstance(value, bool), f"{name} must be a number, not a bool")
    _need(isinstance(value, int) and value >= least, f"{name} must be {what}")


def _number(value: object, above: float | None = None) -> bool:
    """An int or a float (not a bool), at least 0, or more than ``above`` when given."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return value > above if above is not None else value >= 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Options shared by :func:`rheo_nb.fetch`, :class:`rheo_nb.DownloadManager` and the CLI.

    Time is in seconds, sizes in bytes.
    """

    #: Downloads running at once.
    concurrency: int = 8
    #: Further attempts after a transient failure (0: none).
    retries: int = 3
    #: Longest wait for a connection, or for the next bytes of a body.
    timeout: float = 30.0
    #: Optional limit on one whole attempt (None: none).
    total_timeout: float | None = None
    #: Replace complete files already at their final path.
    overwrite: bool = False
    #: Headers sent with every request of the call (per-file headers win).
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Credentials: ``(user, password)``, ``aiohttp.BasicAuth``, :class:`~rheo_nb.BearerToken`,
    #: :class:`~rheo_nb.ApiKey`, :class:`~rheo_nb.DigestAuth` or
    #: :class:`~rheo_nb.OAuth2ClientCredentials`. Like ``headers`` and ``cookies``, sent only
    #: to the origin of each file's URL, never after a redirect to another.
    auth: Auth | None = None
    #: Cookies sent with every request of the call (``{name: value}``).
    cookies: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Refuse bodies larger than this (None: no limit).
    max_size: int | None = None
    #: First wait between attempts; doubles each time up to ``backoff_max``.
    backoff: float = 0.5
    backoff_max: float = 30.0
    #: Longest ``Retry-After`` honoured; a server asking for more fails the file at once.
    retry_after_max: float = 120.0
    #: An attempt slower than ``low_speed_limit`` bytes/s for ``low_speed_time`` s is ended.
    low_speed_limit: int = 1024
    low_speed_time: float = 30.0
    max_redirects: int = 10
    #: Bytes gathered before a write to disk.
    chunk_size: int = MiB
    #: Least interval between progress events of one download.
    progress_interval: float = 0.1
    #: Connections per large file: ``"auto"``, or an int (1: never split).
    segments: int | Literal["auto"] = "auto"
    #: Name files given without a ``path`` as the server's ``Content-Disposition`` header
    #: says (reduced to a safe name inside ``dest``); off: names come from the URL.
    content_disposition: bool = False
    #: Options of an object-storage destination (``s3://…``), in the fsspec convention;
    #: without them the standard credential chains apply. Secrets are masked in reprs.
    storage_options: Mapping[str, Any] = field(default_factory=StorageOptions)
    #: Refuse an archive that expands to more than this many bytes (None: 100 times the
    #: archive's size, and at least 1 GiB: see :func:`rheo_nb.extract.size_limit`).
    max_extract_size: int | None = None
    #: Refuse an archive with more members (files, folders and links) than this.
    max_extract_files: int = MAX_EXTRACT_FILES
    #: Delete an archive once it is extracted (a ``File``'s ``extract_remove`` wins).
    extract_remove: bool = False
    #: Unpack every archive of the call once it is complete, into a folder beside it
    #: (``data/train.tar.gz`` → ``data/train/``); files that are not archives are left as
    #: they are. A ``File``'s own ``extract=`` wins.
    extract: bool = False
    #: Send no request at all: complete files are reported skipped (checked against their
    #: hash when one is given), the others fail with "offline: not downloaded". None: as
    #: the ``RHEO_NB_OFFLINE`` environment variable says (``1``: offline).
    offline: bool | None = None
    #: Most bytes per second for the whole call, across every connection and file: an
    #: int, or a string such as ``"20MB/s"``, ``"500KiB/s"`` or ``"20M"`` (see
    #: :func:`parse_rate`: bare suffixes are 1024-based, as in curl). Stored as an int.
    max_rate: int | float | str | None = None
    #: The same for each origin (scheme, host and port) on its own.
    max_rate_per_host: int | float | str | None = None
    #: Most request starts per second to each origin (HEAD, GET and ranges alike), evenly
    #: spaced (None: no pacing).
    requests_per_second: float | None = None

    def __post_init__(self) -> None:
        _whole("concurrency", self.concurrency, "an int >= 1", least=1)
        _whole("retries", self.retries, "an int >= 0")
        for name in (
            "timeout",
            "backoff",
            "backoff_max",
            "retry_after_max",
            "low_speed_time",
            "progress_interval",
        ):
            _need(_number(getattr(self, name)), f"{name} must be a number >= 0")
        _need(self.timeout > 0, "timeout must be > 0 seconds")
        # Type checks first, so a wrong type is an OptionError rather than a TypeError.
        _need(
            self.total_timeout is None or _number(self.total_timeout, above=0),
            "total_timeout must be > 0 or None",
        )
        _whole("max_size", self.max_size, "an int >= 0 or None", none=True)
        _need(_number(self.low_speed_limit), "low_speed_limit must be >= 0 (0 turns the check off)")
        _whole("max_redirects", self.max_redirects, "an int >= 0")
        _whole("chunk_size", self.chunk_size, "an int of at least 4096 bytes", least=4096)
        if self.segments != "auto":
            _whole("segments", self.segments, "'auto' or an int >= 1", least=1)
        _whole("max_extract_size", self.max_extract_size, "an int >= 1 (bytes) or None", 1, True)
        _whole("max_extract_files", self.max_extract_files, "an int >= 1", least=1)
        _need(isinstance(self.extract_remove, bool), "extract_remove must be True or False")
        _need(
            isinstance(self.extract, bool), "extract must be True or False (a File takes a folder)"
        )
        _need(
            self.offline is None or isinstance(self.offline, bool),
            "offline must be True, False or None",
        )
        if self.offline is None:
            object.__setattr__(
                self, "offline", os.environ.get("RHEO_NB_OFFLINE", "").strip() not in ("", "0")
            )
        # A cap may be under low_speed_limit: the low-speed rule does not count the time
        # a stream waits for the cap's tokens.
        for name in ("max_rate", "max_rate_per_host"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_rate(value, name))
        rps = self.requests_per_second
        _need(
            rps is None or (_number(rps, above=0) and math.isfinite(rps)),
            "requests_per_second must be a number > 0 or None",
        )
        _need(isinstance(self.headers, Mapping), "headers must be a mapping of names to values")
        object.__setattr__(self, "headers", dict(self.headers))
        object.__setattr__(self, "auth", coerce(self.auth))
        object.__setattr__(self, "cookies", check_cookies(self.cookies))
        object.__setattr__(self, "storage_options", storage_options(self.storage_options))

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def build(cls, base: Options | None = None, **changes: Any) -> Options:
        """``base`` (or the defaults) with ``changes``; unknown names are an error."""
        check_names(changes, cls.names(), "Options")
        changes = {k: v for k, v in changes.items() if v is not None or k in _NULLABLE}
        if base is None:
            return cls(**changes)
        current = {f.name: getattr(base, f.name) for f in fields(cls)}
        return cls(**{**current, **changes})


_NULLABLE = frozenset(
    {
        "max_size",
        "total_timeout",
        "max_extract_size",
        "max_rate",
        "max_rate_per_host",
        "requests_per_second",
    }
)


def check_names(given: Iterable[str], known: Iterable[str], where: str) -> None:
    """Refuse option names that ``where`` does not take, suggesting the nearest known ones.

    >>> check_names(["concurency"], Options.names(), "fetch()")
    Traceback (most recent call last):
    rheo_nb.errors.OptionError: fetch() has no option 'concurency': did you mean concurrency?

    :raises OptionError: naming every unknown option.
    """
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    problems, unmatched = [], False
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        problems.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        unmatched = unmatched or not close
    if len(problems) == 1 and not unmatched:
        problem = problems[0].replace(" (", ": ", 1).rstrip(")")
        raise OptionError(f"{where} has no option {problem}")
    listing = f"; its options are {', '.join(known)}" if unmatched else ""
    plural = "s" if len(problems) > 1 else ""
    raise OptionError(f"{where} has no option{plural} {', '.join(problems)}{listing}")
