"""The ``rheo-nb`` command: ``get`` downloads, ``demo`` shows it all on a local server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .api import fetch_sync
from .errors import RheoNbError
from .items import File


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
        results = fetch_sync(
            items,
            args.output,
            concurrency=args.concurrency,
            retries=args.retries,
            timeout=args.timeout,
            overwrite=args.overwrite,
            segments=segments,
            progress=False if args.quiet else "text",
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
