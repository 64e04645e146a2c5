"""Safe, atomic, idempotent extraction of archives. Blocking: run it in a worker thread.

>>> extract("data/train.tar.gz")            # doctest: +SKIP
Extracted(target=PosixPath('data/train'), kind='tar.gz', members=1204, bytes=..., skipped=False)

Kinds, recognised by their magic bytes (the name only picks the target's name): zip;
tar, plain or compressed with gzip, bzip2, xz or zstd; and one compressed file (.gz, .bz2,
.xz, .zst), which becomes the name without its suffix. zstd needs the ``zstandard``
package (``pip install 'rheo_nb[zstd]'``).

Safety, checked here member by member (tarfile's extraction filters are not used, so
Python 3.11 behaves as later versions do):

* Every member lands inside the target: absolute names, ``..``, names with a NUL, members
  inside a symbolic link of the archive, and links whose target resolves outside are
  refused. Symbolic links are created last, once every file is written, and each is then
  resolved on disk, so a chain of links cannot reach out either.
* Device files, FIFOs and sockets are refused. Permission bits are not taken from the
  archive: files get 0o644 (0o755 when the owner could execute them) and folders 0o755,
  less the umask, so setuid, setgid, sticky and world-writable bits never land on disk.
* Caps: bytes written (``max_size``; by default :data:`SIZE_RATIO` times the archive's
  size, and at least :data:`SIZE_FLOOR`) and members (``max_files``), counted as the bytes
  stream, so a bomb stops at the cap with flat memory. A zip whose members overlap (the
  layout of the densest zip bombs) and tar headers over 1 MiB are refused.

Atomic: the members go to a temporary folder in ``.rheo_nb/`` beside the target, which is
renamed into place only when the whole archive passed; a refused or interrupted
extraction leaves nothing in the target (the leftovers of a killed process are removed by
the next run). Idempotent: ``.rheo_nb/extract-<digest>.json`` beside the target records
the archive's size, mtime and sha256 and which folder (device and inode) came from it, so
a rerun with the same archive skips, and a changed archive replaces that folder. A target
that exists without such a record is the user's, and is never replaced.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import fcntl
import functools
import gzip
import hashlib
import json
import lzma
import os
import shutil
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import ExtractError
from .files import ARCHIVE_SUFFIXES, WORKDIR, target_name
from .hashing import ALGORITHMS
from .options import MAX_EXTRACT_FILES

#: The default cap on bytes written is this many times the archive's size…
SIZE_RATIO = 100
#: …and at least this much (1 GiB): small archives of very regular data expand a lot.
SIZE_FLOOR = 1 << 30
#: The default cap on members (files, folders and links).
MAX_FILES = MAX_EXTRACT_FILES
#: The hidden folder, in each destination folder, that holds rheo_nb's working files.
WORK_DIR = WORKDIR

_CHUNK = 1 << 20
_REPORT_EVERY = 16 << 20
_HEADER_BUDGET = 1 << 20
_LINK_MAX = 4096

_MAGIC = (
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip
    (b"\x1f\x8b", "gz"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
)
KINDS = frozenset(ARCHIVE_SUFFIXES)


@dataclass(frozen=True, slots=True)
class ExtractProgress:
    """How far an extraction is: ``members`` done of ``total`` (None while unknown: a tar
    is read once, front to back), and ``bytes`` written."""

    members: int
    total: int | None
    bytes: int


@dataclass(frozen=True, slots=True)
class Extracted:
    """What :func:`extract` did. ``skipped``: an earlier run had extracted this archive."""

    target: Path
    kind: str
    members: int
    bytes: int
    skipped: bool = False


ProgressCallback = Callable[[ExtractProgress], None]


class Refused(Exception):
    """A member (or the archive) is refused; turned into :class:`ExtractError` in one place."""

    def __init__(self, reason: str, member: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.member = member


# --- kinds and names ------------------------------------------------------------------------


def archive_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of archive at ``path`` by its magic bytes (``"zip"``, ``"tar.gz"``, ``"xz"``
    …), or None when it is none that :func:`extract` reads. Blocking."""
    with open(path, "rb") as f:
        return kind_of(f)


def kind_of(f: IO[bytes]) -> str | None:
    """:func:`archive_kind` of an open, seekable file, read from its start."""
    head = _read_up_to(f, 512)
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        return "tar" if _is_tar_header(head) else None
    if kind == "zip":
        return kind
    f.seek(0)
    try:
        with _decompressed(kind, f) as stream:
            inner = _read_up_to(stream, 512)
    except Exception:  # damaged, or zstd unavailable: extract() says which
        return kind
    return f"tar.{kind}" if _is_tar_header(inner) else kind


def _is_tar_header(block: bytes) -> bool:
    if len(block) < 512 or not block[0]:
        return False
    if block[257:262] == b"ustar":
        return True
    try:  # a pre-POSIX tar has no magic: its header checksum tells
        expected = int(block[148:156].strip(b"\0 ").decode("ascii"), 8)
    except ValueError:
        return False
    return expected == sum(block[:148]) + 8 * 32 + sum(block[156:512])


def default_target(archive: str | os.PathLike[str], kind: str) -> Path:
    """Where ``extract(archive)`` puts its members: beside the archive, under its name
    without the suffix of its kind (``data/train.tar.gz`` → ``data/train``,
    ``data/x.csv.gz`` → ``data/x.csv``); ``<name>.extracted`` when the name has no such
    suffix."""
    path = Path(archive)
    return path.with_name(target_name(path.name, kind))


def size_limit(archive_size: int, max_size: int | None = None) -> int:
    """The cap on bytes written for an archive of ``archive_size`` bytes."""
    return max_size if max_size is not None else max(SIZE_FLOOR, SIZE_RATIO * archive_size)


def member_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name inside the target (empty for the target
    itself). Backslashes count as separators, as archives made on Windows mean them.

    :raises Refused: absolute, with ``..``, or with a NUL.
    """
    if "\0" in name:
        raise Refused("its name contains a NUL character")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":" and posix[0].isalpha()):
        raise Refused("its name is absolute")
    parts = tuple(p for p in posix.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Refused("its name leads outside the target ('..')")
    return parts


def _link_parts(member: tuple[str, ...], link: str) -> tuple[str, ...]:
    """Where a symbolic link at ``member`` points, judged by its text alone."""
    if not link or "\0" in link:
        raise Refused("symbolic link with an empty target or a NUL")
    posix = link.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":" and posix[0].isalpha()):
        raise Refused(f"symbolic link to an absolute path ({link!r})")
    stack = list(member[:-1])
    for part in posix.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                raise Refused(f"symbolic link to outside the target ({link!r})")
            stack.pop()
        else:
            stack.append(part)
    return tuple(stack)


# --- members: what an archive holds, read one at a time -----------------------------------------

FILE, DIR, SYMLINK, HARDLINK = "file", "folder", "symbolic link", "hard link"


@dataclass(slots=True)
class Member:
    name: str  # as the archive spells it, for messages
    kind: str
    size: int = 0
    executable: bool = False
    link: str = ""
    mtime: float | None = None
    open: Callable[[], contextlib.AbstractContextManager[IO[bytes]]] | None = None


def _zip_members(zf: zipfile.ZipFile) -> Iterator[Member]:
    infos = zf.infolist()
    _check_zip_layout(zf, infos)
    for info in infos:
        name = info.orig_filename  # zipfile cuts filename at a NUL; the original keeps it
        if info.flag_bits & 0x1:
            raise Refused("it is encrypted, which rheo_nb does not extract", name)
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        kind = stat.S_IFMT(mode)  # 0 when the archiver wrote permission bits only
        opener = _zip_opener(zf, info)
        if kind == stat.S_IFLNK:
            yield Member(name, SYMLINK, link=_read_link(opener, name))
        elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise Refused(_special_reason(mode), name)
        elif info.is_dir():
            yield Member(name, DIR)
        else:
            mtime = _zip_mtime(info)
            yield Member(name, FILE, info.file_size, bool(mode & 0o100), "", mtime, opener)


def _zip_opener(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo
) -> Callable[[], contextlib.AbstractContextManager[IO[bytes]]]:
    return lambda: zf.open(info)


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    try:
        return time.mktime((*info.date_time, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _check_zip_layout(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse members whose bytes overlap: one local entry quoted inside another is how the
    densest zip bombs multiply their output (zipfile of Python 3.11 does not check)."""
    fp = zf.fp
    assert fp is not None
    spans = []
    for info in infos:
        fp.seek(info.header_offset)
        header = fp.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise Refused("no local header where the central directory says", info.orig_filename)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        end = info.header_offset + 30 + name_len + extra_len + info.compress_size
        spans.append((info.header_offset, end, info.orig_filename))
    spans.sort()
    reach = 0
    for start, end, name in spans:
        if start < reach:
            raise Refused("its bytes overlap another member's (a zip bomb's layout)", name)
        reach = end
    directory = getattr(zf, "start_dir", None)
    if spans and isinstance(directory, int) and reach > directory:
        raise Refused("its bytes run into the central directory", spans[-1][2])


def _tar_members(tar: tarfile.TarFile, guard: _HeaderGuard) -> Iterator[Member]:
    while True:
        guard.start_header()
        info = tar.next()
        guard.end_header()
        if info is None:
            return
        # tarfile keeps every header it read (an attribute typeshed omits); we need none.
        tar.members.clear()  # type: ignore[attr-defined]
        if info.issym():
            yield Member(info.name, SYMLINK, link=info.linkname)
        elif info.islnk():
            yield Member(info.name, HARDLINK, link=info.linkname)
        elif info.isdir():
            yield Member(info.name, DIR)
        elif info.isreg():
            yield Member(
                info.name,
                FILE,
                info.size,
                bool(info.mode & 0o100),
                "",
                float(info.mtime),
                _tar_opener(tar, info),
            )
        elif info.ischr() or info.isblk() or info.isfifo():
            raise Refused("it is a device file or a FIFO", info.name)
        else:
            raise Refused(f"unsupported tar member type {info.type!r}", info.name)


def _tar_opener(
    tar: tarfile.TarFile, info: tarfile.TarInfo
) -> Callable[[], contextlib.AbstractContextManager[IO[bytes]]]:
    def opener() -> contextlib.AbstractContextManager[IO[bytes]]:
        stream = tar.extractfile(info)
        assert stream is not None  # a regular member always has one
        return stream

    return opener


def _read_link(
    opener: Callable[[], contextlib.AbstractContextManager[IO[bytes]]], name: str
) -> str:
    with opener() as f:
        data = f.read(_LINK_MAX + 1)
    if len(data) > _LINK_MAX:
        raise Refused("symbolic link target over 4 KiB", name)
    return data.decode("utf-8", "surrogateescape")


def _special_reason(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "it is a device file"
    if stat.S_ISFIFO(mode):
        return "it is a FIFO"
    return "it is a socket or another special file"


class _HeaderGuard:
    """Passes a tar stream through, refusing a header (tarfile reads long names and pax
    records whole, into memory) over :data:`_HEADER_BUDGET` bytes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._header: int | None = 0  # tarfile.open() reads the first header itself

    def start_header(self) -> None:
        self._header = 0

    def end_header(self) -> None:
        self._header = None

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _CHUNK
        data = self._stream.read(size)
        if self._header is not None:
            self._header += len(data)
            if self._header > _HEADER_BUDGET + tarfile.RECORDSIZE:
                raise Refused("a member header over 1 MiB (long name or pax records)")
        return data


# --- writing ------------------------------------------------------------------------------------


class Budget:
    """The caps, counted as members come and as bytes stream."""

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.bytes = 0
        self.members = 0

    def member(self, name: str) -> None:
        self.members += 1
        if self.members > self.max_files:
            raise Refused(f"more than {self.max_files:,} members (max_extract_files)", name)

    def add(self, name: str, n: int) -> None:
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise Refused(
                f"the archive expands to more than {self.max_bytes:,} bytes "
                "(max_extract_size; raise it if this archive is trusted)",
                name,
            )


class Tree:
    """Where an archive's members land, one at a time, after the checks every destination
    shares: the caps, names inside the target, nothing inside a symbolic link of the
    archive, link targets judged by their text. A subclass writes: :class:`_DiskTree`
    into a local folder, :class:`rheo_nb.objextract.ObjectTree` into keys of a bucket.
    Its writes raise :class:`Refused` for what only the destination can tell."""

    def __init__(self, budget: Budget, progress: ProgressCallback | None) -> None:
        self.budget = budget
        self.progress = progress
        #: Members in the archive, once known (a zip says; a tar is read front to back).
        self.total: int | None = None
        self.links: list[tuple[tuple[str, ...], str, str]] = []  # parts, link, name
        self._link_paths: set[tuple[str, ...]] = set()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(ExtractProgress(self.budget.members, self.total, self.budget.bytes))

    def place(self, m: Member) -> None:
        self.budget.member(m.name)
        parts = member_parts(m.name)
        if not parts:
            return  # the target folder itself ("./")
        for i in range(1, len(parts)):
            if parts[:i] in self._link_paths:
                raise Refused(f"it lies inside the symbolic link {'/'.join(parts[:i])!r}")
        if m.kind == DIR:
            self.folder(parts)
        elif m.kind == FILE:
            if self.budget.bytes + m.size > self.budget.max_bytes:
                self.budget.add(m.name, m.size)  # its declared size is already over the cap
            assert m.open is not None
            with m.open() as src:
                self.file(m, parts, src)
        elif m.kind == HARDLINK:
            self.hardlink(m, parts, self._link_source(m, parts))
        else:
            _link_parts(parts, m.link)
            self.links.append((parts, m.link, m.name))
            self._link_paths.add(parts)

    def _link_source(self, m: Member, parts: tuple[str, ...]) -> tuple[str, ...]:
        try:
            source = member_parts(m.link)
        except Refused as exc:
            raise Refused(f"hard link: {exc.reason}") from None
        if not source or source == parts or source in self._link_paths:
            raise Refused(f"hard link to {m.link!r}, which is not a file of the archive")
        return source

    def copy(self, name: str, src: IO[bytes], write: Callable[[bytes], object]) -> None:
        """Move a member's bytes from ``src`` to ``write``, counted against the cap before
        each write (so the cap is never passed), with a report every 16 MiB."""
        reported = self.budget.bytes
        while chunk := src.read(_CHUNK):
            self.budget.add(name, len(chunk))
            write(chunk)
            if self.budget.bytes - reported >= _REPORT_EVERY:
                reported = self.budget.bytes
                self.report()

    # --- what a destination writes ----------------------------------------------------------

    def folder(self, parts: tuple[str, ...]) -> None:
        raise NotImplementedError

    def file(self, m: Member, parts: tuple[str, ...], src: IO[bytes]) -> None:
        raise NotImplementedError

    def hardlink(self, m: Member, parts: tuple[str, ...], source: tuple[str, ...]) -> None:
        """``parts`` reads as the file ``source`` (which must be one written before)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Every member is placed: make the symbolic links (:attr:`links`), proving each
        one resolves inside the target."""
        raise NotImplementedError


class _DiskTree(Tree):
    """Writes members under ``root`` (a fresh folder of ours), never through a link."""

    def __init__(self, root: str, budget: Budget, progress: ProgressCallback | None) -> None:
        super().__init__(budget, progress)
        self.root = root
        self._dirs: set[tuple[str, ...]] = {()}

    def _path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.root, *parts)

    def folder(self, parts: tuple[str, ...]) -> None:
        self._mkdirs(parts)

    def _mkdirs(self, parts: tuple[str, ...]) -> str:
        """Create the folders down to ``parts``; refuse any that exists as something else."""
        for i in range(1, len(parts) + 1):
            prefix = parts[:i]
            if prefix in self._dirs:
                continue
            path = self._path(prefix)
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise Refused(
                        f"{'/'.join(prefix)!r} is both a folder and another member"
                    ) from None
            self._dirs.add(prefix)
        return self._path(parts)

    def file(self, m: Member, parts: tuple[str, ...], src: IO[bytes]) -> None:
        path = os.path.join(self._mkdirs(parts[:-1]), parts[-1])
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o755 if m.executable else 0o644)
        except IsADirectoryError:
            raise Refused("a file and a folder of the archive share this name") from None
        try:
            self.copy(m.name, src, functools.partial(_write_all, fd))
        finally:
            os.close(fd)
        if m.mtime is not None:
            with contextlib.suppress(OSError, OverflowError, ValueError):
                os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def hardlink(self, m: Member, parts: tuple[str, ...], source: tuple[str, ...]) -> None:
        src = self._path(source)
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise Refused(f"hard link to {m.link!r}, which is not a file extracted before it")
        self.budget.add(m.name, st.st_size)  # a reader sees its bytes again: count them
        path = os.path.join(self._mkdirs(parts[:-1]), parts[-1])
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                raise Refused("a link and a folder of the archive share this name")
            os.unlink(path)  # a later member of the same name wins, as tar does
        try:
            os.link(src, path, follow_symlinks=False)
        except OSError:  # a filesystem without hard links: a copy reads the same
            shutil.copyfile(src, path, follow_symlinks=False)

    def finish(self) -> None:
        """Create the symbolic links, then prove each resolves inside the root."""
        for parts, link, name in self.links:
            try:
                os.symlink(link, os.path.join(self._mkdirs(parts[:-1]), parts[-1]))
            except FileExistsError:
                raise Refused("a link and another member share this name", name) from None
            except Refused as exc:
                exc.member = name
                raise
        root = os.path.realpath(self.root)
        for parts, link, name in self.links:
            real = os.path.realpath(self._path(parts))
            if real != root and not real.startswith(root + os.sep):
                raise Refused(f"symbolic link to outside the target ({link!r})", name)


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def unpack(raw: IO[bytes], kind: str, tree: Tree, single_name: str) -> None:
    """Place every member of the archive read from ``raw`` (seekable for a zip) into
    ``tree``, then finish it. :raises Refused: a member, or the archive, is refused."""
    budget = tree.budget
    members: Iterator[Member]
    with contextlib.ExitStack() as stack:
        if kind == "zip":
            zf = stack.enter_context(zipfile.ZipFile(raw))
            count = tree.total = len(zf.infolist())
            if count > budget.max_files:
                raise Refused(f"more than {budget.max_files:,} members (max_extract_files)")
            members = _zip_members(zf)
        elif kind.startswith("tar"):
            stream = stack.enter_context(_decompressed(kind[4:], raw)) if kind != "tar" else raw
            guard = _HeaderGuard(stream)
            tar = stack.enter_context(tarfile.open(fileobj=guard, mode="r|"))  # type: ignore[call-overload]
            members = _tar_members(tar, guard)
        else:
            tree.total = 1
            stream = stack.enter_context(_decompressed(kind, raw))
            members = iter([Member(single_name, FILE, open=lambda: _Unclosed(stream))])
        for member in members:
            try:
                tree.place(member)
            except Refused as exc:
                exc.member = exc.member or member.name
                raise
            except OSError as exc:  # a name too long, a full disk…
                raise Refused(_os_reason(exc), member.name) from exc
            tree.report()
        tree.finish()


class _Unclosed(contextlib.AbstractContextManager[IO[bytes]]):
    """A stream handed to the writer without giving it the right to close it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def __enter__(self) -> IO[bytes]:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        return None


@contextlib.contextmanager
def _decompressed(kind: str, raw: IO[bytes]) -> Iterator[IO[bytes]]:
    stream: Any
    if kind == "gz":
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif kind == "bz2":
        stream = bz2.BZ2File(raw)
    elif kind == "xz":
        stream = lzma.LZMAFile(raw)
    elif kind == "zst":
        try:
            import zstandard
        except ImportError:
            raise Refused(
                "zstd archives need the zstandard package: pip install 'rheo_nb[zstd]'"
            ) from None
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    else:
        raise AssertionError(kind)
    with stream:
        yield stream


def _read_up_to(stream: IO[bytes], n: int) -> bytes:
    data = b""
    while len(data) < n and (chunk := stream.read(n - len(data))):
        data += chunk
    return data


# --- the record, the lock and the swap ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    archive: str  # the archive's file name
    size: int
    mtime_ns: int
    #: The archive's hex digests by algorithm: always sha256, and those asked for
    #: (a download's hash, to compare with when the archive is gone).
    digests: dict[str, str]
    kind: str
    members: int
    bytes: int
    target: tuple[int, int]  # (device, inode) of what this archive became
    previous: tuple[int, int] | None  # what it replaces, until the swap is done

    def owns(self, ident: tuple[int, int]) -> bool:
        return ident in (self.target, self.previous)


def _read_record(path: Path) -> _Record | None:
    try:
        data = json.loads(path.read_text())
        prev = data.get("previous")
        digests = {str(k): str(v) for k, v in data.get("digests", {}).items()}
        return _Record(
            str(data["archive"]),
            int(data["size"]),
            int(data["mtime_ns"]),
            {**digests, "sha256": str(data["sha256"])},
            str(data["kind"]),
            int(data["members"]),
            int(data["bytes"]),
            (int(data["target"][0]), int(data["target"][1])),
            (int(prev[0]), int(prev[1])) if prev else None,
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _write_record(path: Path, record: _Record) -> None:
    # "sha256" stays a field of its own: what records written before "digests" hold.
    data = {"version": 1, **_fields(record), "sha256": record.digests["sha256"]}
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with open(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One extraction into a target at a time, across threads and processes. The lock
    file stays (in the hidden work folder): removing it safely costs more than it saves."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # no flock on this filesystem: extract unlocked
            if exc.errno not in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise Refused(f"the target {str(path)!r} is a symbolic link; refusing to replace it")
    return (st.st_dev, st.st_ino)


def _digests(path: Path, algorithms: Iterable[str], report: Callable[[], None]) -> dict[str, str]:
    """The file's sha256 and its digests of ``algorithms``, in one read."""
    hashes = {name: hashlib.new(name) for name in {"sha256", *algorithms}}
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            for h in hashes.values():
                h.update(block)
            if f.tell() % _REPORT_EVERY < _CHUNK:
                report()
    return {name: h.hexdigest() for name, h in hashes.items()}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- the entry point ----------------------------------------------------------------------------


def extract(
    archive: str | os.PathLike[str],
    target: str | os.PathLike[str] | None = None,
    *,
    max_size: int | None = None,
    max_files: int = MAX_FILES,
    remove: bool = False,
    progress: ProgressCallback | None = None,
    label: str | None = None,
    hashes: Iterable[str] = (),
) -> Extracted:
    """Extract ``archive`` into ``target`` safely and atomically; skip it when an earlier
    run already did. Blocking: run it in a worker thread.

    >>> extract("data/train.tar.gz")                 # into data/train/  # doctest: +SKIP
    >>> extract("data/x.zip", "data/models/x", max_size=50 << 30)       # doctest: +SKIP

    ``target`` defaults to :func:`default_target`. ``max_size`` caps the bytes written
    (None: :func:`size_limit`), ``max_files`` the members. ``remove`` deletes the archive
    once extracted. ``progress`` is called after each member and every 16 MiB written;
    an exception it raises stops the extraction (nothing is left in the target) and
    propagates, which is how a caller cancels. ``label`` names the archive in errors
    (its masked URL; default: its path). ``hashes`` names algorithms (``"md5"`` …) whose
    digests of the archive the record keeps besides its sha256, for :func:`recorded`.

    :raises ExtractError: the archive is refused (the member and the reason), unreadable,
        or the target exists and did not come from this function.
    """
    archive = Path(archive)
    algorithms = frozenset(hashes)
    if unknown := algorithms - ALGORITHMS.keys():
        raise ValueError(f"hashes: unknown algorithm(s) {sorted(unknown)}; use {list(ALGORITHMS)}")
    with refusals(label if label is not None else str(archive)):
        return _extract(archive, target, max_size, max_files, remove, progress, algorithms)
    raise AssertionError("unreachable")  # for mypy: refusals() re-raises


@contextlib.contextmanager
def refusals(shown: str) -> Iterator[None]:
    """Turn a refusal, or what an unreadable archive raises, into :class:`ExtractError`
    naming ``shown`` (the archive's masked URL or its path)."""
    try:
        yield
    except Refused as exc:
        raise ExtractError(shown, exc.reason, exc.member) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ExtractError(shown, f"unreadable archive ({exc or type(exc).__name__})") from None
    except (NotImplementedError, RuntimeError) as exc:  # zipfile: method or encryption
        raise ExtractError(shown, f"cannot extract ({exc})") from None
    except OSError as exc:
        raise ExtractError(shown, _os_reason(exc)) from None
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            raise ExtractError(shown, f"unreadable archive ({exc})") from None
        raise


def _os_reason(exc: OSError) -> str:
    return f"cannot extract ({exc.strerror or exc})"


@dataclass(slots=True)
class _Job:
    """One extraction: what it reads, where it writes, and its files in ``.rheo_nb/``."""

    archive: Path
    stat: os.stat_result
    kind: str
    target: Path
    base: Path  # <target's folder>/.rheo_nb/extract-<digest>; + .lock, .json, .tmp, .old
    algorithms: frozenset[str]  # the digests the record keeps besides sha256

    def file(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)

    def done_before(self) -> Extracted | None:
        """The earlier extraction of this archive, if the target still holds it.

        :raises Refused: the target exists and is not ours to replace.
        """
        record = _read_record(self.file(".json"))
        current = _identity(self.target)
        if current is not None and (record is None or not record.owns(current)):
            raise Refused(
                f"the target {str(self.target)!r} exists and was not extracted from this "
                "archive by rheo_nb; move it away or extract elsewhere"
            )
        if record is None or current != record.target or record.size != self.stat.st_size:
            return None
        if record.mtime_ns != self.stat.st_mtime_ns or not self.algorithms <= record.digests.keys():
            digests = _digests(self.archive, self.algorithms, _noop)
            if record.digests["sha256"] != digests["sha256"]:
                return None
            touched = {
                **_fields(record),
                "archive": self.archive.name,
                "mtime_ns": self.stat.st_mtime_ns,
                "digests": {**record.digests, **digests},
            }
            _write_record(self.file(".json"), _Record(**touched))
        return Extracted(self.target, record.kind, record.members, record.bytes, True)

    def run(self, budget: Budget, progress: ProgressCallback | None) -> Extracted:
        """Unpack into the temporary folder, then swap it into place."""
        digests = _digests(self.archive, self.algorithms, _reporter(progress, budget))
        tmp = self.file(".tmp")
        try:
            tmp.mkdir()
            with open(self.archive, "rb") as raw:
                tree = _DiskTree(str(tmp), budget, progress)
                unpack(raw, self.kind, tree, self.target.name)
            made = tmp / self.target.name if self.kind in _SINGLE else tmp
            current = _identity(self.target)
            record = _Record(
                self.archive.name,
                self.stat.st_size,
                self.stat.st_mtime_ns,
                digests,
                self.kind,
                budget.members,
                budget.bytes,
                _ident(made),
                current,
            )
            # The record names the new folder before it is in place, and the old one until
            # it is gone: a crash anywhere in between leaves a target the next run redoes.
            _write_record(self.file(".json"), record)
            if current is not None:
                os.rename(self.target, self.file(".old"))
            os.rename(made, self.target)
        finally:
            _remove(tmp)
        _remove(self.file(".old"))
        return Extracted(self.target, self.kind, budget.members, budget.bytes)


_SINGLE = frozenset({"gz", "bz2", "xz", "zst"})


def _extract(
    archive: Path,
    target: str | os.PathLike[str] | None,
    max_size: int | None,
    max_files: int,
    remove: bool,
    progress: ProgressCallback | None,
    algorithms: frozenset[str],
) -> Extracted:
    st = os.stat(archive)
    kind = archive_kind(archive)
    if kind is None:
        raise Refused("not an archive rheo_nb extracts (zip, tar, gz, bz2, xz, zst)")
    where = Path(target) if target is not None else default_target(archive, kind)
    work = where.parent / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(os.fsencode(where.name)).hexdigest()[:16]
    job = _Job(archive, st, kind, where, work / f"extract-{digest}", algorithms)
    with _locked(job.file(".lock")):
        for leftover in (job.file(".tmp"), job.file(".old")):
            _remove(leftover)  # an interrupted run: redone from scratch
        result = job.done_before() or job.run(
            Budget(size_limit(st.st_size, max_size), max_files), progress
        )
        if remove:
            os.unlink(archive)
    return result


def recorded(
    archive: str | os.PathLike[str], target: str | os.PathLike[str] | None = None
) -> tuple[Path, int, dict[str, str]] | None:
    """Where ``archive`` was extracted, with its size and digests (sha256, and those of
    the ``algorithms`` given to :func:`extract`), when that folder still holds the
    extraction of an archive of that name: what a rerun needs to skip an archive removed
    after extracting it (``remove=True``). ``target`` as for :func:`extract`. Blocking.

    >>> recorded("data/train.tar.gz")          # doctest: +SKIP
    (PosixPath('data/train'), 52428800, {'sha256': '9f86d0…'})
    """
    name = Path(archive).name
    if target is not None:
        candidates = [Path(target)]
    else:
        candidates = sorted({default_target(archive, kind) for kind in KINDS})
    for where in candidates:
        digest = hashlib.sha256(os.fsencode(where.name)).hexdigest()[:16]
        record = _read_record(where.parent / WORK_DIR / f"extract-{digest}.json")
        try:
            current = _identity(where)
        except Refused:
            continue
        # Another archive's extraction (x.zip's, asked about x.tar.gz) is not this one's.
        if record is None or record.archive != name:
            continue
        if current is not None and current == record.target:
            return where, record.size, record.digests
    return None


def _ident(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return (st.st_dev, st.st_ino)


def _fields(record: _Record) -> dict[str, Any]:
    return {k: getattr(record, k) for k in record.__slots__}


def _noop() -> None:
    pass


def _reporter(progress: ProgressCallback | None, budget: Budget) -> Callable[[], None]:
    if progress is None:
        return _noop
    return lambda: progress(ExtractProgress(budget.members, None, budget.bytes))
