"""Where bytes land: safe names, confinement to ``dest``, working names, writer locks.

Everything here that touches the filesystem is blocking and meant to run in a worker
thread, batched so that one download costs few thread hops.

Each destination folder that receives downloads has a hidden working folder,
``.rheo_nb/``, which holds what a download needs while it runs, named after a digest
of the final file's name::

    data/x.csv                    the final file: appears only by an atomic rename
    data/.rheo_nb/<key>.part      the bytes so far          (partfile.py)
    data/.rheo_nb/<key>.json      what a resume needs       (partfile.py)
    data/.rheo_nb/<key>.lock      the one writer's flock    (here)
    data/.rheo_nb/<key>.<pid>-<host>-<token>.part
                                  the bytes of a writer without flock (here: named
                                  so that a later run removes it once its writer is gone)

No final name can be a working name (a path through a ``.rheo_nb`` folder is refused),
and working names are short whatever the length of the final name. The working folder
is removed at the end of a call when nothing is left in it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat
import time
import unicodedata
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from .errors import InvalidItemError
from .format import short_name

#: The kinds of archive rheo_nb extracts, and the suffixes of their names.
ARCHIVE_SUFFIXES = {
    "zip": (".zip",),
    "tar": (".tar",),
    "tar.gz": (".tar.gz", ".tgz", ".taz"),
    "tar.bz2": (".tar.bz2", ".tbz2", ".tbz", ".tb2"),
    "tar.xz": (".tar.xz", ".txz"),
    "tar.zst": (".tar.zst", ".tzst"),
    "gz": (".gz",),
    "bz2": (".bz2",),
    "xz": (".xz",),
    "zst": (".zst",),
}

_WINDOWS_RESERVED = re.compile(
    r"^(con|prn|aux|nul|com[0-9]|lpt[0-9]|conin\$|conout\$)(\..*)?$", re.I
)
# C1 controls (U+0080..U+009F) too: U+009B is CSI to a terminal that takes 8-bit controls.
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f-\x9f<>:"|?*\\/]')
_DISPOSITION_PARAM = re.compile(r';\s*([^\s;=]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
#: Most bytes a file name may have (ext4, XFS, APFS).
MAX_NAME_BYTES = 255
DEFAULT_NAME = "index.html"
#: The hidden folder of working files in each destination folder.
WORKDIR = ".rheo_nb"


def sanitize_name(name: str) -> str:
    """Reduce any string to one safe file name (possibly empty).

    Path separators of every platform, control characters (NUL and C1 included) and characters
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
    if len(encoded) > MAX_NAME_BYTES:
        stem, dot, ext = text.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext = text, ""
        budget = MAX_NAME_BYTES - len(ext.encode()) - (1 if ext else 0)
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

    :raises InvalidItemError: absolute, empty, with ``..``, a NUL, a drive, a name over
        255 bytes, or through a ``.rheo_nb`` folder (where working files live).
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
    if WORKDIR in parts:
        raise InvalidItemError(
            f"path {text!r} goes through a {WORKDIR} folder, which holds rheo_nb's working "
            "files; choose another name"
        )
    for part in parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > MAX_NAME_BYTES:
            raise InvalidItemError(
                f"path {short_name(text, 60)!r}: a name of {size} bytes, over the "
                f"{MAX_NAME_BYTES} a file name may have"
            )
    return PurePosixPath(*parts)


def working_path(final: Path, suffix: str) -> Path:
    """The working file of kind ``suffix`` (``".part"``, ``".json"``, ``".lock"``…) of the
    download to ``final``: in the hidden working folder beside it, named after a digest
    of the final name, so it can neither collide with a final name nor be too long."""
    return Path(working_base(final) + suffix)


def working_base(final: Path) -> str:
    """:func:`working_path` without its suffix, as text: computed once per download."""
    return os.path.join(final.parent, WORKDIR, name_key(final.name))


def name_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def ensure_parent(dest_real: Path, final: Path) -> None:
    """Create the folders above ``final`` and its working folder, refusing any that leads
    outside ``dest`` (a symlinked sub-folder). Blocking.

    :raises OSError: with a message fit for users.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if not is_within(Path(os.path.realpath(final.parent)), dest_real):
        raise OSError(errno.EXDEV, f"{final.parent} leads outside the destination folder")
    work = final.parent / WORKDIR
    try:
        os.mkdir(work, 0o755)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(work).st_mode):
            # Only a real folder of ours: a symlink there could point anywhere.
            raise OSError(
                errno.ENOTDIR, f"{work} is not a folder (rheo_nb keeps working files there)"
            ) from None


def remove_workdir(folder: Path) -> None:
    """Remove the working folder of ``folder`` when nothing is left in it. Blocking."""
    with contextlib.suppress(OSError):
        os.rmdir(folder / WORKDIR)


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


def claim(
    dest_real: Path, final: Path, checked: set[Path], keep_unverified: bool, base: str
) -> tuple[int | None, int | None]:
    """Become the one writer of ``final`` and look at what is there, in one thread hop.

    Returns ``(lock, size)``: the lock's descriptor (None when another writer holds it,
    or when a complete file is kept without a check, ``keep_unverified``) and the size of
    the file at ``final`` (None: nothing there). ``checked``: folders already created and
    found inside ``dest`` by this call (the check is made once per folder). ``base``:
    :func:`working_base` of ``final``.
    """
    first = final.parent not in checked
    if first:
        ensure_parent(dest_real, final)
        checked.add(final.parent)
    lock = try_lock(final, base)
    if lock is None:
        return None, None
    if lock == LOCK_UNSUPPORTED and first:
        drop_orphans(final.parent / WORKDIR)
    try:
        existing = existing_size(final)
    except BaseException:
        unlock(final, lock, base)
        raise
    if existing is not None and keep_unverified:
        unlock(final, lock, base)
        return None, existing
    return lock, existing


def try_lock(final: Path, base: str | None = None) -> int | None:
    """Take the writer lock of ``final`` without waiting. Blocking syscalls; run in a thread.

    Returns the lock's file descriptor, ``None`` when another writer holds it, or
    ``LOCK_UNSUPPORTED`` when the filesystem has no ``flock`` (then the caller writes to
    a unique temp file, :func:`lockless_part`: correctness never depends on the lock, and
    no lock file is left).
    """
    path = (working_base(final) if base is None else base) + ".lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            # Another call removed the working folder when it ended with it empty.
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.dirname(path), 0o755)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
                # Nobody can hold a lock here, so nobody needs this file either.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
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


def unlock(final: Path, fd: int, base: str | None = None) -> None:
    if fd == LOCK_UNSUPPORTED:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink((working_base(final) if base is None else base) + ".lock")
    os.close(fd)


# --- writers without a lock --------------------------------------------------------------

#: This machine, in the names of lockless part files: a process id means something only
#: on the machine that ran it (a network mount is shared by several).
_HOST = hashlib.sha256(os.uname().nodename.encode()).hexdigest()[:8]
#: ``<key>.<pid>-<host>-<token>.part``: a part file of a writer without a lock.
_LOCKLESS = re.compile(r"[0-9a-f]{32}\.(?:(\d{1,9})-([0-9a-f]{8})-)?[0-9a-f]{12}\.part")
#: A lockless part file of another machine unchanged for this long has no writer left: a
#: live download writes far more often, even through its longest retry wait.
ORPHAN_AGE = 24 * 3600.0


def lockless_part(base: str) -> str:
    """The part file of a writer of :func:`working_base` ``base`` that has no lock (a
    filesystem without ``flock``): a name no other writer uses, which says which process
    on which machine writes it, so that a later run can remove it once that writer is
    gone (:func:`drop_orphans`)."""
    return f"{base}.{os.getpid()}-{_HOST}-{secrets.token_hex(6)}.part"


def drop_orphans(workdir: Path) -> None:
    """Remove the lockless part files in ``workdir`` whose writer is gone: a process of
    this machine that no longer runs (killed), or, of another machine, unchanged for
    :data:`ORPHAN_AGE`. No later run could resume them. Blocking; errors are ignored.
    """
    try:
        names = os.listdir(workdir)
    except OSError:
        return
    now = time.time()
    for name in names:
        match = _LOCKLESS.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(workdir, name)
        pid, host = match.groups()
        with contextlib.suppress(OSError):
            if host == _HOST and pid is not None:
                if _running(int(pid)):
                    continue
            elif now - os.lstat(path).st_mtime < ORPHAN_AGE:
                continue
            os.unlink(path)


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this machine runs (a zombie counts: it is not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def target_name(name: str, kind: str) -> str:
    """The name an archive called ``name``, of ``kind``, is extracted under beside it
    (``train.tar.gz`` → ``train``, ``x.csv.gz`` → ``x.csv``; ``<name>.extracted`` when the
    name has no suffix of its kind)."""
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES.get(kind, ()):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name + ".extracted"


def extraction_name(name: str, *, explicit: bool) -> str | None:
    """:func:`target_name` as the name alone tells it, before any byte is read: by the
    longest archive suffix it ends with. A name with none extracts to
    ``<name>.extracted`` when extraction was asked of this file (``explicit``), and is
    taken for no archive otherwise (None)."""
    lower = name.lower()
    suffixes = [
        (len(suffix), kind)
        for kind, kinds in ARCHIVE_SUFFIXES.items()
        for suffix in kinds
        if lower.endswith(suffix) and len(name) > len(suffix)
    ]
    if suffixes:
        return target_name(name, max(suffixes)[1])
    return name + ".extracted" if explicit else None
