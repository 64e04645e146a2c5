"""Extraction of an archive object into keys under a prefix of its bucket.

The object-storage side of :mod:`rheo_nb.extract`: the same reading of the archive and
the same checks (:func:`rheo_nb.extract.unpack` and :class:`~rheo_nb.extract.Tree`),
with members streamed into objects instead of files, and no local disk at all:

* **Read in place.** The archive is read back from the bucket by ranged ``GET`` requests
  of :data:`BLOCK` bytes (the next one fetched ahead while the current one is read), each
  guarded by the archive's ETag (``If-Match``), so a changed archive fails instead of
  mixing two versions. A tar is read once, front to back; a zip seeks to its directory.
* **Written member by member.** Each file member streams into its own upload: an object
  that fits in one part is put in one request, sent while the next members are read (a
  few at a time), a larger one goes up part by part. Memory: two read blocks, plus at
  most ``parts_in_flight`` small members and one large member's ``parts_in_flight``
  parts: 16 + 32 + 32 = 80 MiB with the defaults, whatever the archive holds.
* **Links.** Object storage has none. A hard link, or a symbolic link that resolves to
  a file of the archive, becomes a server-side copy of that object (counted against
  ``max_extract_size`` like any member); a symbolic link to a folder, or to nothing, is
  left out. Every link is checked first exactly as on disk: one that leads outside the
  target refuses the archive.

Atomic, as far as a prefix allows: a prefix cannot be renamed into place, so a record
object is the commit point. ``<folder>/.rheo_nb/extract-<digest>.json`` beside the target
says ``extracting`` before the first member is written and ``done`` (with the archive's
size, ETag and the digests its metadata carries) after the last. A refused, failed or cancelled
extraction deletes what it wrote and its record; a killed one leaves ``extracting``, and
the next run deletes what the target holds and extracts again. A target never counts as
extracted without a ``done`` record for the same archive; a target prefix that holds
objects without any record is the user's, and is never written to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import io
import json
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import IO, Any, TypeVar

from . import extract
from .destination import Stopped, Unpacking, reporter
from .errors import ExtractError
from .extract import Budget, Refused, Tree
from .files import target_name
from .hashing import ALGORITHMS, ExpectedHash
from .objstore import RECORD_DIR, Bucket, MultipartUpload, ObjectPath
from .partfile import url_key

T = TypeVar("T")

#: Bytes of the archive one ranged ``GET`` reads.
BLOCK = 8 << 20
#: What the kind of an archive is read from.
_HEAD = 64 << 10
#: Small members sent at once (their bytes are capped too: see :class:`ObjectTree`).
_PUTS_IN_FLIGHT = 16
#: Links followed while resolving one symbolic link before calling it a loop.
_MAX_HOPS = 40


@dataclass(frozen=True, slots=True)
class _Record:
    """The extraction record (see the module docstring); no secret in it."""

    state: str  # "extracting" or "done"
    archive: str  # the archive's key, for a person reading the bucket
    size: int
    etag: str
    #: The archive's hex digests by algorithm, as its metadata gave them (the hash its
    #: download was verified with): what a rerun compares once the archive is gone.
    digests: dict[str, str]
    kind: str
    members: int = 0
    nbytes: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"version": 1, **asdict(self)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _Record | None:
        try:
            raw = json.loads(data)
            # Records written before "digests" hold a "sha256" alone.
            sha = raw.get("sha256")
            digests = raw.get("digests", {} if sha is None else {"sha256": sha})
            return cls(
                str(raw["state"]),
                str(raw["archive"]),
                int(raw["size"]),
                str(raw["etag"]),
                {str(k): str(v) for k, v in digests.items()},
                str(raw["kind"]),
                int(raw["members"]),
                int(raw["nbytes"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def done_for(self, size: int, etag: str) -> bool:
        return self.state == "done" and (self.size, self.etag) == (size, etag)


# --- where things are ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """What an archive becomes: a prefix of keys (``single``: one key) and its record."""

    key: str  # "data/train" (the prefix without its "/"), or the single object's key
    single: bool

    @property
    def root(self) -> str:
        """What a member's path is appended to."""
        if self.single:
            folder = self.key.rpartition("/")[0]
            return folder + "/" if folder else ""
        return self.key + "/"

    @property
    def record(self) -> str:
        folder, _, name = self.key.rpartition("/")
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return f"{folder + '/' if folder else ''}{RECORD_DIR}/extract-{digest}.json"


_SINGLE = frozenset({"gz", "bz2", "xz", "zst"})


def _target(archive: ObjectPath, folder: str | None, kind: str) -> _Target:
    single = kind in _SINGLE
    if folder is not None:
        return _Target(folder.rstrip("/"), single)
    parent = archive.key.rpartition("/")[0]
    name = target_name(archive.name, kind)
    return _Target(f"{parent}/{name}" if parent else name, single)


# --- the entry points -------------------------------------------------------------------------


async def extract_object(
    bucket: Bucket,
    archive: ObjectPath,
    folder: str | None,
    how: Unpacking,
    *,
    parts_in_flight: int,
) -> ObjectPath | None:
    """Extract the archive object ``archive`` into keys under ``folder`` (a full key
    prefix; None: beside the archive, named after it); the target's ``s3://`` URL, or
    None when it is no archive and ``how.explicit`` is false.

    :raises ExtractError: the archive is refused (the member and the reason), unreadable,
        or the target holds objects that did not come from rheo_nb.
    """
    head = await bucket.head(archive.key)
    if head is None:
        raise ExtractError(how.label, "the archive is no longer in the bucket")
    size, etag = int(head["ContentLength"]), str(head.get("ETag", ""))
    first = await bucket.read(archive.key, 0, min(size, _HEAD), etag) if size else b""
    kind = extract.kind_of(io.BytesIO(first))
    if kind is None:
        if how.explicit:
            raise ExtractError(how.label, "not an archive rheo_nb extracts (zip, tar, gz…)")
        return None
    target = _target(archive, folder, kind)
    how.claim(bucket.url(target.key))
    meta = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
    digests = {k: str(v).lower() for k, v in meta.items() if k in ALGORITHMS}
    record = _Record("extracting", archive.key, size, etag, digests, kind)
    if not await _claim(bucket, target, record, how.label):
        job = _Job(bucket, archive.key, target, record, how, parts_in_flight)
        members, nbytes = await job.run()
        done = _Record("done", archive.key, size, etag, record.digests, kind, members, nbytes)
        await _put_record(bucket, target, done)
    if how.remove:
        await bucket.call("delete_object", archive.key)
    return bucket.url(target.key)


async def recorded(
    bucket: Bucket, archive: ObjectPath, folder: str | None, expected: ExpectedHash | None
) -> tuple[ObjectPath, int] | None:
    """Where ``archive`` (now gone: ``extract_remove``) was extracted, with its size, when
    that extraction is complete and, with ``expected``, of an archive with that hash."""
    names = (
        [folder.rstrip("/")]
        if folder is not None
        else sorted({_target(archive, None, kind).key for kind in extract.KINDS})
    )
    for name in names:
        record = await _read_record(bucket, _Target(name, False))
        if record is None or record.state != "done" or record.archive != archive.key:
            continue
        if expected is not None and record.digests.get(expected.algorithm) != expected.hexdigest:
            continue
        target = _Target(name, record.kind in _SINGLE)
        if record.members == 0 or await _holds(bucket, target):
            return bucket.url(target.key), record.size
    return None


# --- the record, the claim and the wipe --------------------------------------------------------


async def _read_record(bucket: Bucket, target: _Target) -> _Record | None:
    data = await bucket.get(target.record)
    return None if data is None else _Record.from_json(data)


async def _put_record(bucket: Bucket, target: _Target, record: _Record) -> None:
    await bucket.call(
        "put_object", target.record, Body=record.to_json(), ContentType="application/json"
    )


async def _holds(bucket: Bucket, target: _Target) -> bool:
    if target.single:
        return await bucket.head(target.key) is not None
    return bool(await bucket.listed(target.root, limit=1))


async def _claim(bucket: Bucket, target: _Target, record: _Record, label: str) -> bool:
    """Whether the archive is extracted already (a ``done`` record for it, the target still
    there); else clear what an earlier extraction left and record this one as started.

    :raises ExtractError: the target holds objects rheo_nb did not put there.
    """
    found = await _read_record(bucket, target)
    holds = await _holds(bucket, target)
    if found is not None and found.done_for(record.size, record.etag):
        if holds or found.members == 0:
            return True
    if holds and found is None:
        raise ExtractError(
            label,
            f"the target {str(bucket.url(target.key))!r} holds objects that were not extracted "
            "by rheo_nb; move them away or extract elsewhere",
        )
    if holds or found is not None:
        # Interrupted, or of another version of the archive: redone from scratch.
        await _wipe(bucket, target)
    await _put_record(bucket, target, record)
    return False


async def _wipe(bucket: Bucket, target: _Target, *, record: bool = False) -> None:
    """Delete what the target holds (and its uploads left open); with ``record``, the
    record too."""
    if target.single:
        await bucket.clean(target.key)
        keys = [target.key] if await bucket.head(target.key) is not None else []
    else:
        await bucket.clean(target.root)
        keys = await bucket.listed(target.root)
    await bucket.delete([*keys, target.record] if record else keys)


# --- the job: a thread reads and checks, the loop sends ----------------------------------------


class _Job:
    """One extraction: a worker thread runs :func:`rheo_nb.extract.unpack` over the
    archive object, and hands every request to the loop it was started from."""

    def __init__(
        self,
        bucket: Bucket,
        archive: str,
        target: _Target,
        record: _Record,
        how: Unpacking,
        parts_in_flight: int,
    ) -> None:
        self.bucket, self.archive, self.target, self.record = bucket, archive, target, record
        self.how, self.parts_in_flight = how, parts_in_flight
        self.loop = asyncio.get_running_loop()
        self.stop = threading.Event()

    async def run(self) -> tuple[int, int]:
        """Members and bytes extracted. Anything but success (a cancel too) deletes what
        was written, and the record, before it goes on."""
        work = self.loop.run_in_executor(None, self._work)
        try:
            return await asyncio.shield(work)
        except BaseException:
            self.stop.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait((work,))  # it stops at its next member or block
                work.exception()  # Stopped, most likely: what ends this is raised below
            # Left as it is if this fails: the record says "extracting", so the next run
            # clears it.
            with contextlib.suppress(Exception):
                await asyncio.shield(_wipe(self.bucket, self.target, record=True))
            raise

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it (from the worker thread)."""
        return self.send(coro).result()

    def send(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self.stop.is_set():
            coro.close()
            raise Stopped
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def _work(self) -> tuple[int, int]:
        how = self.how
        size = self.record.size
        budget = Budget(extract.size_limit(size, how.max_size), how.max_files)
        tree = ObjectTree(self, budget, reporter(how, self.loop, self.stop))
        name = self.target.key.rpartition("/")[2]
        with (
            extract.refusals(how.label),
            io.BufferedReader(_Reader(self, size), 1 << 16) as reader,
        ):
            try:
                extract.unpack(reader, self.record.kind, tree, name)
            finally:
                tree.close()
        return budget.members, budget.bytes

    def read(self, start: int, end: int) -> concurrent.futures.Future[bytes]:
        return self.send(self.bucket.read(self.archive, start, end, self.record.etag))


class _Reader(io.RawIOBase):
    """The archive object as a blocking, seekable file. A read that continues the last one
    fetches :data:`BLOCK` bytes, and the block after it meanwhile; a read elsewhere (a
    zip's directory, a member's header) fetches only :data:`_HEAD` bytes, so checking a
    zip's layout costs one small request per member. Holds at most two blocks."""

    def __init__(self, job: _Job, size: int) -> None:
        self.job, self.size, self.pos = job, size, 0
        self._data, self._start = b"", 0  # the window read last
        self._ahead: tuple[int, concurrent.futures.Future[bytes]] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size:
            return 0
        within = self.pos - self._start
        if not 0 <= within < len(self._data):
            self._window()
            within = 0
        n = min(len(buffer), len(self._data) - within)
        buffer[:n] = memoryview(self._data)[within : within + n]
        self.pos += n
        return n

    def _window(self) -> None:
        """Fetch the bytes from :attr:`pos` on (or take those fetched ahead)."""
        pos, ahead = self.pos, self._ahead
        sequential = pos == self._start + len(self._data)
        self._data, self._ahead = b"", None
        if ahead is not None and ahead[0] == pos:
            data = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].cancel()
            end = min(self.size, pos + (BLOCK if sequential else _HEAD))
            data = self.job.read(pos, end).result()
        if not data:
            raise OSError(f"the archive object ends before its {self.size} bytes")
        self._data, self._start = data, pos
        nxt = pos + len(data)
        if sequential and nxt < self.size:
            self._ahead = (nxt, self.job.read(nxt, min(self.size, nxt + BLOCK)))

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
            self._ahead = None
        self._data = b""
        super().close()


class ObjectTree(Tree):
    """Writes the members of an archive as objects under the target's keys (see the
    module docstring for links), with the checks a folder's tree makes on disk."""

    def __init__(
        self, job: _Job, budget: Budget, progress: Callable[[extract.ExtractProgress], None]
    ) -> None:
        super().__init__(budget, progress)
        self.job = job
        self.root = job.target.root
        self.files: dict[tuple[str, ...], int] = {}  # written, with their sizes
        self.dirs: set[tuple[str, ...]] = set()
        self._sending: dict[str, concurrent.futures.Future[int]] = {}  # small ones
        self._lock = threading.Lock()
        self._room = _Room(job.parts_in_flight * job.bucket.part_size, _PUTS_IN_FLIGHT)
        self._failure: BaseException | None = None

    def key(self, parts: tuple[str, ...]) -> str:
        return self.root + "/".join(parts)

    def folder(self, parts: tuple[str, ...]) -> None:
        for i in range(1, len(parts) + 1):
            if parts[:i] in self.files:
                raise Refused(f"{'/'.join(parts[:i])!r} is both a folder and another member")
            self.dirs.add(parts[:i])

    def _claim(self, parts: tuple[str, ...]) -> None:
        if parts in self.dirs:
            raise Refused("a file and a folder of the archive share this name")
        self.folder(parts[:-1])

    def file(self, m: extract.Member, parts: tuple[str, ...], src: IO[bytes]) -> None:
        self._claim(parts)
        self._check()
        key, part_size = self.key(parts), self.job.bucket.part_size
        source = url_key(f"{self.job.bucket.url(self.job.archive)}#{m.name}")
        up = MultipartUpload(self.job.bucket, key, source, None, self.job.parts_in_flight)
        held: list[bytes] | None = []  # a member that fits in a part, until it is whole
        before = self.budget.bytes

        def write(chunk: bytes) -> None:
            nonlocal held
            if held is not None and self.budget.bytes - before <= part_size:
                held.append(chunk)
                return
            if held:  # larger than a part: its parts go up as they fill
                self.job.call(up.append(held))
            held = None
            self.job.call(up.append([chunk]))

        try:
            self.copy(m.name, src, write)
        except BaseException:
            # Even once stopped: the member's multipart upload must not outlive this.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(up.discard(), self.job.loop).result()
            raise
        size = self.files[parts] = self.budget.bytes - before
        if held is None:
            self.job.call(up.commit())
            return
        # One request, sent while the next members are read: a few at a time, a few
        # parts' worth of bytes at most.
        self._room.take(size)
        fut = self.job.send(_put(up, held))
        with self._lock:
            self._sending[key] = fut
        fut.add_done_callback(functools.partial(self._sent, key, size))

    def _sent(self, key: str, size: int, fut: concurrent.futures.Future[int]) -> None:
        with self._lock:
            if self._sending.get(key) is fut:
                del self._sending[key]
        self._room.give(size)
        if not fut.cancelled() and fut.exception() is not None and self._failure is None:
            self._failure = fut.exception()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def hardlink(self, m: extract.Member, parts: tuple[str, ...], source: tuple[str, ...]) -> None:
        if source not in self.files:
            raise Refused(f"hard link to {m.link!r}, which is not a file extracted before it")
        self._claim(parts)
        self._copy_object(m.name, source, parts)

    def _copy_object(self, name: str, source: tuple[str, ...], parts: tuple[str, ...]) -> None:
        size = self.files[source]
        self.budget.add(name, size)  # a reader sees its bytes again: count them
        src = self.key(source)
        with self._lock:
            sending = self._sending.get(src)
        if sending is not None:
            sending.result()  # the copy needs the object in place
        self.job.call(self.job.bucket.copy(src, self.key(parts)))
        self.files[parts] = size

    def finish(self) -> None:
        self._drain()
        links = {parts: link for parts, link, _ in self.links}
        for parts, _, name in self.links:
            if parts in self.files or parts in self.dirs:
                raise Refused("a link and another member share this name", name)
            try:
                real = _resolve(parts, links)
            except Refused as exc:
                exc.member = name
                raise
            if real is not None and real in self.files:
                self._copy_object(name, real, parts)
                self.report()

    def _drain(self) -> None:
        with self._lock:
            sending = list(self._sending.values())
        for fut in sending:
            with contextlib.suppress(Exception):
                fut.result()
        self._check()

    def close(self) -> None:
        """Wait for the small objects still on their way (kept, or wiped after)."""
        with self._lock:
            sending = list(self._sending.values())
        for fut in sending:
            with contextlib.suppress(BaseException):
                fut.result()


async def _put(up: MultipartUpload, chunks: list[bytes]) -> int:
    await up.append(chunks)
    return await up.commit()


class _Room:
    """How many small objects may be on their way at once, and how many bytes: a thread
    takes room before sending one, the loop gives it back when it is stored."""

    def __init__(self, max_bytes: int, max_count: int) -> None:
        self.max_bytes, self.max_count = max_bytes, max_count
        self.bytes = self.count = 0
        self._changed = threading.Condition()

    def take(self, n: int) -> None:
        with self._changed:
            while self.count and (self.count >= self.max_count or self.bytes + n > self.max_bytes):
                self._changed.wait()
            self.bytes += n
            self.count += 1

    def give(self, n: int) -> None:
        with self._changed:
            self.bytes -= n
            self.count -= 1
            self._changed.notify_all()


def _resolve(
    parts: tuple[str, ...], links: Mapping[tuple[str, ...], str]
) -> tuple[str, ...] | None:
    """Where the symbolic link at ``parts`` leads, following links of the archive as the
    kernel would (the answer ``realpath`` gives on disk); None for a loop.

    :raises Refused: it leads outside the target.
    """
    out: list[str] = []
    todo = list(parts)
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise Refused(f"symbolic link to outside the target ({links[parts]!r})")
            out.pop()
            continue
        out.append(part)
        link = links.get(tuple(out))
        if link is not None:
            hops += 1
            if hops > _MAX_HOPS:
                return None
            out.pop()
            todo = link.replace("\\", "/").split("/") + todo
    return tuple(out)
