"""Manifests: checksum files, registries, aria2 input files and URL tables, read as Files.

>>> files = rheo_nb.read_manifest("https://example.org/data/SHA256SUMS")  # doctest: +SKIP
>>> results = await rheo_nb.fetch(files, dest="data")                      # doctest: +SKIP

Formats (``format="auto"`` picks one by the name, then by the first lines):

* ``"sums"``: coreutils checksum files (``SHA256SUMS``, ``sha512sums``, ``MD5SUMS``,
  ``*.sha256``): ``<hex>  name``, ``<hex> *name``, and BSD tags ``SHA256 (name) = <hex>``.
  The algorithm comes from the tag, else the file's name, else the digest's length. A
  file holding only a digest (``x.tar.gz.sha256``) names the file it is beside.
* ``"registry"``: pooch registries, ``name hash [url]`` with ``#`` comments; a hash is
  ``alg:hex``, or bare hex for sha256.
* ``"aria2"``: aria2 input files: a line of TAB-separated URLs (mirrors of one file),
  then indented ``out=``, ``dir=`` and ``checksum=sha-256=<hex>`` lines; other options are
  ignored with one warning naming them. A plain list of URLs is such a file.
* ``"csv"``, ``"tsv"``, ``"jsonl"``, ``"parquet"``: one file per row; columns ``url``
  (required), ``path``, ``hash`` and ``mirrors`` (a list, or ``|``-separated), renamed
  with ``columns={"url": "image_url"}``. Parquet needs pyarrow (``rheo_nb[parquet]``) and
  is read lazily, in record batches.

Text manifests may be gzip or zstd compressed (``rheo_nb[zstd]``). Names and relative URLs
are resolved against ``base_url``, which for a manifest read from a URL defaults to that
URL's folder; each file's ``path`` keeps the sub-folders of its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import gzip
import io
import json
import os
import re
import shlex
import shutil
import tempfile
import threading
import warnings
import weakref
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, overload
from urllib.parse import quote, urljoin

from . import files as naming
from .client import SESSION_OPTIONS
from .errors import InvalidItemError, ManifestError, OptionError
from .format import mask_url
from .hashing import parse_hash
from .items import BadRow, File, check_url
from .options import Options

Format = Literal["auto", "sums", "registry", "aria2", "csv", "tsv", "jsonl", "parquet"]
FORMATS = ("sums", "registry", "aria2", "csv", "tsv", "jsonl", "parquet")
COLUMNS = ("url", "path", "hash", "mirrors")
#: Rows of a Parquet table turned into Python objects at a time.
BATCH_ROWS = 4096

_HEAD = 64 << 10
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DIGEST_LENGTHS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_SUMS_NAME = re.compile(
    r"(?:^|[^a-z0-9])(md5|sha1|sha224|sha256|sha384|sha512|b2|blake2b?|sha3-?\d*)"
    r"(?:sums?)?(?:\.txt)?$"
)
_BSD_LINE = re.compile(r"^(?P<alg>[A-Za-z0-9-]+) ?\((?P<name>.*)\) ?= ?(?P<hex>[0-9A-Fa-f]+)$")
_GNU_LINE = re.compile(r"^(?P<hex>[0-9A-Fa-f]+)(?:[ \t](?P<mode>[ *]?)(?P<name>.*))?$")
_ARIA2_HASHES = {"md5": "md5", "sha-1": "sha1", "sha-256": "sha256", "sha-512": "sha512"}
_ARIA2_HONOURED = frozenset({"out", "dir", "checksum"})


def read_manifest(
    source: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    format: Format = "auto",
    columns: Mapping[str, str] | None = None,
    errors: Literal["raise", "skip"] = "raise",
    **client_options: Any,
) -> Sequence[File]:
    """Read a manifest (a path, or an http(s) URL downloaded first) into :class:`File`
    objects for :func:`fetch`, :func:`fetch_sync` or :func:`start`.

    >>> files = rheo_nb.read_manifest("SHA256SUMS", base_url="https://example.org/v1/")
    ...                                                                  # doctest: +SKIP
    >>> files = rheo_nb.read_manifest("images.parquet", columns={"url": "image_url"})
    ...                                                                  # doctest: +SKIP
    >>> rheo_nb.fetch_sync(files, dest="data")                           # doctest: +SKIP

    ``format``: ``"auto"`` or one of the formats of :mod:`rheo_nb.manifest`. ``columns``
    maps ``url``, ``path``, ``hash`` and ``mirrors`` to a table's own column names.
    ``client_options`` are those of :func:`fetch` (``auth``, ``headers``, ``verify``,
    ``proxy``, ``client``…), used to download a URL ``source``.

    Every entry is checked (URL, path inside ``dest``, hash) before this returns, so a
    bad one stops the call before any download: :class:`ManifestError` names the file
    and the line (or Parquet row). With ``errors="skip"`` a bad entry becomes an item that
    the download reports as failed with that message, and the others go on.

    A Parquet table comes back as a lazy sequence (:class:`ParquetManifest`); every
    other format as a list. Blocking (it reads files, and may download one).

    :raises ManifestError: the manifest cannot be read, or (``errors="raise"``) an entry
        is unusable.
    :raises OptionError: an argument has an unusable value.
    """
    _check_arguments(format, columns, errors, client_options)
    base = _folder_url(base_url) if base_url is not None else None
    text = os.fspath(source)
    if not isinstance(text, str):
        raise OptionError(f"source must be a path or a URL, not {type(text).__name__}")
    if not re.match(r"^https?://", text, re.IGNORECASE):
        if _SCHEME.match(text) and not re.match(r"^[A-Za-z]:[\\/]", text):
            raise OptionError(
                f"cannot read a manifest from {mask_url(text)!r}: give a path or an http(s) URL"
            )
        return _read(Path(text), text, text, base, format, columns, errors)
    folder = _download(text, client_options)
    try:
        name = naming.name_from_url(text)
        files = _read(
            folder / name, mask_url(text), name, base or urljoin(text, "."), format, columns, errors
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if isinstance(files, ParquetManifest):
        files.owns(folder)  # read lazily: the folder goes with the sequence
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return files


def _read(
    path: Path,
    label: str,
    name: str,
    base_url: str | None,
    format: Format,
    columns: Mapping[str, str] | None,
    errors: str,
) -> Sequence[File]:
    ctx = _Context(label, base_url, errors == "skip")
    name = _plain_name(name)
    with _reading(label):
        kind = format if format != "auto" else _detect(path, label, name)
        if columns is not None and kind not in _TABLES:
            raise OptionError(f"columns= applies to csv, tsv, jsonl and parquet, not {kind}")
        if kind == "parquet":
            return ParquetManifest(path, ctx, _column_map(columns))
        with _open_text(path, label) as raw:
            lines = _decoded(raw, label)
            if kind == "sums":
                return list(_parse_sums(lines, ctx, name))
            if kind == "registry":
                return list(_parse_registry(lines, ctx))
            if kind == "aria2":
                return _parse_aria2(lines, ctx)
            if kind == "jsonl":
                return list(_parse_jsonl(lines, ctx, _column_map(columns)))
            return list(_parse_csv(lines, ctx, _column_map(columns), kind))


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format ``read_manifest(path)`` reads a local file as: by its name, then by its
    first lines (``"sums"``, ``"aria2"``, ``"csv"``…). Blocking.

    >>> rheo_nb.manifest.detect_format("data/SHA256SUMS")  # doctest: +SKIP
    'sums'

    :raises ManifestError: the file cannot be read, or says nothing of its format.
    """
    label = os.fspath(path)
    with _reading(label):
        return _detect(Path(label), label, _plain_name(label))


@contextlib.contextmanager
def _reading(label: str) -> Iterator[None]:
    """Errors met reading the manifest ``label``, as :class:`ManifestError`."""
    try:
        yield
    except OSError as exc:
        raise ManifestError(label, f"cannot read it ({exc.strerror or exc})") from None
    except (EOFError, zlib.error) as exc:
        raise ManifestError(label, f"cannot read it (damaged compressed data: {exc})") from None
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            raise ManifestError(label, f"cannot read it (damaged zstd data: {exc})") from None
        raise


_TABLES = ("csv", "tsv", "jsonl", "parquet")


# --- arguments and sources -----------------------------------------------------------------------


def _check_arguments(
    format: str, columns: Mapping[str, str] | None, errors: str, client_options: dict[str, Any]
) -> None:
    if format != "auto" and format not in FORMATS:
        raise OptionError(f"format must be 'auto' or one of {', '.join(FORMATS)}; not {format!r}")
    if errors not in ("raise", "skip"):
        raise OptionError(f"errors must be 'raise' or 'skip', not {errors!r}")
    if columns is not None:
        if not isinstance(columns, Mapping) or not all(
            isinstance(v, str) for v in columns.values()
        ):
            raise OptionError("columns must map url, path, hash, mirrors to column names")
        unknown = set(columns) - set(COLUMNS)
        if unknown:
            raise OptionError(
                f"columns: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                f"map {', '.join(COLUMNS)} to your column names"
            )
    unknown = set(client_options) - (Options.names() | SESSION_OPTIONS | {"client"})
    if unknown:
        raise OptionError(f"unknown option(s): {', '.join(sorted(unknown))}")


def _folder_url(base_url: str) -> str:
    try:
        check_url(base_url)
    except InvalidItemError as exc:
        raise OptionError(f"base_url: {exc}") from None
    return base_url if base_url.endswith("/") else base_url + "/"


def _download(url: str, client_options: dict[str, Any]) -> Path:
    """Fetch a manifest into a new temporary folder, with rheo_nb itself."""
    from .api import fetch
    from .runner import run_sync

    folder = Path(tempfile.mkdtemp(prefix="rheo_nb-manifest-"))
    options = {"progress": False, **client_options}
    item = File(url, naming.name_from_url(url))
    try:
        outcome = run_sync(lambda: fetch([item], folder, **options))[0]
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not outcome.ok:
        shutil.rmtree(folder, ignore_errors=True)
        raise ManifestError(mask_url(url), f"cannot download it ({outcome.error})")
    return folder


def _plain_name(name: str) -> str:
    """The manifest's file name without a compression suffix, lower case."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    for suffix in (".gz", ".zst", ".zstd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@contextlib.contextmanager
def _open_text(path: Path, label: str) -> Iterator[IO[bytes]]:
    """The manifest's bytes, decompressed when they are gzip or zstd (by magic)."""
    with open(path, "rb") as raw:
        head = raw.read(4)
        raw.seek(0)
        if head[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        elif head == b"\x28\xb5\x2f\xfd":
            try:
                import zstandard
            except ImportError:
                raise ManifestError(
                    label, "zstd-compressed: reading it needs pip install 'rheo_nb[zstd]'"
                ) from None
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            with io.BufferedReader(reader) as unzipped:
                yield unzipped
        else:
            yield raw


def _decoded(raw: IO[bytes], label: str) -> Iterator[str]:
    """UTF-8 lines, line by line, so a decoding error names its own line."""
    for n, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(label, f"not UTF-8 text ({exc.reason})", n) from None
        yield text.removeprefix("\ufeff") if n == 1 else text


# --- detection -----------------------------------------------------------------------------------


def _detect(path: Path, label: str, name: str) -> str:
    """The format by the manifest's name, else by its first lines."""
    with open(path, "rb") as f:
        if f.read(4) == b"PAR1":
            return "parquet"
    by_name = _format_by_name(name)
    if by_name is not None:
        return by_name
    with _open_text(path, label) as raw:
        head = raw.read(_HEAD).decode("utf-8", "replace").removeprefix("\ufeff")
    for line in head.splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            return _format_by_line(text, label)
    raise ManifestError(label, "it is empty: nothing to download")


def _format_by_name(name: str) -> str | None:
    for suffix, kind in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".tab", "tsv"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
    ):
        if name.endswith(suffix):
            return kind
    if _SUMS_NAME.search(name):
        return "sums"
    if "registry" in name:
        return "registry"
    return None


def _format_by_line(text: str, label: str) -> str:
    if _BSD_LINE.match(text) or re.match(r"^\\?[0-9A-Fa-f]{32,128}(\s|$)", text):
        return "sums"
    if text.startswith("{"):
        return "jsonl"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):  # a table's header never is a URL
        return "aria2"
    fields = text.split()
    if len(fields) in (2, 3) and re.match(r"^([a-z0-9-]+:)?[0-9a-f]{32,128}$", fields[1], re.I):
        return "registry"
    for delimiter, kind in (("\t", "tsv"), (",", "csv")):
        header = [c.strip().strip('"').lower() for c in text.split(delimiter)]
        if len(header) > 1 or header == ["url"]:
            return kind
    raise ManifestError(
        label,
        "cannot tell its format from its name or first line; pass format= "
        f"(one of {', '.join(FORMATS)})",
    )


# --- one entry → one File ------------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    """Where entries come from, and what to do with a bad one."""

    label: str
    base_url: str | None
    skip: bool
    unit: str = "line"
    #: aria2 options seen and ignored, for the one warning.
    ignored: set[str] = field(default_factory=set)
    #: False for entries already checked (a Parquet table read again, unchanged): only
    #: built. Planning checks every item once more, so nothing unchecked is downloaded.
    check: bool = True

    def bad(self, line: int, reason: str, url: object = "") -> BadRow:
        """A bad entry: raised, or (``errors="skip"``) kept as an item that fails."""
        error = ManifestError(self.label, reason, line, unit=self.unit)
        if not self.skip:
            raise error
        return BadRow(url if isinstance(url, str) else "", error=str(error))

    def url(self, ref: str, *, name: bool = False) -> str:
        """``ref`` as an absolute URL: a name (quoted) or a relative URL joined to
        ``base_url``. :raises InvalidItemError:"""
        if not name and _SCHEME.match(ref):
            return ref
        if self.base_url is None:
            raise InvalidItemError(
                f"{ref!r} is not a URL and no base_url was given (the folder it is in)"
            )
        return urljoin(self.base_url, quote(ref, safe="/~") if name else ref)

    def file(
        self,
        line: int,
        url: object,
        *,
        path: object = None,
        hash: object = None,
        mirrors: object = (),
        name: bool = False,
    ) -> File:
        """One checked File, or a bad entry (the same checks as planning does)."""
        if not self.check:
            more = tuple(self.url(m) for m in _mirror_list(mirrors))
            return File(self.url(str(url).strip()), path or None, hash=hash or None, mirrors=more)  # type: ignore[arg-type]
        try:
            for label, value in (("path", path), ("hash", hash)):
                if value is not None and not isinstance(value, str):
                    raise InvalidItemError(f"{label} must be text, not {type(value).__name__}")
            if not isinstance(url, str) or not url.strip():
                raise InvalidItemError("no URL" if url in (None, "") else "the URL is not text")
            full = check_url(self.url(url.strip(), name=name))
            if isinstance(path, str) and path:
                naming.relative_path(path)
            if isinstance(hash, str) and hash:
                parse_hash(hash)
            more = tuple(check_url(self.url(m)) for m in _mirror_list(mirrors))
        except InvalidItemError as exc:
            return self.bad(line, str(exc), url)
        return File(full, path or None, hash=hash or None, mirrors=more)  # type: ignore[arg-type]


def _mirror_list(mirrors: object) -> list[str]:
    if mirrors is None or mirrors == "":
        return []
    if isinstance(mirrors, str):
        return [m.strip() for m in mirrors.split("|") if m.strip()]
    if isinstance(mirrors, list | tuple) and all(isinstance(m, str) for m in mirrors):
        return [m.strip() for m in mirrors if m.strip()]
    raise InvalidItemError("mirrors must be a list of URLs or text with '|' between them")


# --- checksum files, registries, aria2 -----------------------------------------------------------


def _parse_sums(lines: Iterable[str], ctx: _Context, name: str) -> Iterator[File]:
    named = _SUMS_NAME.search(name)
    by_name = named.group(1) if named else None
    for n, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n")
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        escaped = text.startswith("\\")
        if escaped:
            text = text[1:]
        bsd = _BSD_LINE.match(text)
        gnu = None if bsd else _GNU_LINE.match(text)
        if bsd:
            algorithm, file, digest = bsd["alg"], bsd["name"], bsd["hex"]
        elif gnu:
            algorithm, file, digest = by_name or "", gnu["name"], gnu["hex"]
            if file is None:  # a digest alone: of the file this one is named after
                file = _beside(name)
        else:
            yield ctx.bad(n, "not a checksum line ('<hex>  name' or 'ALG (name) = <hex>')")
            continue
        if escaped:
            file = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], file)
        if not file:
            yield ctx.bad(n, "a digest without a file name")
            continue
        algorithm = _algorithm(algorithm, digest)
        yield ctx.file(n, file, path=file, hash=f"{algorithm}:{digest}", name=True)


def _algorithm(named: str, digest: str) -> str:
    """The algorithm a tag or file name says, else the one the digest's length implies."""
    text = named.lower().replace("-", "")
    text = {"sha2256": "sha256", "sha2512": "sha512", "b2": "blake2b"}.get(text, text)
    return text or _DIGEST_LENGTHS.get(len(digest), f"(unknown for {len(digest)} hex digits)")


def _beside(name: str) -> str:
    """``x.tar.gz.sha256`` → ``x.tar.gz``; '' when the name says nothing."""
    stem, dot, ext = name.rpartition(".")
    return stem if dot and _SUMS_NAME.search("." + ext) else ""


def _parse_registry(lines: Iterable[str], ctx: _Context) -> Iterator[File]:
    for n, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            fields = shlex.split(text)
        except ValueError as exc:
            yield ctx.bad(n, f"cannot split the line ({exc})")
            continue
        if len(fields) not in (2, 3):
            yield ctx.bad(n, f"expected 'name hash [url]', found {len(fields)} fields")
            continue
        name, digest = fields[0], fields[1]
        if len(fields) == 3:
            yield ctx.file(n, fields[2], path=name, hash=digest)
        else:
            yield ctx.file(n, name, path=name, hash=digest, name=True)


@dataclass(slots=True)
class _Aria2Entry:
    line: int
    uris: list[str]
    options: dict[str, str] = field(default_factory=dict)
    problem: tuple[int, str] | None = None


def _parse_aria2(lines: Iterable[str], ctx: _Context) -> list[File]:
    out: list[File] = []
    entry: _Aria2Entry | None = None
    for n, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n")
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        if text[0] not in " \t":
            if entry is not None:
                out.append(_aria2_file(entry, ctx))
            entry = _Aria2Entry(n, [u.strip() for u in text.split("\t") if u.strip()])
            continue
        key, sep, value = text.strip().partition("=")
        if entry is None:
            out.append(ctx.bad(n, "an option line before any URL line"))
        elif not sep:
            entry.problem = entry.problem or (n, f"option line without '=': {text.strip()!r}")
        else:
            entry.options[key.strip()] = value.strip()
    if entry is not None:
        out.append(_aria2_file(entry, ctx))
    ignored = sorted(ctx.ignored)
    if ignored:
        warnings.warn(
            f"{ctx.label}: aria2 options ignored (rheo_nb honours out, dir and checksum): "
            + ", ".join(ignored),
            UserWarning,
            stacklevel=4,
        )
    return out


def _aria2_file(entry: _Aria2Entry, ctx: _Context) -> File:
    if entry.problem is not None:
        return ctx.bad(*entry.problem, url=entry.uris[0] if entry.uris else "")
    ctx.ignored.update(set(entry.options) - _ARIA2_HONOURED)
    folder, out = entry.options.get("dir", ""), entry.options.get("out", "")
    if folder.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", folder):
        return ctx.bad(entry.line, f"dir={folder} is absolute: paths are relative to dest")
    path = None
    if folder or out:
        path = str(PurePosixPath(folder or ".", out or naming.name_from_url(entry.uris[0])))
    digest = None
    if "checksum" in entry.options:
        kind, _, value = entry.options["checksum"].partition("=")
        digest = f"{_ARIA2_HASHES.get(kind.strip().lower(), kind)}:{value.strip()}"
    return ctx.file(entry.line, entry.uris[0], path=path, hash=digest, mirrors=entry.uris[1:])


# --- tables --------------------------------------------------------------------------------------


def _column_map(columns: Mapping[str, str] | None) -> dict[str, str]:
    """Our field → the table's column name."""
    return {**{c: c for c in COLUMNS}, **(columns or {})}


def _row_file(ctx: _Context, n: int, row: Mapping[str, object], names: dict[str, str]) -> File:
    return ctx.file(
        n,
        row.get(names["url"]),
        path=row.get(names["path"]) or None,
        hash=row.get(names["hash"]) or None,
        mirrors=row.get(names["mirrors"]) or (),
    )


def _missing_url(ctx: _Context, found: Iterable[str], names: dict[str, str]) -> ManifestError:
    shown = ", ".join(repr(c) for c in islice(found, 20)) or "none"
    return ManifestError(
        ctx.label,
        f"no {names['url']!r} column (columns: {shown}); name it with columns={{'url': ...}}",
    )


def _parse_csv(
    lines: Iterable[str], ctx: _Context, names: dict[str, str], kind: str
) -> Iterator[File]:
    reader = csv.reader(lines, delimiter="\t" if kind == "tsv" else ",", strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        if names["url"] not in header:
            raise _missing_url(ctx, header, names)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            values = dict(zip(header, (cell.strip() for cell in row), strict=False))
            yield _row_file(ctx, reader.line_num, values, names)
    except csv.Error as exc:
        raise ManifestError(ctx.label, f"not {kind.upper()} ({exc})", reader.line_num) from None


def _parse_jsonl(lines: Iterable[str], ctx: _Context, names: dict[str, str]) -> Iterator[File]:
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError) as exc:
            yield ctx.bad(n, f"not JSON ({str(exc)[:100]})")
            continue
        if not isinstance(row, dict):
            yield ctx.bad(n, f"not a JSON object but {type(row).__name__}")
            continue
        yield _row_file(ctx, n, row, names)


class ParquetManifest(Sequence[File]):
    """The rows of a Parquet table as :class:`File` objects, read lazily in record
    batches: a table of a million rows is never a million Python objects at once.

    >>> files = rheo_nb.read_manifest("images.parquet")   # doctest: +SKIP
    >>> len(files), files[0]                              # doctest: +SKIP
    >>> rheo_nb.fetch_sync(files, dest="data")            # doctest: +SKIP

    Every row was checked when it was read (``errors="raise"``); iterating again reads
    the file again. Indexing reads the one row group that holds the row.
    """

    def __init__(self, path: Path, ctx: _Context, names: dict[str, str]) -> None:
        pq = _pyarrow(ctx.label)
        self._path = path
        self._ctx = _Context(ctx.label, ctx.base_url, ctx.skip, unit="row")
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as exc:  # pyarrow's errors are its own (ArrowInvalid…)
            raise ManifestError(ctx.label, f"not a Parquet file ({exc})") from None
        found = meta.schema.to_arrow_schema().names
        if names["url"] not in found:
            raise _missing_url(self._ctx, found, names)
        self._names = {k: v for k, v in names.items() if v in found}
        self._groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._rows = int(meta.num_rows)
        self._checked: tuple[int, int] | None = None
        if not ctx.skip:
            for _ in self:  # every row is checked now, before any download
                pass
            self._checked = _stamp(path)

    def owns(self, folder: Path) -> None:
        """Remove ``folder`` (a downloaded copy) once this sequence is gone."""
        weakref.finalize(self, _remove, folder)

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        return f"<ParquetManifest {self._ctx.label!r}: {self._rows:,} rows>"

    def __iter__(self) -> Iterator[File]:
        pq = _pyarrow(self._ctx.label)
        columns = list(dict.fromkeys(self._names.values()))
        n = 0
        for batch in pq.ParquetFile(self._path).iter_batches(BATCH_ROWS, columns=columns):
            yield from self._files(batch, n)
            n += batch.num_rows

    def _files(self, batch: Any, first: int) -> Iterator[File]:
        ctx = self._ctx
        if self._checked is not None and self._checked == _stamp(self._path):
            ctx = dataclasses.replace(ctx, check=False)  # checked once is enough
        data = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        names = self._names
        get = {field: data[column] for field, column in names.items()}
        none = [None] * batch.num_rows
        for i, (url, path, digest, mirrors) in enumerate(
            zip(
                get["url"],
                get.get("path", none),
                get.get("hash", none),
                get.get("mirrors", none),
                strict=True,
            ),
            first + 1,
        ):
            yield ctx.file(
                i,
                _text(url),
                path=_text(path) or None,
                hash=_text(digest) or None,
                mirrors=mirrors or (),
            )

    @overload
    def __getitem__(self, index: int) -> File: ...
    @overload
    def __getitem__(self, index: slice) -> list[File]: ...
    def __getitem__(self, index: int | slice) -> File | list[File]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._rows)
            return list(islice(self, start, stop, step))
        row = index + self._rows if index < 0 else index
        if not 0 <= row < self._rows:
            raise IndexError("ParquetManifest index out of range")
        group, first = 0, 0
        while row >= first + self._groups[group]:
            first += self._groups[group]
            group += 1
        pq = _pyarrow(self._ctx.label)
        columns = list(dict.fromkeys(self._names.values()))
        table = pq.ParquetFile(self._path).read_row_group(group, columns=columns)
        return next(self._files(table.slice(row - first, 1), row))


def _remove(folder: Path) -> None:
    """Remove a downloaded manifest's folder. The sequence may be collected anywhere,
    an event loop's thread included (a notebook cell): there the removal goes to a thread
    of its own, which the interpreter waits for at exit."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        threading.Thread(target=shutil.rmtree, args=(folder, True), name="rheo_nb-cleanup").start()


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def _text(value: object) -> object:
    """Parquet binary columns come back as bytes; the rest is judged by the row check."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _pyarrow(label: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ManifestError(
            label, "reading Parquet needs pyarrow: pip install 'rheo_nb[parquet]'"
        ) from None
    return pq
