"""Sizes, rates, durations and URLs as short text, for displays, tables and messages."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")

#: Query parameters whose values are treated as secrets when a URL is shown.
_SECRET_PARAM = re.compile(
    r"(key|token|secret|passw|pwd|sig|signature|credential|auth|session)", re.IGNORECASE
)
MASK = "***"


def size(n: float | None) -> str:
    """``size(1536) == '1.5 KiB'``; ``None`` (unknown) gives ``'?'``."""
    if n is None:
        return "?"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def rate(bytes_per_second: float | None) -> str:
    if bytes_per_second is None:
        return "–"
    return size(bytes_per_second) + "/s"


def duration(seconds: float | None) -> str:
    """``duration(75) == '1:15'``, ``duration(3.25) == '3.2s'``; ``None`` gives ``'–'``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "–"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def mask_url(url: str, secret_params: frozenset[str] = frozenset()) -> str:
    """The URL with its password and secret-looking query values replaced by ``***``.

    ``secret_params`` names more query parameters to mask (an API key's parameter).
    A password with an unencoded ``/``, ``?`` or ``#`` (which a URL parser takes for the
    start of the path), and a login in a URL without a scheme, are masked too; so are
    those of a URL no parser reads (``http://[::1/a``), which is shown all the same: in a
    list of thousands, the message must say which one.
    """
    url = _mask_loose_userinfo(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return _mask_unparsed(url, secret_params)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}" if ":" in userinfo else f"{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_is_secret(k, secret_params) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if _is_secret(k, secret_params) else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_AUTHORITY_END = re.compile(r"[/?#]")


def _mask_loose_userinfo(url: str) -> str:
    """Mask a login that a URL parser would not see as one.

    ``https://alice:p/w@host/f`` parses as host ``alice`` with port ``p``; its password
    would be shown as part of the path. Such a URL is recognised by its impossible port
    (or by having no scheme at all) and an ``@`` further on.
    """
    scheme, sep, rest = url.partition("://")
    if "@" not in (rest if sep else url):
        return url
    if not sep:  # "alice:pw@host/f": no scheme, so no parser sees a login at all
        userinfo = url[: url.index("@")]
        user, colon, _ = userinfo.partition(":")
        return (f"{user}:{MASK}@" if colon else f"{MASK}@") + url[len(userinfo) + 1 :]
    end = _AUTHORITY_END.search(rest)
    authority = rest if end is None else rest[: end.start()]
    if "@" in authority:
        return url  # a well-formed login: urlsplit sees it
    user, colon, port = authority.partition(":")
    if not colon or (port.isascii() and port.isdigit()):
        return url  # an "@" in the path of a well-formed URL, such as /users/@bob
    at = rest.index("@")
    return f"{scheme}://{user}:{MASK}@{rest[at + 1 :]}"


_QUERY_PAIR = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")


def _mask_unparsed(url: str, secret_params: frozenset[str]) -> str:
    """Mask a URL that :func:`urlsplit` refuses by its shape alone: whatever comes before
    an ``@`` in the authority, and the secret-looking values after a ``?``."""
    scheme, sep, rest = url.partition("://")
    end = _AUTHORITY_END.search(rest)
    authority = rest if end is None else rest[: end.start()]
    if sep and "@" in authority:
        userinfo, _, hostport = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:{MASK}@" if colon else f"{MASK}@") + hostport + rest[len(authority) :]
    head, mark, tail = rest.partition("?")
    if mark:
        tail = _QUERY_PAIR.sub(
            lambda m: f"{m[1]}{m[2]}={MASK}" if _is_secret(m[2], secret_params) else m[0],
            "&" + tail,
        )[1:]
    return scheme + sep + head + mark + tail


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters (ESC, BEL, CR…) shown as ``\\x1b`` escapes.

    Text from a server (a reason phrase, a header) can carry terminal control sequences
    that would recolour, retitle or rewrite the user's terminal if printed raw.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


_URL_IN_TEXT = re.compile(r"""https?://[^\s'"<>]+""", re.IGNORECASE)


def mask_urls_in(text: str, secret_params: frozenset[str] = frozenset()) -> str:
    """``text`` with every http(s) URL in it masked as :func:`mask_url` does."""
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0), secret_params), text)


def _is_secret(name: str, extra: frozenset[str]) -> bool:
    return name in extra or _SECRET_PARAM.search(name) is not None


def short_name(name: str, width: int = 40) -> str:
    """Cut a long name in the middle so both its start and its extension stay visible."""
    if len(name) <= width:
        return name
    keep = width - 1
    return name[: keep - keep // 3] + "…" + name[-(keep // 3) :]


def shown_path(path: Path | str, dest: Path | str | None, url: str, width: int = 60) -> str:
    """How a file is named in tables and displays: its path relative to ``dest``
    (``raw/2024/a.csv``, so two ``a.csv`` stay apart), or its URL when it never had a path
    (an item refused before any request is recorded at ``dest`` itself).

    A ``str`` is an object's URL in a bucket (``s3://bucket/prefix/raw/a.csv``): shown
    by its key under the prefix ``dest``, never turned into a local path.
    """
    if dest is not None and path == dest:
        return short_name(url, width)
    if isinstance(path, str):
        base = f"{str(dest).rstrip('/')}/" if isinstance(dest, str) else None
        rest = path[len(base) :] if base and path.startswith(base) else path.rpartition("/")[2]
        return short_name(rest, width)
    if isinstance(dest, Path) and path.is_relative_to(dest):
        return short_name(path.relative_to(dest).as_posix(), width)
    return short_name(path.name, width)
