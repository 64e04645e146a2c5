"""The working file of one download and its resume record.

A :class:`PartFile` is the one writer's handle on the bytes of a download that is not
finished: in the hidden working folder beside the final path (see :mod:`rheo_nb.files`),
``<key>.part`` holds the bytes and ``<key>.json`` the :class:`Record` a resume needs.
The single stream appends to it, the ranges of a segmented download write into it at
their offsets, and both end the same way: one :meth:`PartFile.finish` that checks the
length and the hash, then renames the part file to its final name.

Every method is blocking, meant for a worker thread, and this is the one place where an
``OSError`` becomes a :class:`~rheo_nb.DestinationError`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from . import files
from .errors import DestinationError, IntegrityError
from .hashing import ExpectedHash, hash_file

P = ParamSpec("P")
T = TypeVar("T")

#: Descriptors ran out: the machine, not the destination, is short; a retry may succeed.
_TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


def destination_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn an ``OSError`` raised by ``fn`` into a :class:`DestinationError`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            raise destination_error(exc) from exc

    return wrapper


def destination_error(exc: OSError) -> DestinationError:
    text = exc.strerror or str(exc)
    if exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return DestinationError(
        cause=f"cannot write the file ({text})", transient=exc.errno in _TRANSIENT_ERRNOS
    )


def url_key(url: str) -> str:
    """What a record remembers of its URL: a digest, so no secret is written to disk."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


@dataclass(slots=True)
class Record:
    """What a resume needs to trust a partial: whose bytes they are, and which version.

    ``segments`` (``[start, end, done]`` each) are present while a segmented download
    owns the partial, which then has the full size with holes.
    """

    url: str  # url_key()
    validator: str | None = None  # strong ETag, else Last-Modified
    total: int | None = None
    segments: list[list[int]] = field(default_factory=list)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "version": 1,
            "url": self.url,
            "validator": self.validator,
            "total": self.total,
        }
        if self.segments:
            data["segments"] = self.segments
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Record:
        data = json.loads(text)
        return cls(
            url=str(data["url"]),
            validator=data.get("validator"),
            total=data.get("total"),
            segments=[list(map(int, s)) for s in data.get("segments", [])],
        )


@dataclass(slots=True)
class Partial:
    """A part file left by an earlier attempt or run: its size, and its record when one
    could be read (without a record the bytes cannot be trusted)."""

    size: int
    record: Record | None = None

    def usable_for(
        self, url: str, sources: tuple[str, ...] = (), *, hashed: bool = False
    ) -> Record | None:
        """The record when these bytes may be continued from ``url``.

        Bytes from another of the file's ``sources`` (a mirror) carry over only when a hash
        will check the result (``hashed``; the record's validator is then not sent), or
        when their validator is a strong ETag, which the new source must then match.
        """
        r = self.record
        if self.size <= 0 or r is None or not r.validator:
            return None
        if r.url == url_key(url):
            return r
        if r.url not in {url_key(s) for s in sources}:
            return None
        if hashed:
            return Record(r.url, "", r.total, r.segments)
        return r if r.validator.startswith('"') else None


class PartFile:
    """The working bytes of one download, written by the one writer of its final path.

    ``unique``: a private name for a writer without a lock (a filesystem without
    ``flock``); such a part file is never resumed.
    """

    def __init__(self, final: Path, *, unique: bool = False, base: str | None = None) -> None:
        self.final = final
        #: :func:`rheo_nb.files.working_base` of ``final``: the paths below are text, made
        #: once, as every call of a small file's download counts.
        self.base = files.working_base(final) if base is None else base
        self.record_path = self.base + ".json"
        self.path = files.lockless_part(self.base) if unique else self.base + ".part"
        self.unique = unique
        self.fd: int | None = None
        #: Bytes written in order from the start (the single stream's position).
        self.size = 0
        #: Fed with every appended byte when a hash is expected and the prefix is known.
        self.hasher: Any = None
        #: This run wrote to the part file (there may be something to keep or discard).
        self.touched = False
        #: The record on disk: the partial can be resumed by a later attempt or run.
        self.record: Record | None = None

    # --- looking ----------------------------------------------------------------------

    @destination_errors
    def read(self) -> Partial | None:
        """The partial left here, or None."""
        if self.unique:
            return None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return Partial(0)  # not ours: it will be replaced, never followed
        try:
            with open(self.record_path) as f:
                record = Record.from_json(f.read())
        except (OSError, ValueError, KeyError, TypeError):
            return Partial(st.st_size)
        self.record = record
        return Partial(st.st_size, record)

    def rehash(
        self,
        expected: ExpectedHash,
        stop: threading.Event,
        *,
        start: int = 0,
        limit: int | None = None,
        into: Any = None,
    ) -> None:
        """Feed the hasher from the bytes on disk: the prefix kept for a resume, or what a
        segmented download wrote out of order. Interruptible through ``stop``."""
        try:
            self.hasher = hash_file(
                self.path, expected.algorithm, limit, start=start, into=into, stop=stop
            )
        except OSError as exc:
            raise destination_error(exc) from exc

    # --- writing ----------------------------------------------------------------------

    @destination_errors
    def open(self, offset: int, record: Record | None) -> None:
        """Open for appending at ``offset`` (dropping anything beyond), saving ``record``
        first so that a crash after the first byte still leaves a resumable partial.
        Without a record, a record left by an earlier version of the file goes."""
        self._close()
        if record is not None and not self.unique:
            self._write_record(record)
        elif self.record is not None:
            self._drop_record()
        self.fd = _open_at(self.path, offset)
        self.size = offset
        self.touched = True

    @destination_errors
    def append(self, chunks: list[bytes]) -> None:
        """Write ``chunks`` at the end (the count is kept here, in the thread: a write
        always completes, even when the task awaiting it is cancelled meanwhile)."""
        assert self.fd is not None
        self.size += write_all(self.fd, chunks, self.hasher)

    @destination_errors
    def open_sized(self, record: Record, *, fresh: bool) -> None:
        """Open at the full size of a segmented download (space reserved where the
        filesystem can), saving ``record`` first."""
        assert record.total is not None
        self._close()
        if not self.unique:
            self._write_record(record)
        fd = _open_at(self.path, 0 if fresh else record.total)
        try:
            _preallocate(fd, record.total)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.touched = True

    @destination_errors
    def write_at(self, offset: int, chunks: list[bytes], hasher: Any = None) -> int:
        """Write ``chunks`` at ``offset`` (a range of a segmented download)."""
        assert self.fd is not None
        return write_all(self.fd, chunks, hasher, offset)

    @destination_errors
    def save(self, record: Record) -> None:
        if not self.unique:
            self._write_record(record)

    # --- ending -----------------------------------------------------------------------

    @destination_errors
    def finish(
        self,
        chunks: list[bytes],
        total: int | None,
        expected: ExpectedHash | None,
        target: Path,
    ) -> int:
        """The last bytes, then the length and hash checks, then the rename to ``target``.

        For a file that fits in one read this is the only filesystem step of its download:
        the part file is created, written, verified and renamed in one go.
        """
        if self.fd is None and (chunks or not self.touched):
            self.open(self.size, None)  # a small file's one write
        if chunks:
            self.append(chunks)
        self._close()
        if total is not None and self.size != total:
            raise IntegrityError(
                cause=f"length mismatch: expected {total} bytes, received {self.size}"
            )
        if expected is not None:
            actual = self.hasher.hexdigest() if self.hasher is not None else None
            if actual != expected.hexdigest:
                raise IntegrityError(
                    cause=f"{expected.algorithm} mismatch: expected {expected.hexdigest}, "
                    f"got {actual}"
                )
        os.replace(self.path, target)
        self._drop_record()
        self.touched = False  # nothing of it is left to keep or discard
        return self.size

    @destination_errors
    def keep(self, record: Record | None) -> None:
        """Close after an early end, keeping this run's bytes for a resume when ``record``
        says what they are (without one they are useless and go). Bytes an earlier run
        left, which this run never touched, are left as they are."""
        self._close()
        if not self.touched:
            return
        if record is None or self.unique:
            self._discard()
        elif self.record != record:
            self._write_record(record)

    @destination_errors
    def discard(self) -> None:
        """Close and remove the part file and its record (nothing of it is worth keeping)."""
        self._close()
        self._discard()

    @destination_errors
    def close(self) -> None:
        self._close()

    # --- internals --------------------------------------------------------------------

    def _close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def _discard(self) -> None:
        for path in (self.path, self.record_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.size = 0
        self.hasher = None
        self.record = None

    def _drop_record(self) -> None:
        # Only a record this run wrote or found: a small file, which never has one, is
        # spared a system call that could only fail.
        if self.record is not None and not self.unique:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path)
        self.record = None

    def _write_record(self, record: Record) -> None:
        tmp = self.record_path + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a symlink planted there is removed, never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with open(fd, "w") as f:
            f.write(record.to_json())
        os.replace(tmp, self.record_path)
        self.record = Record(record.url, record.validator, record.total, list(record.segments))


def _open_at(path: str, offset: int) -> int:
    """Open ``path`` for writing at ``offset``, dropping anything beyond it.

    A symlink planted at the path is removed, never followed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if not offset:
        flags |= os.O_TRUNC  # one syscall where a fresh file needs nothing else
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        if os.path.isdir(path) and not os.path.islink(path):
            raise
        os.unlink(path)
        fd = os.open(path, flags, 0o644)
    if offset:
        try:
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
    return fd


def write_all(
    fd: int, chunks: list[bytes], hasher: Any | None = None, offset: int | None = None
) -> int:
    """Write every chunk (and feed the hasher) in as few syscalls as possible, at the file
    position, or at ``offset`` (then the file position is left alone)."""
    if hasher is not None:
        for chunk in chunks:
            hasher.update(chunk)
    total = sum(len(c) for c in chunks)
    views = [memoryview(c) for c in chunks]
    while views:
        batch = views[:1024]
        if offset is None:
            written = os.writev(fd, batch)
        else:
            written = os.pwritev(fd, batch, offset)
            offset += written
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        del views[:done]
        if written:
            views[0] = views[0][written:]
    return total


def _preallocate(fd: int, size: int) -> None:
    """Give the file its full size, reserving the space where the filesystem can (so a
    full disk shows up now, not midway)."""
    if os.fstat(fd).st_size == size:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    os.ftruncate(fd, size)
