"""Expected hashes: parsing ``"sha256:<hex>"`` specs and hashing files in chunks."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidItemError

ALGORITHMS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class ExpectedHash:
    algorithm: str
    hexdigest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"

    def new(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_hash(spec: str) -> ExpectedHash:
    """Parse ``"sha256:<hex>"`` (also md5, sha1, sha512); a bare hex digest of 64 digits is
    taken as sha256, as pooch does."""
    if not isinstance(spec, str):
        raise InvalidItemError(
            f"hash must be a string like 'sha256:<hex>', not {type(spec).__name__}"
        )
    text = spec.strip()
    algorithm, sep, digest = text.partition(":")
    if not sep:
        algorithm, digest = "sha256", text
    algorithm = algorithm.lower().replace("-", "")
    digest = digest.lower()
    if algorithm not in ALGORITHMS:
        raise InvalidItemError(
            f"unsupported hash algorithm {algorithm!r} in {spec!r}; use one of "
            + ", ".join(ALGORITHMS)
        )
    if len(digest) != ALGORITHMS[algorithm] or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidItemError(
            f"malformed {algorithm} digest in {spec!r}: expected {ALGORITHMS[algorithm]} hex digits"
        )
    return ExpectedHash(algorithm, digest)


def hash_file(
    path: Path | str,
    algorithm: str,
    limit: int | None = None,
    *,
    start: int = 0,
    into: hashlib._Hash | None = None,
    stop: threading.Event | None = None,
) -> hashlib._Hash:
    """A hash object fed with the file's bytes from ``start`` (``limit`` of them when given),
    continuing ``into`` when given. Blocking: run it in a thread.

    :raises HashInterrupted: ``stop`` was set (checked between blocks of 1 MiB).
    """
    h = into if into is not None else hashlib.new(algorithm)
    remaining = limit
    with open(path, "rb") as f:
        f.seek(start)
        while remaining is None or remaining > 0:
            if stop is not None and stop.is_set():
                raise HashInterrupted(f"hashing {path} was interrupted")
            block = f.read(_READ if remaining is None else min(_READ, remaining))
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return h


class HashInterrupted(Exception):
    """A hash was abandoned midway (its download was cancelled)."""
