"""The ``rheo-nb`` command: ``get`` downloads, ``clean`` gives up on the uploads that
interrupted downloads left in a bucket, ``demo`` shows it all on a local server.

Every bad input ends in one line on stderr that names the problem and how to fix it, and
an exit status from :class:`Exit`; no traceback reaches the user. Flags are added in
groups (:func:`_transfer_flags`, :func:`_dataset_flags`, :func:`_traffic_flags`,
:func:`_private_flags`, :func:`_storage_flags`, :func:`_cluster_flags`), and
:func:`_options` turns the parsed flags into ``fetch`` options: a new flag is a line in
each. ``-i`` inputs are this command's own 'URL [hash] [path]' lists or manifests, read
by :func:`rheo_nb.read_manifest`.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

from yarl import URL

from ._version import __version__
from .auth import BearerToken
from .display import TextProgress
from .errors import DestinationError, ManifestError, OptionError, RheoNbError
from .hashing import parse_hash
from .items import File, Items, check_headers, check_url
from .options import is_secret_option, parse_rate


class Exit(IntEnum):
    """What ``rheo-nb`` exits with, in the spirit of wget's exit statuses."""

    #: Every file is on disk: downloaded now, or already there and skipped.
    OK = 0
    #: Some downloads failed; each failure is printed on stderr (with ``-q`` too).
    FAILED = 1
    #: Usage error: an unknown flag, a bad value, an unreadable URL list or manifest.
    #: Nothing was downloaded.
    USAGE = 2
    #: The destination folder cannot be created or written, or its bucket does not exist
    #: or refuses the credentials. Nothing was downloaded.
    DESTINATION = 3
    #: A bug in rheo_nb: the message says what happened; please report it.
    INTERNAL = 70
    #: Interrupted (Ctrl-C); partial files are kept, and the same command resumes them.
    INTERRUPTED = 130


EXIT_STATUSES = """\
exit status:
  0    all done: every file is on disk (downloaded, or already there and skipped)
  1    some downloads failed (each failure is printed on stderr, even with -q)
  2    usage error: unknown flag, bad value, unreadable URL list or manifest
       (nothing downloaded)
  3    the destination (folder or bucket) cannot be used (nothing downloaded)
  70   internal error: a bug in rheo_nb, please report it
  130  interrupted (Ctrl-C): partial files are kept; run the same command to resume"""


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with one line per error instead of a usage block and a traceback."""

    #: The parser of each command, by name.
    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}; see '{self.prog} --help'")


# --- the command line -----------------------------------------------------------------------


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, not {text!r}"
            ) from None
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def _segments(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a whole number >= 1 (1: never split), not {text!r}"
        )
    return value


#: What ``--format`` takes: ``list`` is this command's own 'URL [hash] [path]' lines.
#: The manifest module (csv, gzip, json…) is imported only once a manifest is read, for a
#: quick start-up; a test pins these to its ``FORMATS`` and ``COLUMNS``.
INPUT_FORMATS = ("auto", "list", "sums", "registry", "aria2", "csv", "tsv", "jsonl", "parquet")
COLUMNS = ("url", "path", "hash", "mirrors")


def _manifest_format(text: str) -> str:
    if text not in INPUT_FORMATS:
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(INPUT_FORMATS)}; not {text!r}"
        )
    return text


def _columns(text: str) -> dict[str, str]:
    """``url=image_url,path=key`` as ``{"url": "image_url", "path": "key"}``."""
    columns: dict[str, str] = {}
    for pair in text.split(","):
        field, equals, column = (part.strip() for part in pair.partition("="))
        if not equals or not field or not column:
            raise argparse.ArgumentTypeError(
                f"expected FIELD=COLUMN pairs separated by commas, e.g. url=image_url; "
                f"not {pair.strip()!r}"
            )
        if field not in COLUMNS:
            raise argparse.ArgumentTypeError(
                f"unknown field {field!r}: map {', '.join(COLUMNS)} to your column names"
            )
        columns[field] = column
    return columns


def _transfer_flags(get: argparse.ArgumentParser) -> None:
    get.add_argument("urls", nargs="*", metavar="URL", help="URLs to download")
    get.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="FILE",
        help="read the files to download from FILE, a path or an http(s) URL: 'URL [hash] "
        "[path]' lines ('-': stdin; '#' starts a comment), or a manifest (SHA256SUMS and "
        "other checksum files, a pooch registry, an aria2 input file, a CSV, TSV, JSONL or "
        "Parquet table), told apart by name and content",
    )
    get.add_argument(
        "-o",
        "--output",
        default=".",
        metavar="DIR",
        help="destination folder, created when missing (default: .), or a bucket: "
        "s3://bucket/prefix",
    )
    get.add_argument(
        "-j",
        "--concurrency",
        type=_count(1),
        default=8,
        metavar="N",
        help="downloads at once (default: 8)",
    )
    get.add_argument(
        "--hash",
        action="append",
        default=[],
        metavar="ALGO:HEX",
        help="expected hash of the URL in the same position (repeat per URL): "
        "md5, sha1, sha256 or sha512",
    )
    get.add_argument(
        "--retries",
        type=_count(0),
        default=3,
        metavar="N",
        help="further attempts after a transient failure: connection errors, timeouts, "
        "429 and 5xx answers (default: 3; 0: none)",
    )
    get.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="seconds to wait for a connection or for more data (default: 30)",
    )
    get.add_argument(
        "--overwrite", action="store_true", help="download files that are already complete again"
    )
    get.add_argument(
        "--segments",
        type=_segments,
        default="auto",
        metavar="N",
        help="connections per large file: auto (default) or a number; 1 never splits",
    )
    get.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress; failures are still printed on stderr",
    )


def _dataset_flags(get: argparse.ArgumentParser) -> None:
    data = get.add_argument_group(
        "datasets",
        _wrap(
            "Manifests given with -i, archives unpacked once downloaded, and offline mode "
            "for machines without internet (compute nodes)."
        ),
    )
    data.add_argument(
        "--format",
        type=_manifest_format,
        default="auto",
        metavar="FORMAT",
        help=f"how to read -i files: {', '.join(INPUT_FORMATS)} (default: auto, by name and "
        "content; list: 'URL [hash] [path]' lines)",
    )
    data.add_argument(
        "--base-url",
        metavar="URL",
        help="resolve the names in a manifest against this URL (default: the folder of a "
        "manifest given as a URL)",
    )
    data.add_argument(
        "--columns",
        type=_columns,
        metavar="FIELD=COLUMN,...",
        help=f"a table's column names, e.g. url=image_url,path=key (fields: {', '.join(COLUMNS)})",
    )
    data.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="a manifest entry that cannot be read fails on its own (exit status 1) "
        "instead of stopping the command before any download",
    )
    data.add_argument(
        "--extract",
        action="store_true",
        help="unpack each archive once downloaded (zip, tar, tar.gz, tar.bz2, tar.xz, "
        "tar.zst; .gz, .bz2, .xz, .zst) into a folder beside it, named after it",
    )
    data.add_argument(
        "--extract-remove",
        action="store_true",
        help="with --extract, delete each archive once it is extracted",
    )
    data.add_argument(
        "--offline",
        action="store_true",
        help="send no request: complete files are skipped (checked against their hash), "
        "the others fail with 'offline: not downloaded' (also: RHEO_NB_OFFLINE=1)",
    )


def _rate(text: str) -> int:
    try:
        return parse_rate(text)
    except RheoNbError:
        raise argparse.ArgumentTypeError(
            "expected at least 1 byte per second, written as 20M (1024-based, as curl and "
            f"wget read it), 20MB/s, 500KiB/s or 100Mbit/s, not {text!r}"
        ) from None


def _per_second(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a number of requests per second > 0 (0.5: one every 2 s), not {text!r}"
        )
    return value


def _traffic_flags(get: argparse.ArgumentParser) -> None:
    polite = get.add_argument_group(
        "being a good citizen",
        _wrap(
            "Caps on bandwidth and on request starts. Whatever they are, an origin that "
            "answers 429 or 503 gets fewer connections, and one that asks for a pause "
            "(Retry-After, a spent RateLimit quota) gets it."
        ),
    )
    polite.add_argument(
        "--limit-rate",
        type=_rate,
        metavar="RATE",
        help="most bytes per second for the whole download, all connections together: "
        "20M or 500k (1024-based, as curl and wget), 20MB/s (1000-based), 20MiB/s, 100Mbit/s",
    )
    polite.add_argument(
        "--limit-rate-per-host",
        type=_rate,
        metavar="RATE",
        help="the same for each host (scheme, host and port) on its own",
    )
    polite.add_argument(
        "--requests-per-second",
        type=_per_second,
        metavar="N",
        help="most request starts per second to each host, evenly spaced (ranges and "
        "redirects count)",
    )


def _private_flags(get: argparse.ArgumentParser) -> None:
    private = get.add_argument_group(
        "private sources",
        _wrap(
            "Secrets are read from environment variables, never from the command line, "
            "where other users of the machine could see them. Credentials are sent only to "
            "the hosts of the URLs given, never to a host a redirect leads to."
        ),
    )
    private.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="send this header with every request (repeatable)",
    )
    private.add_argument(
        "--bearer-env",
        metavar="VAR",
        help="send 'Authorization: Bearer <token>' with the token in environment variable VAR",
    )
    private.add_argument(
        "--user",
        metavar="USER",
        help="basic auth as USER, with the password in the variable named by --password-env",
    )
    private.add_argument(
        "--password-env",
        metavar="VAR",
        default="RHEO_NB_PASSWORD",
        help="environment variable holding the --user password (default: RHEO_NB_PASSWORD)",
    )
    private.add_argument("--netrc", action="store_true", help="use logins from $NETRC or ~/.netrc")
    private.add_argument(
        "--ca",
        metavar="FILE",
        help="trust the CA certificates in FILE (PEM); 'system': the operating system's "
        "trust store (needs the truststore package)",
    )
    private.add_argument(
        "--proxy",
        metavar="URL",
        help="send requests through this HTTP proxy (default: HTTP_PROXY / HTTPS_PROXY / "
        "NO_PROXY from the environment, which is also where a proxy password belongs)",
    )


def _storage_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "object storage",
        _wrap(
            "An s3://bucket/prefix destination takes its credentials from the environment "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) or the shared "
            "AWS config files, never from the command line."
        ),
    )
    group.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an s3fs storage option, e.g. endpoint_url=http://127.0.0.1:9000 or "
        "client_kwargs.region_name=eu-west-1 (repeatable; true/false and whole numbers "
        "are converted)",
    )


def _cluster(text: str) -> str:
    if text == "local" or ":" in text:
        return text
    raise argparse.ArgumentTypeError(
        f"expected 'local' or a scheduler address such as tcp://scheduler:8786, not {text!r}"
    )


def _cluster_flags(get: argparse.ArgumentParser) -> None:
    cluster = get.add_argument_group(
        "cluster",
        _wrap(
            "Run the downloads on a Dask cluster (pip install 'rheo_nb[cluster]'). The "
            "folder of -o must be one every worker can write at the same path; -j is the "
            "downloads at once on each worker."
        ),
    )
    cluster.add_argument(
        "--cluster",
        type=_cluster,
        metavar="ADDRESS",
        help="'local': a cluster of this machine's cores, closed at the end; or the address "
        "of a running scheduler, such as tcp://scheduler:8786",
    )
    cluster.add_argument(
        "--shard-size",
        type=_count(1),
        metavar="N",
        help="files per task on the cluster (default: several tasks per worker)",
    )


def _wrap(text: str) -> str:
    # The help keeps the exit-status table as written, so prose is wrapped here.
    return textwrap.fill(text, width=78)


def _parser() -> _Parser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="rheo-nb",
        description=_wrap("Download files, fast and safely: verified, resumable, in parallel."),
        epilog=EXIT_STATUSES,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"rheo_nb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    get = sub.add_parser(
        "get",
        help="download URLs into a folder",
        description=_wrap(
            "Download URLs into a folder. Complete files are skipped, partial ones "
            "resumed: run the same command again after an interruption."
        ),
        epilog="examples:\n  rheo-nb get -i urls.txt -o data/ -j 16\n"
        "  rheo-nb get -i https://example.org/v1/SHA256SUMS -o data/ --extract\n"
        "  rheo-nb get -i images.parquet --columns url=image_url,path=key -o images/\n\n"
        "  rheo-nb get -i urls.txt -o /shared/data --cluster tcp://scheduler:8786\n\n"
        + EXIT_STATUSES,
        formatter_class=formatter,
    )
    _transfer_flags(get)
    _dataset_flags(get)
    _traffic_flags(get)
    _private_flags(get)
    _cluster_flags(get)
    _storage_flags(get)
    clean = sub.add_parser(
        "clean",
        help="abort the uploads interrupted downloads left in a bucket",
        description=_wrap(
            "Abort the multipart uploads that interrupted downloads left under an "
            "s3://bucket/prefix (a rerun would have resumed them), so that none is billed. "
            "Uploads of other tools are left alone. Prints the objects they were for."
        ),
        epilog="example:\n  rheo-nb clean s3://my-bucket/datasets\n\n" + EXIT_STATUSES,
        formatter_class=formatter,
    )
    clean.add_argument("dest", metavar="s3://BUCKET/PREFIX", help="where the downloads went")
    _storage_flags(clean)
    demo = sub.add_parser(
        "demo",
        help="download sample files from a bundled local server (no internet needed)",
        description=_wrap(
            "Download sample files from a local server started for the demo: large files, "
            "many small ones, one that needs a retry and one that fails on purpose."
        ),
        epilog=EXIT_STATUSES,
        formatter_class=formatter,
    )
    demo.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="DIR",
        help="destination folder (default: a folder in your cache that the next run "
        "reuses, so a second run shows files being skipped)",
    )
    parser.commands = {"get": get, "clean": clean, "demo": demo}
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.error("give a command: 'get' to download URLs, 'clean', or 'demo'")
    if extra:
        sub = parser.commands[args.command]
        flags = [s for a in sub._actions for s in a.option_strings]
        hints = [
            f"{flag} (did you mean {close[0]}?)"
            if (close := difflib.get_close_matches(flag.split("=")[0], flags, n=1))
            else flag
            for flag in extra
        ]
        sub.error(f"unrecognized argument{'s' if len(extra) > 1 else ''}: {', '.join(hints)}")
    return args


# --- from flags to files and options --------------------------------------------------------

_HASH_FIELD = re.compile(r"^[A-Za-z0-9-]+:")


def _hash(text: str, where: str) -> str:
    try:
        parse_hash(text)
    except RheoNbError as exc:
        raise UsageError(f"{where}: {exc}") from None
    return text


def _read_list(path: str) -> list[File]:
    """Lines of ``URL [hash] [path]``; blank lines and ``#`` comments are skipped.

    :raises UsageError: the file cannot be read, or a line is malformed.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"rheo-nb get: -i {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(
            f"rheo-nb get: -i {path}: is a folder; give a file of 'URL [hash] [path]' lines"
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"rheo-nb get: -i {path}: not a UTF-8 text file of URLs") from None
    except OSError as exc:
        raise UsageError(
            f"rheo-nb get: -i {path}: cannot read it ({exc.strerror or exc})"
        ) from None
    files = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        # '#' starts a comment where it starts a field (a '#' inside a URL is a fragment).
        comment = next((i for i, f in enumerate(fields) if f.startswith("#")), len(fields))
        fields = fields[:comment]
        if not fields:
            continue
        where = f"rheo-nb get: {path}:{number}"
        url, *rest = fields
        hashes = [f for f in rest if _HASH_FIELD.match(f)]
        paths = [f for f in rest if not _HASH_FIELD.match(f)]
        if len(hashes) > 1 or len(paths) > 1:
            raise UsageError(
                f"{where}: expected 'URL [hash] [path]', got {len(fields)} fields; "
                "quote nothing, and put a '#' before a comment"
            )
        hash_ = _hash(hashes[0], where) if hashes else None
        files.append(File(url, paths[0] if paths else None, hash=hash_))
    return files


def _files(args: argparse.Namespace, client: dict[str, Any]) -> Items:
    """The URLs given, then the files of each ``-i`` input in turn; lazily when a
    manifest is (a Parquet table is read in batches while the downloads run)."""
    if args.hash and len(args.hash) != len(args.urls):
        times = "time" if len(args.hash) == 1 else "times"
        raise UsageError(
            f"rheo-nb get: --hash given {len(args.hash)} {times} for {len(args.urls)} URLs: "
            "give one per URL, in the same order (or use -i FILE with 'URL hash' lines)"
        )
    hashes: list[str | None] = [_hash(h, "rheo-nb get: --hash") for h in args.hash]
    hashes = hashes or [None] * len(args.urls)
    sources: list[Sequence[File]] = [
        [File(u, hash=h) for u, h in zip(args.urls, hashes, strict=True)]
    ]
    sources += [_input(path, args, client) for path in args.input]
    if not any(len(s) for s in sources):
        raise UsageError(
            "rheo-nb get: no URLs given; pass them as arguments or with -i FILE "
            "(see 'rheo-nb get --help')"
        )
    if all(isinstance(s, list) for s in sources):
        return [f for s in sources for f in s]
    return itertools.chain.from_iterable(sources)


def _input(path: str, args: argparse.Namespace, client: dict[str, Any]) -> Sequence[File]:
    """The files of one ``-i`` input: a 'URL [hash] [path]' list or a manifest.

    :raises UsageError: it cannot be read, or an entry is unusable (naming the line).
    """
    remote = re.match(r"^https?://", path, re.IGNORECASE) is not None
    kind = args.format
    if path == "-":
        if kind not in ("auto", "list"):
            raise UsageError(
                f"rheo-nb get: -i -: standard input is read as 'URL [hash] [path]' lines; "
                f"give a {kind} manifest as a file or a URL"
            )
        return _read_list(path)
    if remote and kind == "list":
        raise UsageError(
            f"rheo-nb get: -i {path}: --format list reads a local file or stdin; "
            "a URL is read as a manifest (--format auto)"
        )
    if not remote:
        kind = _local_format(path, kind)
        if kind == "list":
            return _read_list(path)
    from .manifest import read_manifest

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            files = read_manifest(
                path,
                base_url=args.base_url,
                format=kind,
                columns=args.columns,
                errors="skip" if args.skip_bad_rows else "raise",
                **client,
            )
        except ManifestError as exc:
            raise UsageError(f"rheo-nb get: {exc}") from None
        except OptionError as exc:  # --columns for a checksum file, a bad --base-url…
            raise UsageError(f"rheo-nb get: -i {path}: {exc}") from None
    for warning in caught:  # aria2 options ignored: said once, in one line
        print(f"rheo-nb get: {warning.message}", file=sys.stderr)
    return files


def _local_format(path: str, given: str) -> str:
    """How to read the local file ``path``: ``given``, or by its name and content, where
    a file of URL lines is this command's own list unless it has aria2's marks (TABs
    between mirrors, indented options), and anything else unrecognised is read as a
    list, which says what is wrong with it."""
    where = Path(path)
    if not where.exists():
        raise UsageError(f"rheo-nb get: -i {path}: no such file")
    if where.is_dir():
        raise UsageError(
            f"rheo-nb get: -i {path}: is a folder; give a file of 'URL [hash] [path]' lines "
            "or a manifest"
        )
    if given != "auto":
        return given
    from .manifest import detect_format

    try:
        kind = detect_format(path)
    except ManifestError:
        return "list"
    if kind == "aria2" and not _aria2_marks(where):
        return "list"
    return kind


_ARIA2_OPTION = re.compile(r"^[ \t]+[A-Za-z0-9-]+=")
_URL_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")


def _aria2_marks(path: Path) -> bool:
    """Whether a file of URL lines is an aria2 input file: an indented option line, or
    TAB-separated mirrors (every field a URL). Plain URL lines read the same either way."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if _ARIA2_OPTION.match(line):
                return True
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) > 1 and all(_URL_FIELD.match(x.strip()) for x in fields if x.strip()):
                return True
    return False


def _secret_from_env(flag: str, var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise UsageError(f"rheo-nb get: {flag} {var}: the environment variable {var} is not set")
    return value


def _private_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the 'private sources' flags. :raises UsageError: on a misuse."""
    options: dict[str, Any] = {"netrc": args.netrc}
    headers: dict[str, str] = {}
    for raw in args.header:
        name, colon, value = raw.partition(":")
        if not colon or not name.strip():
            raise UsageError(f"rheo-nb get: --header {raw!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    if headers:
        try:
            options["headers"] = check_headers(headers)
        except RheoNbError as exc:
            raise UsageError(f"rheo-nb get: --header: {exc}") from None
    if args.bearer_env and args.user:
        raise UsageError("rheo-nb get: give --bearer-env or --user, not both")
    if args.bearer_env:
        options["auth"] = BearerToken(_secret_from_env("--bearer-env", args.bearer_env))
    elif args.user:
        options["auth"] = (args.user, _secret_from_env("--password-env", args.password_env))
    if args.ca:
        if args.ca != "system" and not Path(args.ca).exists():
            raise UsageError(f"rheo-nb get: --ca {args.ca}: no such file")
        options["verify"] = args.ca
    if args.proxy:
        try:
            has_password = URL(args.proxy).password is not None
        except ValueError:
            raise UsageError(f"rheo-nb get: --proxy: malformed URL {args.proxy!r}") from None
        if has_password:
            raise UsageError(
                "rheo-nb get: --proxy: a password on the command line is visible to other "
                "users; set HTTPS_PROXY / HTTP_PROXY in the environment instead"
            )
        options["proxy"] = args.proxy
    return options


def _storage_options(args: argparse.Namespace) -> dict[str, Any]:
    """``storage_options`` from ``--storage-option NAME=VALUE`` flags (dotted names nest).

    :raises UsageError: a malformed flag, or a secret on the command line.
    """
    options: dict[str, Any] = {}
    where = f"rheo-nb {args.command}: --storage-option"
    for raw in args.storage_option:
        name, equals, text = raw.partition("=")
        path = name.strip().split(".")
        if not equals or not all(path):
            raise UsageError(
                f"{where} {raw!r}: expected NAME=VALUE, e.g. endpoint_url=http://127.0.0.1:9000"
            )
        if is_secret_option(name):
            raise UsageError(
                f"{where} {name}: a secret on the command line is visible to other users; "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the "
                "environment instead"
            )
        target = options
        for part in path[:-1]:
            inner = target.setdefault(part, {})
            if not isinstance(inner, dict):
                raise UsageError(f"{where} {name}: {part} is given a value already")
            target = inner
        target[path[-1]] = _option_value(text)
    return options


def _option_value(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    return int(text) if text.isascii() and text.isdigit() else text


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """``fetch`` options from the flags of ``get``."""
    if args.extract_remove and not args.extract:
        raise UsageError(
            "rheo-nb get: --extract-remove deletes archives once extracted: give --extract too"
        )
    if args.shard_size is not None and args.cluster is None:
        raise UsageError("rheo-nb get: --shard-size cuts the work for a cluster: give --cluster")
    storage = _storage_options(args)
    return {
        **({"storage_options": storage} if storage else {}),
        "cluster": args.cluster,
        "shard_size": args.shard_size,
        "concurrency": args.concurrency,
        "retries": args.retries,
        "timeout": args.timeout,
        "overwrite": args.overwrite,
        "segments": args.segments,
        "extract": args.extract,
        "extract_remove": args.extract_remove,
        "offline": True if args.offline else None,  # None: as RHEO_NB_OFFLINE says
        "max_rate": args.limit_rate,
        "max_rate_per_host": args.limit_rate_per_host,
        "requests_per_second": args.requests_per_second,
        "progress": TextProgress(failures_only=True) if args.quiet else "text",
        **_private_options(args),
    }


#: The options that also shape the download of a manifest given as a URL.
_MANIFEST_OPTIONS = ("retries", "timeout", "offline", "headers", "auth", "verify", "proxy", "netrc")


# --- running ----------------------------------------------------------------------------------


def _get(args: argparse.Namespace) -> Exit:
    from .api import fetch_sync

    if args.base_url is not None:
        try:
            check_url(args.base_url)
        except RheoNbError as exc:
            raise UsageError(f"rheo-nb get: --base-url: {exc}") from None
    options = _options(args)
    files = _files(args, {k: options[k] for k in _MANIFEST_OPTIONS if k in options})
    results = fetch_sync(files, args.output, **options)
    return Exit.FAILED if results.failed else Exit.OK


def _clean(args: argparse.Namespace) -> Exit:
    from .api import clean

    for path in clean(args.dest, storage_options=_storage_options(args)):
        print(path)
    return Exit.OK


def _demo(args: argparse.Namespace) -> Exit:
    from . import demo

    results = demo.run(args.output, progress="text")
    return Exit.OK if demo.as_expected(results) else Exit.FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rheo-nb`` and return its exit status (:class:`Exit`)."""
    try:
        args = _parse(argv)
        run = {"get": _get, "clean": _clean, "demo": _demo}[args.command]
        return int(run(args))
    except UsageError as exc:
        return _fail(str(exc), Exit.USAGE)
    except DestinationError as exc:
        where = "rheo-nb clean:" if args.command == "clean" else "rheo-nb: -o"
        return _fail(f"{where} {exc.url}: {exc.cause}", Exit.DESTINATION)
    except RheoNbError as exc:  # an option the library refused before any download
        return _fail(f"rheo-nb: {exc}", Exit.USAGE)
    except KeyboardInterrupt as exc:
        detail = f": {exc}" if str(exc) else "; run the same command again to resume"
        return _fail(f"rheo-nb: interrupted{detail}", Exit.INTERRUPTED)
    except Exception as exc:
        return _fail(
            f"rheo-nb: internal error ({type(exc).__name__}: {exc}); this is a bug in "
            f"rheo_nb {__version__}: please report it with the command that caused it",
            Exit.INTERNAL,
        )


def _fail(message: str, status: Exit) -> int:
    print(message, file=sys.stderr)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
