"""The part file and its resume record: open, append, write at, finish, keep, discard."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from rheo_nb import files, partfile
from rheo_nb.errors import DestinationError, IntegrityError
from rheo_nb.hashing import ExpectedHash
from rheo_nb.partfile import PartFile, Partial, Record


def make(tmp_path: Path, name: str = "x.bin") -> PartFile:
    final = tmp_path / name
    files.ensure_parent(tmp_path, final)
    return PartFile(final)


def sha256(data: bytes) -> ExpectedHash:
    return ExpectedHash("sha256", hashlib.sha256(data).hexdigest())


def test_url_key_hides_the_url() -> None:
    key = partfile.url_key("https://u:secret@example.org/x?token=abc")
    assert "secret" not in key
    assert "abc" not in key
    assert key == partfile.url_key("https://u:secret@example.org/x?token=abc")
    assert key != partfile.url_key("https://example.org/x")


def test_a_record_round_trips_through_its_file(tmp_path: Path) -> None:
    part = make(tmp_path)
    record = Record("k" * 32, '"etag"', 1000, [[0, 10, 3]])
    part.open(0, record)
    part.append([b"abc"])
    part.close()
    assert PartFile(part.final).read() == Partial(3, record)


def test_read_without_a_part_file_is_none(tmp_path: Path) -> None:
    assert make(tmp_path).read() is None


def test_read_with_an_unreadable_record_keeps_only_the_size(tmp_path: Path) -> None:
    part = make(tmp_path)
    part.path.write_bytes(b"abcd")
    part.record_path.write_text("{not json")
    found = part.read()
    assert found == Partial(4)
    assert found.usable_for("https://example.org/x") is None


def test_read_ignores_a_part_that_is_not_a_regular_file(tmp_path: Path) -> None:
    part = make(tmp_path)
    part.path.symlink_to(tmp_path / "elsewhere")
    assert part.read() == Partial(0)


def test_a_partial_is_usable_only_for_its_own_url_with_a_validator(tmp_path: Path) -> None:
    url = "https://example.org/x"
    assert Partial(3, Record(partfile.url_key(url), '"e"')).usable_for(url) is not None
    assert Partial(3, Record(partfile.url_key(url), None)).usable_for(url) is None
    assert Partial(0, Record(partfile.url_key(url), '"e"')).usable_for(url) is None
    assert Partial(3, Record(partfile.url_key("https://other/x"), '"e"')).usable_for(url) is None


def test_open_truncates_at_the_offset(tmp_path: Path) -> None:
    part = make(tmp_path)
    part.path.write_bytes(b"0123456789")
    part.open(4, None)
    part.append([b"ab", b"cd"])
    part.close()
    assert part.path.read_bytes() == b"0123abcd"
    assert part.size == 8


def test_open_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    part = make(tmp_path)
    part.path.symlink_to(victim)
    part.open(0, None)
    part.append([b"new"])
    part.close()
    assert victim.read_text() == "keep me"
    assert not part.path.is_symlink()
    assert part.path.read_bytes() == b"new"


def test_write_all_writes_every_chunk_and_feeds_the_hasher(tmp_path: Path) -> None:
    chunks = [os.urandom(n) for n in (1, 70_000, 0, 3, 200_000)]
    hasher = hashlib.sha256()
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        assert partfile.write_all(fd, chunks, hasher) == sum(map(len, chunks))
    finally:
        os.close(fd)
    data = b"".join(chunks)
    assert (tmp_path / "out").read_bytes() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


def test_finish_of_a_small_file_writes_verifies_and_renames_in_one_step(tmp_path: Path) -> None:
    part = make(tmp_path)
    part.hasher = hashlib.sha256()
    assert part.finish([b"hello ", b"world"], 11, sha256(b"hello world"), part.final) == 11
    assert part.final.read_bytes() == b"hello world"
    assert not part.path.exists()
    assert not part.record_path.exists()


def test_finish_replaces_an_older_file_and_drops_the_record(tmp_path: Path) -> None:
    part = make(tmp_path)
    part.final.write_bytes(b"old")
    part.open(0, Record("k"))
    part.append([b"new"])
    part.finish([], 3, None, part.final)
    assert part.final.read_bytes() == b"new"
    assert sorted(p.name for p in (tmp_path / files.WORKDIR).iterdir()) == []


def test_finish_refuses_a_wrong_length_or_hash_and_leaves_the_final_path_alone(
    tmp_path: Path,
) -> None:
    part = make(tmp_path)
    with pytest.raises(IntegrityError, match="expected 5 bytes, received 3"):
        part.finish([b"abc"], 5, None, part.final)
    assert not part.final.exists()
    part = make(tmp_path, "y.bin")
    part.hasher = hashlib.sha256()
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        part.finish([b"abc"], 3, sha256(b"abd"), part.final)
    assert not part.final.exists()


def test_keep_writes_the_record_and_discard_removes_everything(tmp_path: Path) -> None:
    part = make(tmp_path)
    part.open(0, None)
    part.append([b"abc"])
    part.keep(Record("k", '"e"', 10))
    assert PartFile(part.final).read() == Partial(3, Record("k", '"e"', 10))
    part.discard()
    part.discard()  # twice is fine
    assert list((tmp_path / files.WORKDIR).iterdir()) == []


def test_keep_without_a_record_drops_this_runs_bytes(tmp_path: Path) -> None:
    part = make(tmp_path)
    part.open(0, None)
    part.append([b"abc"])
    part.keep(None)
    assert PartFile(part.final).read() is None


def test_keep_leaves_an_earlier_runs_partial_that_this_run_never_touched(tmp_path: Path) -> None:
    earlier = make(tmp_path)
    earlier.open(0, Record("k", '"e"', 10))
    earlier.append([b"abc"])
    earlier.close()
    now = PartFile(earlier.final)
    now.keep(None)  # a run that failed before writing anything
    assert PartFile(earlier.final).read() == Partial(3, Record("k", '"e"', 10))


def test_rehash_stops_when_asked(tmp_path: Path) -> None:
    part = make(tmp_path)
    part.open(0, None)
    part.append([b"x" * (4 << 20)])
    part.close()
    stop = threading.Event()
    stop.set()
    with pytest.raises(Exception, match="interrupted"):
        part.rehash(ExpectedHash("sha256", "0" * 64), stop)


def test_an_os_error_becomes_a_destination_error(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "missing-folder" / "x.bin")
    with pytest.raises(DestinationError, match="cannot write the file") as info:
        part.open(0, None)
    assert not info.value.transient


def test_running_out_of_descriptors_is_transient() -> None:
    error = partfile.destination_error(OSError(24, "Too many open files"))
    assert error.transient
