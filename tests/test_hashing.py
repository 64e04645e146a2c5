"""Hash specs and streaming digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rheo_nb.errors import InvalidItemError
from rheo_nb.hashing import ALGORITHMS, ExpectedHash, hash_file, parse_hash

DATA = b"rheo_nb hashes files in chunks\n" * 1000


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_parse_hash_accepts_every_algorithm(algorithm: str) -> None:
    hexdigest = hashlib.new(algorithm, DATA).hexdigest()
    expected = parse_hash(f"{algorithm}:{hexdigest}")
    assert expected == ExpectedHash(algorithm, hexdigest)
    assert str(expected) == f"{algorithm}:{hexdigest}"
    assert expected.new().name == algorithm


def test_parse_hash_normalises_case_spaces_and_dashes() -> None:
    hexdigest = hashlib.sha256(DATA).hexdigest()
    assert parse_hash(f"  SHA-256:{hexdigest.upper()} ") == ExpectedHash("sha256", hexdigest)


def test_a_bare_64_digit_hex_is_sha256() -> None:
    hexdigest = hashlib.sha256(DATA).hexdigest()
    assert parse_hash(hexdigest) == ExpectedHash("sha256", hexdigest)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("crc32:deadbeef", "unsupported hash algorithm 'crc32'"),
        ("sha256:abc", "expected 64 hex digits"),
        ("md5:" + "g" * 32, "malformed md5 digest"),
        ("abc", "expected 64 hex digits"),
        ("", "expected 64 hex digits"),
        ("sha1:" + "0" * 64, "expected 40 hex digits"),
    ],
)
def test_parse_hash_rejects_malformed_specs(spec: str, words: str) -> None:
    with pytest.raises(InvalidItemError, match=words):
        parse_hash(spec)


def test_parse_hash_rejects_non_strings() -> None:
    with pytest.raises(InvalidItemError, match="not bytes"):
        parse_hash(b"sha256:00")  # type: ignore[arg-type]


def test_hash_file_reads_the_whole_file_or_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(DATA * 50)  # over one read block
    assert hash_file(path, "sha256").hexdigest() == hashlib.sha256(DATA * 50).hexdigest()
    assert hash_file(path, "md5", 1234).hexdigest() == hashlib.md5(DATA[:1234]).hexdigest()
    assert hash_file(path, "sha1", 0).hexdigest() == hashlib.sha1(b"").hexdigest()
