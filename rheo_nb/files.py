"""Where bytes land: safe names, confinement to ``dest``, partial files, locks, the rename.

Everything here that touches the filesystem is blocking and meant to run in a worker
thread, batched so that one download costs few thread hops.

Layout beside a final path ``data/x.csv`` while it downloads:

* ``data/x.csv.part``: the bytes so far. The final name only ever appears through
  ``os.replace`` of a complete, verified part file.
* ``data/.x.csv.part.json``: what a resume needs (validator, total size, segments).
* ``data/.x.csv.lock``: held with ``flock`` by the one writer of ``x.csv``; removed when
  it is done. The kernel releases it when a process dies, so a stale file never blocks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import InvalidItemError

_WINDOWS_RESERVED = re.compile(
    r"^(con|prn|aux|nul|com[0-9]|lpt[0-9]|conin\$|conout\$)(\..*)?$", re.I
)
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/]')
_DISPOSITION_PARAM = re.compile(r';\s*([^\s;=]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_MAX_NAME_BYTES = 255 - len(".part.json") - 2  # room for the sidecar names
DEFAULT_NAME = "index.html"


def sanitize_name(name: str) -> str:
    """Reduce any string to one safe file name (possibly empty).

    Path separators of every platform, control characters (NUL included) and characters
    Windows refuses become ``_``; leading dots (hidden files, ``..``) and trailing dots and
    spaces go; Windows device names get a ``_`` prefix; the result fits in 255 bytes.
    """
    text = unicodedata.normalize("NFC", name)
    # Only the last component of anything that looks like a path.
    text = re.split(r"[/\\]", text)[-1]
    text = _UNSAFE_CHARS.sub("_", text).strip()
    text = text.lstrip(".").rstrip(". ")
    if _WINDOWS_RESERVED.match(text):
        text = "_" + text
    encoded = text.encode()
    if len(encoded) > _MAX_NAME_BYTES:
        stem, dot, ext = text.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext = text, ""
        budget = _MAX_NAME_BYTES - len(ext.encode()) - (1 if ext else 0)
        # The cut may land just after a dot or space: trailing ones go, as above.
        stem = stem.encode()[:budget].decode(errors="ignore").rstrip(". ")
        text = f"{stem}.{ext}" if ext else stem
    return text


def name_from_disposition(value: str | None) -> str:
    """The safe file name a ``Content-Disposition`` header offers, or ``""`` for none.

    ``filename*`` (percent-encoded, with a charset) wins over ``filename``; either is
    reduced by :func:`sanitize_name`, so whatever the server says stays one name in ``dest``.
    """
    params: dict[str, str] = {}
    for key, raw in _DISPOSITION_PARAM.findall(";" + (value or "")):
        params.setdefault(key.lower(), raw.strip())
    name = ""
    extended = params.get("filename*")
    if extended:
        charset, _, rest = extended.strip('"').partition("'")
        with contextlib.suppress(LookupError, UnicodeDecodeError):
            name = unquote(rest.partition("'")[2], charset or "utf-8", "strict")
    if not name and "filename" in params:
        name = params["filename"]
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return sanitize_name(name)


def name_from_url(url: str) -> str:
    """The safe file name a URL's path suggests, or ``index.html`` when it has none."""
    path = urlsplit(url).path
    last = path.rsplit("/", 1)[-1]
    return sanitize_name(unquote(last)) or DEFAULT_NAME


def relative_path(path: str | os.PathLike[str]) -> PurePosixPath:
    """Validate a caller-given path relative to ``dest`` (sub-folders allowed).

    :raises InvalidItemError: absolute, empty, with ``..``, a NUL or a drive.
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        raise InvalidItemError(f"path must be text, not {type(text).__name__}")
    if "\x00" in text:
        raise InvalidItemError(f"path {text!r} contains a NUL character")
    posix = text.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise InvalidItemError(f"path {text!r} is absolute; give a path relative to dest")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidItemError(f"path {text!r} goes outside dest ('..')")
    if not parts:
        raise InvalidItemError(f"path {text!r} names no file")
    return PurePosixPath(*parts)


def sidecar(final: Path, suffix: str) -> Path:
    """``.part`` stays visible (people know it); the others are hidden."""
    if suffix == ".part":
        return final.with_name(final.name + ".part")
    return final.with_name("." + final.name + suffix)


def is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def ensure_parent(dest_real: Path, final: Path) -> None:
    """Create the folders above ``final``, refusing any that leads outside ``dest``
    (a symlinked sub-folder). Blocking.

    :raises OSError: with a message fit for users.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if not is_within(Path(os.path.realpath(final.parent)), dest_real):
        raise OSError(errno.EXDEV, f"{final.parent} leads outside the destination folder")


def existing_size(final: Path) -> int | None:
    """Size of the regular file at ``final``, or None when there is none. Blocking.

    :raises OSError: when something there is not a regular file (a symlink is never
        followed or replaced: it may point anywhere).
    """
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"{final} is a symbolic link; refusing to follow or replace it")
    if stat.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, f"{final} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{final} is not a regular file")
    return st.st_size


# --- locks -----------------------------------------------------------------------------

LOCK_UNSUPPORTED = -1


def try_lock(final: Path) -> int | None:
    """Take the writer lock of ``final`` without waiting. Blocking syscalls; run in a thread.

    Returns the lock's file descriptor, ``None`` when another writer holds it, or
    ``LOCK_UNSUPPORTED`` when the filesystem has no ``flock`` (then the caller writes to
    a unique temp file: correctness never depends on the lock).
    """
    path = sidecar(final, ".lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
                return LOCK_UNSUPPORTED
            raise
        # The holder before us unlinks the file on release: make sure the file we locked
        # is still the one at the path, or two writers could each hold "the" lock.
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def unlock(final: Path, fd: int) -> None:
    if fd == LOCK_UNSUPPORTED:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sidecar(final, ".lock"))
    os.close(fd)


# --- partial files ----------------------------------------------------------------------


def url_key(url: str) -> str:
    """What a partial remembers of its URL: a digest, so no secret is written to disk."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


@dataclass(slots=True)
class Partial:
    """A partial file left by an earlier attempt or run, and what is known about it."""

    size: int
    url: str = ""  # url_key()
    validator: str | None = None  # strong ETag, else Last-Modified
    total: int | None = None
    segments: list[list[int]] = field(default_factory=list)  # [start, end, done] (issue: segments)

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


def read_partial(final: Path) -> Partial | None:
    """The partial beside ``final`` with its sidecar, or None. Blocking."""
    part = sidecar(final, ".part")
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return Partial(size=0)  # not ours: it will be replaced, never followed
    try:
        data = json.loads(sidecar(final, ".part.json").read_text())
        return Partial(
            size=st.st_size,
            url=str(data["url"]),
            validator=data.get("validator"),
            total=data.get("total"),
            segments=[list(map(int, s)) for s in data.get("segments", [])],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return Partial(size=st.st_size)


def write_meta(final: Path, partial: Partial) -> None:
    path = sidecar(final, ".part.json")
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a symlink planted there is removed, never written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with open(fd, "w") as f:
        f.write(partial.to_json())
    os.replace(tmp, path)


def discard_partial(final: Path) -> None:
    for suffix in (".part", ".part.json"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sidecar(final, suffix))


def open_part(path: Path, offset: int) -> int:
    """Open the part file for writing from ``offset`` (truncating anything beyond).

    A symlink planted at the part path is removed, never followed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if not offset:
        flags |= os.O_TRUNC  # one syscall where a fresh file needs nothing else
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        if path.is_dir() and not path.is_symlink():
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


def preallocate(fd: int, size: int) -> None:
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


def commit(part: Path, final: Path, target: Path | None = None) -> None:
    """Move a verified part file to its final name (or ``target``, a name the server gave),
    atomically, and drop its sidecar."""
    os.replace(part, target or final)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sidecar(final, ".part.json"))
