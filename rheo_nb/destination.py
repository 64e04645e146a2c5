"""Where one download's bytes go until they are verified, and how they get there.

The transfer (:mod:`rheo_nb.transfer`) tells the story of a download without knowing
where its bytes land; a :class:`Destination` keeps the promises in its own terms:

* :class:`LocalDestination`: a part file and its resume record in the hidden working
  folder beside the final path, one writer at a time by ``flock``, an atomic rename;
* :class:`~rheo_nb.objstore.ObjectDestination`: a multipart upload in a bucket,
  completed only once verified, its record in the bucket.

The shape below was drawn from those two: what a download asks of its destination, in
the order it asks. The object store added what the local disk never needed: a policy
for a download that failed for good (:attr:`Destination.keep_failed`), the boundary the
ranges of a split must start on (:meth:`Destination.alignment`: a part), and a commit
that may find the same file completed by another writer (:class:`Present`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from . import files, segments
from .errors import DownloadError, ExtractError
from .hashing import ExpectedHash, hash_file
from .http import Answer, Decision, Restart
from .partfile import PartFile, Partial, Record, destination_error, destination_errors, url_key
from .runner import ThreadLane
from .segments import Segment, Split
from .stream import Sink

if TYPE_CHECKING:
    from .extract import ExtractProgress
    from .objstore import ObjectPath

_LOCK_POLL = (0.02, 0.5)  # first and longest wait between tries of a busy lock
_BUSY = -1  # another writer holds the file's lock


@dataclass(frozen=True, slots=True)
class Skip:
    """A complete file is already where the download would put it: keep it."""

    nbytes: int
    reason: str


class Present(Exception):
    """Raised from the middle of a download: a complete file is where it goes (the name
    the server gave is taken, or another writer completed the same object): skip it."""

    def __init__(self, skip: Skip) -> None:
        super().__init__(skip.reason)
        self.skip = skip


@dataclass(frozen=True, slots=True)
class Unpacking:
    """How to extract an archive (see :func:`rheo_nb.extract.extract`), where to report
    how far it got (called on the loop, at most ten times a second), and how to claim
    its target once the archive's kind tells it (:class:`ExtractError` when another file
    of the call has that path)."""

    explicit: bool
    remove: bool
    max_size: int | None
    max_files: int
    progress: Callable[[int, int | None], None]
    label: str
    claim: Callable[[Path | ObjectPath], None]


@dataclass(frozen=True, slots=True)
class Resume:
    """What the bytes kept from an earlier attempt or run allow: the range to ask for
    (``(first, last)``, ``last`` None: to the end), the ``If-Range`` to send, and the
    split they continue when a segmented download left them."""

    asked: tuple[int, int | None]
    validator: str
    total: int | None
    split: Split | None = None


class Destination(Protocol):
    """The destination of one download (see the module docstring)."""

    @property
    def path(self) -> Path | ObjectPath:
        """Where the file is, or will be: shown in outcomes and events."""
        ...

    @property
    def keep_failed(self) -> bool:
        """Whether a download that fails for good after a transient error (retries
        exhausted) keeps its bytes for a rerun, as a cancel does; else they are dropped."""
        ...

    @property
    def size(self) -> int:
        """Bytes of the file held so far in order from its start (a resume's offset)."""
        ...

    def alignment(self, total: int) -> int | None:
        """What the ranges of a segmented download of ``total`` bytes must start on (a
        multiple of it), or None when this download cannot be split."""
        ...

    async def claim(self, *, overwrite: bool) -> Skip | None:
        """Become the one writer and look: a complete file to keep, else None."""
        ...

    async def resumable(
        self, url: str, sources: tuple[str, ...], *, no_split: bool
    ) -> Resume | None:
        """What an earlier attempt or run left that this attempt, from ``url`` (one of the
        file's ``sources``), may continue.

        :raises Restart: something is there that cannot be trusted.
        """
        ...

    async def restart(self) -> int:
        """Drop what was kept (it cannot be continued); how many bytes went."""
        ...

    async def rename(self, name: str, *, overwrite: bool) -> Skip | None:
        """The server names the file ``name`` (Content-Disposition): write it there."""
        ...

    async def stream(self, url: str, answer: Answer) -> Sink:
        """A body is coming for the file from :attr:`size` on (0 unless ``answer``
        continues the bytes kept): where its bytes go."""
        ...

    async def open_split(self, split: Split) -> None:
        """A segmented download is about to write ``split``'s missing ranges."""
        ...

    def range_sink(self, split: Split, seg: Segment) -> Sink:
        """Where the bytes of one range of a split go."""
        ...

    async def save(self, split: Split) -> None:
        """Record how far ``split`` has got, for a resume after a crash."""
        ...

    async def commit(self, tail: list[bytes], total: int | None, split: Split | None) -> int:
        """The last bytes, the length and hash checks, then the file at its path. Size.

        :raises IntegrityError: the bytes are not the file; nothing is at the path.
        :raises Present: another writer put the same file there meanwhile.
        """
        ...

    async def stop(self, *, keep: bool) -> None:
        """An early end (failure or cancel): keep the bytes for a resume, or drop them;
        in both cases let go of the file."""
        ...

    async def extracted(
        self, folder: PurePosixPath | None
    ) -> tuple[Skip, Path | ObjectPath] | None:
        """The file is gone because its extraction removed it, and that extraction is
        still in place: skip it (and where it went), letting go of the file as
        :meth:`claim` does. ``folder`` as for :meth:`extract`."""
        ...

    async def extract(
        self, folder: PurePosixPath | None, how: Unpacking
    ) -> Path | ObjectPath | None:
        """Unpack the file, now complete at :attr:`path`, into ``folder`` (relative to the
        call's destination; None: beside it, named after it). None when it is no archive
        and extraction was not asked of this file in particular (``how.explicit``).

        :raises ExtractError: the archive is refused (a member and the reason).
        """
        ...


class LocalDestination:
    """A download into a local folder: a part file and its lock in the hidden working
    folder beside the final path, renamed into place once verified."""

    keep_failed = True  # a partial costs nothing where it is, and a rerun resumes it

    def __init__(
        self,
        final: Path,
        *,
        dest: Path,
        lane: ThreadLane,
        checked: set[Path],
        expected: ExpectedHash | None,
    ) -> None:
        self.path = final
        self.final = final
        self.dest, self.lane, self.checked, self.expected = dest, lane, checked, expected
        self.base = files.working_base(final)
        self.part = PartFile(final, base=self.base)
        self.partial: Partial | None = None  # found by the claim; used by the first attempt
        self.locks: list[tuple[Path, int, str]] = []  # path, descriptor, working base
        #: What a resume of the bytes on disk needs, once a response told it.
        self.record: Any = None  # Callable[[], Record] | None

    @property
    def size(self) -> int:
        return self.part.size

    def alignment(self, total: int) -> int:
        return segments.ALIGN

    # --- claim ---------------------------------------------------------------------------

    async def claim(self, *, overwrite: bool) -> Skip | None:
        keep_unverified = not overwrite and self.expected is None
        delay, longest = _LOCK_POLL
        while (found := await self.lane.run(self._look, keep_unverified)) == _BUSY:
            # Another call or process is writing this file: wait, then most likely skip it.
            await asyncio.sleep(delay)
            delay = min(longest, delay * 2)
        if found is None or overwrite or (reason := await self._verified(self.final)) is None:
            return None
        await self.release()
        return Skip(found, reason)

    @destination_errors
    def _look(self, keep_unverified: bool) -> int | None:
        """The claim's one thread hop: lock, look at the final path, read any partial."""
        final, base = self.final, self.base
        lock, existing = files.claim(self.dest, final, self.checked, keep_unverified, base)
        if lock is None:
            return _BUSY if existing is None else existing
        self.locks.append((final, lock, base))
        if lock == files.LOCK_UNSUPPORTED:
            self.part = PartFile(final, unique=True, base=base)
        else:
            self.partial = self.part.read()
        return existing

    async def _verified(self, path: Path) -> str | None:
        """Why the complete file at ``path`` can be kept, or None when it cannot."""
        expected = self.expected
        if expected is None:
            return "already downloaded"
        try:
            digest = await self.lane.run_interruptible(
                lambda stop: hash_file(path, expected.algorithm, stop=stop)
            )
        except OSError as exc:
            raise destination_error(exc) from exc
        if digest.hexdigest() != expected.hexdigest:
            return None
        return f"already downloaded, {expected.algorithm} verified"

    async def rename(self, name: str, *, overwrite: bool) -> Skip | None:
        """Claim ``name`` in the same folder too: a lock of its own, and a complete file
        there is kept (verified against the hash when one is given)."""
        target = self.final.with_name(name)
        base = files.working_base(target)
        lock = await self.lane.run(destination_errors(files.try_lock), target, base)
        if lock is None:
            raise DownloadError(
                cause=f"the server names it {name}, which another download is writing; give "
                "it a path with File(url, path=...)"
            )
        self.locks.append((target, lock, base))
        self.path = target
        existing = await self.lane.run(destination_errors(files.existing_size), target)
        if existing is None or overwrite or (reason := await self._verified(target)) is None:
            return None
        return Skip(existing, f"{reason} as {name} (the server's name)")

    # --- what is kept ----------------------------------------------------------------

    async def resumable(
        self, url: str, sources: tuple[str, ...], *, no_split: bool
    ) -> Resume | None:
        # What the claim found stays true until this run writes or drops the part file:
        # a source that failed before sending a byte (a 404, then a mirror) leaves it.
        partial = self.partial
        if self.part.touched:  # an earlier attempt wrote some: what is on disk now
            partial = await self.lane.run(self.part.read)
        if partial is None:
            return None
        record = partial.usable_for(url, sources, hashed=self.expected is not None)
        if record is None or record.validator is None:
            if partial.size:
                raise Restart("the partial file cannot be trusted")
            return None
        self.part.size = partial.size
        if not record.segments:
            return Resume((partial.size, None), record.validator, record.total)
        split = None if no_split else segments.resumable(record, partial.size)
        if split is None:
            raise Restart("the partial file's record does not add up")
        seg = split.first_missing()
        if seg is None:
            # Every range is on disk (the run ended during the final check): ask for what
            # follows the end, as for a whole single-stream partial; the server's "nothing
            # more" confirms the version, and the bytes are checked and committed.
            return Resume((split.total, None), record.validator, record.total)
        return Resume((seg.position, seg.end - 1), record.validator, record.total, split)

    async def restart(self) -> int:
        dropped = max(self.part.size, self.partial.size if self.partial else 0)
        self.partial = None
        self.record = None
        await self.lane.run(self.part.discard)
        return dropped

    # --- bytes in --------------------------------------------------------------------

    async def stream(self, url: str, answer: Answer) -> Sink:
        part, expected = self.part, self.expected
        offset = 0 if answer.decision is Decision.FULL else part.size
        total = offset if answer.decision is Decision.COMPLETE else answer.total
        tag = answer.validator
        keep = tag is not None and not part.unique
        self.record = (lambda: Record(url_key(url), tag, total)) if keep else None
        if expected is not None:
            if offset:
                await self.lane.run_interruptible(
                    functools.partial(part.rehash, expected, limit=offset)
                )
            else:
                part.hasher = expected.new()
        part.size = offset
        return _Append(self, offset, keep)

    async def open_split(self, split: Split) -> None:
        fresh = split.done == 0
        if self.expected is not None and fresh:
            split.hasher = self.expected.new()
        await self.lane.run(functools.partial(self.part.open_sized, split.record(), fresh=fresh))
        self.record = split.record

    def range_sink(self, split: Split, seg: Segment) -> Sink:
        return _Range(self, split, seg)

    async def save(self, split: Split) -> None:
        await self.lane.run(self.part.save, split.record())

    # --- the end -------------------------------------------------------------------------

    async def commit(self, tail: list[bytes], total: int | None, split: Split | None) -> int:
        expected = self.expected
        if split is not None:
            self.part.size = split.total
            if expected is not None and (split.hasher is None or split.hashed < split.total):
                # Ranges written out of order: hash what the running hash has not seen.
                start, into = (split.hashed, split.hasher) if split.hasher else (0, None)
                await self.lane.run_interruptible(
                    functools.partial(self.part.rehash, expected, start=start, into=into)
                )
            elif expected is not None:
                self.part.hasher = split.hasher
        return await self.lane.run(self._commit, tail, total)

    def _commit(self, tail: list[bytes], total: int | None) -> int:
        """The last write, the checks, the rename and the end of the claim: one hop."""
        nbytes = self.part.finish(tail, total, self.expected, self.path)
        self._unlock()
        return nbytes

    async def stop(self, *, keep: bool) -> None:
        part = self.part
        try:
            if keep:
                await self.lane.run(part.keep, self.record() if self.record else None)
            elif self.locks or part.unique:  # ours to remove: we are the file's writer
                await self.lane.run(part.discard)
        finally:
            await self.release()

    async def release(self) -> None:
        """Close the part file if an error left it open, and let go of the locks."""
        if self.part.fd is not None or self.locks:
            await self.lane.run(self._release)

    def _release(self) -> None:
        try:
            self.part.close()
        finally:
            self._unlock()

    # --- extraction ----------------------------------------------------------------------

    def _target(self, folder: PurePosixPath | None) -> Path | None:
        return self.dest.joinpath(*folder.parts) if folder is not None else None

    async def extracted(self, folder: PurePosixPath | None) -> tuple[Skip, Path] | None:
        from . import extract  # tarfile, zipfile and the codecs: only when extracting

        found = await self.lane.run(
            destination_errors(extract.recorded), self.path, self._target(folder)
        )
        if found is None:
            return None
        target, nbytes, digests = found
        expected = self.expected
        if expected is not None and digests.get(expected.algorithm) != expected.hexdigest:
            return None
        verified = f", {expected.algorithm} verified" if expected else ""
        reason = "already downloaded and extracted" + verified
        await self.release()
        return Skip(nbytes, reason), target

    async def extract(self, folder: PurePosixPath | None, how: Unpacking) -> Path | None:
        from . import extract  # tarfile, zipfile and the codecs: only when extracting

        archive, target = self.path, self._target(folder)
        kind = await self.lane.run(destination_errors(extract.archive_kind), archive)
        if kind is None:
            if how.explicit:
                raise ExtractError(how.label, "not an archive rheo_nb extracts (zip, tar, gz…)")
            return None
        how.claim(target if target is not None else extract.default_target(archive, kind))
        if target is not None:
            await self.lane.run(destination_errors(files.ensure_parent), self.dest, target)
        loop = asyncio.get_running_loop()

        def unpack(stop: threading.Event) -> extract.Extracted:
            return extract.extract(
                archive,
                target,
                max_size=how.max_size,
                max_files=how.max_files,
                remove=how.remove,
                progress=reporter(how, loop, stop),
                label=how.label,
                # A rerun compares the hash it is given with the record (the archive gone).
                hashes=(self.expected.algorithm,) if self.expected else (),
            )

        # A cancel waits for the thread to remove what it wrote: when the call returns,
        # nothing of a half-done extraction is left to be seen.
        result = await self.lane.run_interruptible(unpack, wait=True)
        if not result.skipped:  # the last count, which the throttle may have held back
            how.progress(result.members, result.members)
        return result.target

    def _unlock(self) -> None:
        locks, self.locks = self.locks, []
        for path, fd, base in reversed(locks):
            try:
                files.unlock(path, fd, base)
            except OSError:
                pass  # the kernel frees a lock with its descriptor; the file is harmless


class Stopped(Exception):
    """The download was cancelled while its archive was being extracted."""


def reporter(
    how: Unpacking, loop: asyncio.AbstractEventLoop, stop: threading.Event
) -> Callable[[ExtractProgress], None]:
    """The progress callback of an extraction running in a thread: ``how.progress`` on
    the loop, at most ten times a second; :class:`Stopped` once ``stop`` is set (the
    extraction then removes what it wrote and lets it through)."""
    last = 0.0

    def report(done: ExtractProgress) -> None:
        nonlocal last
        if stop.is_set():
            raise Stopped
        now = time.monotonic()
        if now - last >= 0.1:
            last = now
            loop.call_soon_threadsafe(how.progress, done.members, done.total)

    return report


class _Append:
    """The stream loop's sink for a whole body: appended to the part file, opened on the
    first write. A file that fits in one read is never written here: the commit writes
    it with its last step."""

    def __init__(self, dest: LocalDestination, offset: int, keep: bool) -> None:
        self.dest, self.offset = dest, offset
        self.keep_partial = keep

    def room(self) -> None:
        return None

    async def write(self, chunks: list[bytes]) -> None:
        await self.dest.lane.run(self._write, chunks)

    def _write(self, chunks: list[bytes]) -> None:
        part = self.dest.part
        if part.fd is None:
            record = self.dest.record
            part.open(self.offset, record() if record else None)
        part.append(chunks)


class _Range:
    """The stream loop's sink for one range: bytes land at the range's position."""

    keep_partial = True

    def __init__(self, dest: LocalDestination, split: Split, seg: Segment) -> None:
        self.dest, self.split, self.seg = dest, split, seg

    def room(self) -> int:
        # ``seg.end`` moves down when another connection takes over part of this range.
        return self.seg.end - self.seg.position

    async def write(self, chunks: list[bytes]) -> None:
        await self.dest.lane.run(self._write, chunks)

    def _write(self, chunks: list[bytes]) -> None:
        """Write and count in the thread: a write always completes, even when the task
        awaiting it is cancelled meanwhile."""
        split, seg = self.split, self.seg
        hasher = split.hasher if split.hasher is not None and seg.position == split.hashed else None
        n = self.dest.part.write_at(seg.position, chunks, hasher)
        seg.done += n
        if hasher is not None:
            split.hashed += n
