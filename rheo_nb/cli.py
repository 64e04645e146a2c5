"""The ``rheo-nb`` command: ``get`` downloads, ``demo`` shows it all on a local server."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yarl import URL

from ._version import __version__
from .api import fetch_sync
from .auth import BearerToken
from .errors import RheoNbError
from .items import File, check_headers


def _read_list(path: str) -> list[File]:
    """Lines of ``URL [hash] [path]``; blank lines and ``#`` comments are skipped."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) > 3:
            raise SystemExit(
                f"{path}:{number}: expected 'URL [hash] [path]', got {len(fields)} fields"
            )
        url, *rest = fields
        hash_ = next((f for f in rest if ":" in f), None)
        dest = next((f for f in rest if ":" not in f), None)
        out.append(File(url, dest, hash=hash_))
    return out


def _secret_from_env(flag: str, var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise SystemExit(f"rheo-nb: {flag} {var}: the environment variable {var} is not set")
    return value


def _private_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the 'private sources' flags. :raises SystemExit: on a misuse."""
    options: dict[str, Any] = {"netrc": args.netrc}
    headers: dict[str, str] = {}
    for raw in args.header:
        name, colon, value = raw.partition(":")
        if not colon or not name.strip():
            raise SystemExit(f"rheo-nb: --header {raw!r}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    if headers:
        options["headers"] = check_headers(headers)
    if args.bearer_env and args.user:
        raise SystemExit("rheo-nb: give --bearer-env or --user, not both")
    if args.bearer_env:
        options["auth"] = BearerToken(_secret_from_env("--bearer-env", args.bearer_env))
    elif args.user:
        options["auth"] = (args.user, _secret_from_env("--password-env", args.password_env))
    if args.ca:
        options["verify"] = args.ca
    if args.proxy:
        try:
            has_password = URL(args.proxy).password is not None
        except ValueError:
            raise SystemExit(f"rheo-nb: --proxy: malformed URL {args.proxy!r}") from None
        if has_password:
            raise SystemExit(
                "rheo-nb: --proxy: a password on the command line is visible to other users; "
                "set HTTPS_PROXY / HTTP_PROXY in the environment instead"
            )
        options["proxy"] = args.proxy
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rheo-nb", description="Download files, fast and safely.")
    parser.add_argument("--version", action="version", version=f"rheo_nb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    get = sub.add_parser("get", help="download URLs into a folder")
    get.add_argument("urls", nargs="*", metavar="URL")
    get.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="FILE",
        help="read 'URL [hash] [path]' lines from FILE ('-': stdin)",
    )
    get.add_argument(
        "-o", "--output", default=".", metavar="DIR", help="destination folder (default: .)"
    )
    get.add_argument(
        "-j",
        "--concurrency",
        type=int,
        default=8,
        metavar="N",
        help="downloads at once (default 8)",
    )
    get.add_argument(
        "--hash",
        action="append",
        default=[],
        metavar="ALGO:HEX",
        help="expected hash of the URL in the same position (repeat per URL)",
    )
    get.add_argument("--retries", type=int, default=3)
    get.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for a connection or for more data",
    )
    get.add_argument("--overwrite", action="store_true", help="replace complete files")
    get.add_argument(
        "--segments",
        default="auto",
        metavar="N",
        help="connections per large file: auto (default) or a number; 1 turns splitting off",
    )
    get.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    private = get.add_argument_group(
        "private sources",
        "Secrets are read from environment variables, never from the command line, where "
        "other users of the machine could see them. Credentials are sent only to the hosts "
        "of the URLs given, never to a host a redirect leads to.",
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

    demo = sub.add_parser("demo", help="download sample files from a bundled local server")
    demo.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="DIR",
        help="destination folder (default: a new temporary folder)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from . import demo

        demo.run(args.output, progress="text")
        return 0

    if args.hash and len(args.hash) != len(args.urls):
        raise SystemExit(
            f"--hash given {len(args.hash)} times for {len(args.urls)} URLs: give one per URL"
        )
    hashes = args.hash or [None] * len(args.urls)
    items = [File(u, hash=h) for u, h in zip(args.urls, hashes, strict=True)]
    for path in args.input:
        items += _read_list(path)
    if not items:
        raise SystemExit("rheo-nb get: no URLs given (as arguments or with -i FILE)")
    segments: int | str = args.segments if args.segments == "auto" else int(args.segments)
    try:
        private = _private_options(args)
        results = fetch_sync(
            items,
            args.output,
            concurrency=args.concurrency,
            retries=args.retries,
            timeout=args.timeout,
            overwrite=args.overwrite,
            segments=segments,
            progress=False if args.quiet else "text",
            **private,
        )
    except RheoNbError as exc:
        print(f"rheo-nb: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rheo-nb: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0 if not results.failed else 1


if __name__ == "__main__":
    sys.exit(main())
