"""Safe, atomic, idempotent extraction, against archives built here with zipfile/tarfile.

Hostile archives (traversal, absolute names, links out, devices, bombs, overlapping zip
entries, NUL in names) must fail with the member and the reason, and leave nothing behind.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import assume, given
from hypothesis import strategies as st

from rheo_nb import DownloadError, ExtractError, RheoNbError
from rheo_nb.extract import (
    MAX_FILES,
    SIZE_FLOOR,
    SIZE_RATIO,
    WORK_DIR,
    ExtractProgress,
    archive_kind,
    default_target,
    extract,
    member_parts,
    recorded,
    size_limit,
)

# A member: (kind, name, data or link target, mode)
Member = tuple[str, str, "bytes | str", int]


def f(name: str, data: bytes = b"", mode: int = 0o644) -> Member:
    return ("file", name, data, mode)


def d(name: str) -> Member:
    return ("dir", name, b"", 0o755)


def sym(name: str, target: str) -> Member:
    return ("sym", name, target, 0o777)


def hard(name: str, target: str) -> Member:
    return ("hard", name, target, 0o644)


def special(kind: str, name: str) -> Member:
    return (kind, name, b"", 0o644)


_TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "sym": tarfile.SYMTYPE,
    "hard": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_bytes(members: Iterable[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1_700_000_000
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = _TAR_TYPES[kind]
            if kind in ("sym", "hard"):
                assert isinstance(data, str)
                info.linkname = data
            tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gz":
        return gzip.compress(data, mtime=0)
    if how == "bz2":
        return bz2.compress(data)
    if how == "xz":
        return lzma.compress(data)
    if how == "zst":
        return zstandard.ZstdCompressor().compress(data)
    assert how == "", how
    return data


def make_tar(path: Path, members: Iterable[Member], how: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress(tar_bytes(members), how))
    return path


_ZIP_TYPES = {"sym": stat.S_IFLNK, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}


def make_zip(path: Path, members: Iterable[Member]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)  # hostile on purpose
        for kind, name, data, mode in members:
            info = zipfile.ZipInfo(name + ("/" if kind == "dir" else ""), (2024, 1, 2, 3, 4, 6))
            info.create_system = 3
            info.compress_type = zipfile.ZIP_DEFLATED
            ftype = {"file": stat.S_IFREG, "dir": stat.S_IFDIR}.get(kind) or _ZIP_TYPES[kind]
            info.external_attr = (ftype | mode) << 16
            payload = data.encode() if isinstance(data, str) else data
            zf.writestr(info, payload)
    return path


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files as their text, links as '-> target', folders '/'."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "/"
            else:
                out[rel] = p.read_bytes().decode(errors="replace")
    return out


def leftovers(folder: Path) -> list[str]:
    """Working files of rheo_nb that a finished extraction must not leave (temp folders)."""
    work = folder / WORK_DIR
    if not work.exists():
        return []
    return sorted(p.name for p in work.iterdir() if p.suffix in (".tmp", ".old"))


SAMPLE = [
    d("sub"),
    f("a.csv", b"x,y\n1,2\n"),
    f("sub/b.txt", b"hello"),
    f("run.sh", b"#!/bin/sh\n", 0o755),
    sym("sub/link", "b.txt"),
]
EXPECTED = {
    "a.csv": "x,y\n1,2\n",
    "run.sh": "#!/bin/sh\n",
    "sub": "/",
    "sub/b.txt": "hello",
    "sub/link": "-> b.txt",
}


# --- formats and names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "how", "kind"),
    [
        ("train.tar", "", "tar"),
        ("train.tar.gz", "gz", "tar.gz"),
        ("train.tgz", "gz", "tar.gz"),
        ("train.tar.bz2", "bz2", "tar.bz2"),
        ("train.tar.xz", "xz", "tar.xz"),
        ("train.tar.zst", "zst", "tar.zst"),
    ],
)
def test_every_tar_kind_extracts_beside_the_archive(
    tmp_path: Path, name: str, how: str, kind: str
) -> None:
    archive = make_tar(tmp_path / "data" / name, SAMPLE, how)
    assert archive_kind(archive) == kind
    result = extract(archive)
    assert result.target == tmp_path / "data" / "train"
    assert (result.kind, result.members, result.skipped) == (kind, 5, False)
    assert result.bytes == sum(len(m[2]) for m in SAMPLE if m[0] == "file")
    assert tree(result.target) == EXPECTED
    assert archive.exists()  # the archive is kept unless asked otherwise
    assert leftovers(archive.parent) == []


def test_zip_extracts_with_links_folders_and_modes(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data" / "train.zip", SAMPLE)
    assert archive_kind(archive) == "zip"
    result = extract(archive)
    assert result.target == tmp_path / "data" / "train"
    assert tree(result.target) == EXPECTED
    assert os.stat(result.target / "run.sh").st_mode & 0o100
    assert not os.stat(result.target / "a.csv").st_mode & 0o111


@pytest.mark.parametrize("how", ["gz", "bz2", "xz", "zst"])
def test_single_compressed_file_becomes_the_name_without_suffix(tmp_path: Path, how: str) -> None:
    archive = tmp_path / "data" / f"table.csv.{how}"
    archive.parent.mkdir()
    archive.write_bytes(compress(b"a,b\n" * 1000, how))
    assert archive_kind(archive) == how
    result = extract(archive)
    assert result.target == tmp_path / "data" / "table.csv"
    assert result.target.read_bytes() == b"a,b\n" * 1000
    assert (result.members, result.bytes) == (1, 4000)


def test_kind_comes_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    disguised = make_tar(tmp_path / "download", SAMPLE, "gz")
    assert archive_kind(disguised) == "tar.gz"
    assert extract(disguised).target == tmp_path / "download.extracted"
    liar = make_zip(tmp_path / "fake.tar.gz", SAMPLE)
    assert archive_kind(liar) == "zip"
    assert tree(extract(liar).target) == EXPECTED
    plain = tmp_path / "notes.tar.gz"
    plain.write_bytes(b"just text, no archive at all\n" * 30)
    assert archive_kind(plain) is None
    with pytest.raises(ExtractError, match="not an archive"):
        extract(plain)


@pytest.mark.parametrize(
    ("name", "kind", "target"),
    [
        ("data/train.tar.gz", "tar.gz", "data/train"),
        ("data/TRAIN.TGZ", "tar.gz", "data/TRAIN"),
        ("data/x.tar.bz2", "tar.bz2", "data/x"),
        ("data/x.tbz2", "tar.bz2", "data/x"),
        ("data/x.txz", "tar.xz", "data/x"),
        ("data/x.tar.zst", "tar.zst", "data/x"),
        ("data/x.zip", "zip", "data/x"),
        ("data/x.csv.gz", "gz", "data/x.csv"),
        ("data/x.tar.gz", "gz", "data/x.tar"),  # gzip of something that is no tar
        ("data/x.jar", "zip", "data/x.jar.extracted"),
        ("data/.tar.gz", "tar.gz", "data/.tar.gz.extracted"),
    ],
)
def test_default_target(name: str, kind: str, target: str) -> None:
    assert default_target(name, kind) == Path(target)


def test_size_limit_default_is_a_multiple_with_a_floor() -> None:
    assert size_limit(1000) == SIZE_FLOOR
    assert size_limit(100 << 20) == SIZE_RATIO * (100 << 20)
    assert size_limit(100 << 20, max_size=5) == 5
    assert (SIZE_RATIO, SIZE_FLOOR, MAX_FILES) == (100, 1 << 30, 1_000_000)


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("a/b.txt", ("a", "b.txt")),
        ("./a//b/./c", ("a", "b", "c")),
        ("./", ()),
        ("a\\b", ("a", "b")),
    ],
)
def test_member_parts_keeps_names_inside(name: str, parts: tuple[str, ...]) -> None:
    assert member_parts(name) == parts


# --- hostile archives ---------------------------------------------------------------------------

HOSTILE_TAR = [
    pytest.param([f("../evil", b"x")], "../evil", "outside the target", id="dotdot"),
    pytest.param([f("ok/../../evil", b"x")], "ok/../../evil", "outside", id="nested-dotdot"),
    pytest.param([f("ABS/evil", b"x")], "ABS/evil", "absolute", id="absolute"),
    pytest.param([sym("link", "ABS")], "link", "absolute path", id="symlink-absolute"),
    pytest.param([sym("link", "../..")], "link", "outside the target", id="symlink-up"),
    pytest.param(
        [d("sub"), sym("sub/link", "../../outside")], "sub/link", "outside", id="symlink-deep"
    ),
    pytest.param([hard("h", "../outside/x")], "h", "hard link", id="hardlink-up"),
    pytest.param([hard("h", "ABS/x")], "h", "absolute", id="hardlink-absolute"),
    pytest.param([hard("h", "missing")], "h", "not a file extracted before it", id="hardlink-nx"),
    pytest.param([d("dir"), hard("h", "dir")], "h", "not a file extracted", id="hardlink-dir"),
    pytest.param([sym("a", "."), f("a/x", b"x")], "a/x", "inside the symbolic link", id="via-link"),
    pytest.param([sym("a", "."), sym("b", "a/..")], "b", "outside the target", id="link-chain"),
    pytest.param([sym("a", "."), sym("a/b", "..")], "a/b", "inside the symbolic link", id="nest"),
    pytest.param([special("chr", "tty")], "tty", "device", id="char-device"),
    pytest.param([special("blk", "sda")], "sda", "device", id="block-device"),
    pytest.param([special("fifo", "pipe")], "pipe", "FIFO", id="fifo"),
    pytest.param([f("x", b"1"), d("x")], "x", "both a folder and another member", id="file-dir"),
    pytest.param([f("x/y", b"1"), sym("x", ".")], "x", "share this name", id="dir-then-link"),
]


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """``tmp_path/outside`` must stay empty; archives go in ``tmp_path/data``."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def absolute(members: list[Member], sandbox: Path) -> list[Member]:
    """Point the ABS placeholder at the sandbox's ``outside`` folder."""
    out = str(sandbox / "outside")
    return [
        (k, n.replace("ABS", out), t.replace("ABS", out) if isinstance(t, str) else t, m)
        for k, n, t, m in members
    ]


def assert_refused_cleanly(sandbox: Path, archive: Path, member: str, words: str) -> None:
    with pytest.raises(ExtractError, match=words) as info:
        extract(archive)
    assert info.value.member == member
    assert str(archive) in str(info.value)
    assert not (sandbox / "data" / "evil").exists()
    assert not default_target(archive, archive_kind(archive) or "").exists()
    assert os.listdir(sandbox / "outside") == []
    assert leftovers(archive.parent) == []
    assert sorted(os.listdir(archive.parent)) == sorted([archive.name, WORK_DIR])


@pytest.mark.parametrize(("members", "member", "words"), HOSTILE_TAR)
def test_hostile_tar_is_refused_and_leaves_nothing(
    sandbox: Path, members: list[Member], member: str, words: str
) -> None:
    members = absolute(members, sandbox)
    member = member.replace("ABS", str(sandbox / "outside"))
    archive = make_tar(sandbox / "data" / "evil.tar.gz", members, "gz")
    assert_refused_cleanly(sandbox, archive, member, words)


HOSTILE_ZIP = [
    pytest.param([f("../evil", b"x")], "../evil", "outside", id="dotdot"),
    pytest.param([f("..\\..\\evil", b"x")], "..\\..\\evil", "outside", id="backslash"),
    pytest.param([f("ABS/evil", b"x")], "ABS/evil", "absolute", id="absolute"),
    pytest.param([sym("link", "../../outside")], "link", "outside", id="symlink-up"),
    pytest.param([sym("link", "ABS")], "link", "absolute", id="symlink-absolute"),
    pytest.param([special("chr", "tty")], "tty", "device", id="device"),
    pytest.param([special("fifo", "p")], "p", "FIFO", id="fifo"),
]


@pytest.mark.parametrize(("members", "member", "words"), HOSTILE_ZIP)
def test_hostile_zip_is_refused_and_leaves_nothing(
    sandbox: Path, members: list[Member], member: str, words: str
) -> None:
    members = absolute(members, sandbox)
    member = member.replace("ABS", str(sandbox / "outside"))
    archive = make_zip(sandbox / "data" / "evil.zip", members)
    assert_refused_cleanly(sandbox, archive, member, words)


def test_a_nul_in_a_zip_name_is_refused(sandbox: Path) -> None:
    # zipfile cuts names at a NUL when reading: "evil.sh\0.txt" would pass as "evil.sh".
    archive = make_zip(sandbox / "data" / "evil.zip", [f("ok.txt", b"1"), f("evil.shX.txt", b"2")])
    raw = archive.read_bytes()
    assert raw.count(b"evil.shX.txt") == 2  # local header and central directory
    archive.write_bytes(raw.replace(b"evil.shX.txt", b"evil.sh\0.txt"))
    assert_refused_cleanly(sandbox, archive, "evil.sh\0.txt", "NUL")


def test_a_nul_in_a_tar_name_is_refused(sandbox: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"path": "evil.sh\0.txt"}
        info.size = 1
        tar.addfile(info, io.BytesIO(b"z"))
    archive = sandbox / "data" / "evil.tar"
    archive.write_bytes(buf.getvalue())
    assert_refused_cleanly(sandbox, archive, "evil.sh\0.txt", "NUL")


def overlapping_zip(path: Path) -> Path:
    """Two members whose bytes overlap: the first, stored, quotes the second's local
    header and data (the layout that lets a few KB of zip expand to gigabytes)."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("b.bin", b"\0" * 100_000)
    inner_zip = zipfile.ZipFile(io.BytesIO(inner.getvalue()))
    b_info = inner_zip.infolist()[0]
    local_b = inner.getvalue()[: inner_zip.start_dir]  # b's local header and data
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.bin", local_b)
    outer = zipfile.ZipFile(io.BytesIO(out.getvalue()))
    a_info = outer.infolist()[0]
    data = out.getvalue()[: outer.start_dir]
    b_offset = 30 + len(b"a.bin")  # b's local header starts inside a's data
    cd = io.BytesIO()
    for info, offset in ((a_info, 0), (b_info, b_offset)):
        name = info.filename.encode()
        cd.write(
            b"PK\x01\x02"
            + bytes([20, 3, 20, 0])
            + info.flag_bits.to_bytes(2, "little")
            + info.compress_type.to_bytes(2, "little")
            + (0).to_bytes(4, "little")
            + info.CRC.to_bytes(4, "little")
            + info.compress_size.to_bytes(4, "little")
            + info.file_size.to_bytes(4, "little")
            + len(name).to_bytes(2, "little")
            + bytes(8)
            + ((stat.S_IFREG | 0o644) << 16).to_bytes(4, "little")
            + offset.to_bytes(4, "little")
            + name
        )
    cd_bytes = cd.getvalue()
    eocd = (
        b"PK\x05\x06"
        + bytes(4)
        + (2).to_bytes(2, "little") * 2
        + len(cd_bytes).to_bytes(4, "little")
        + len(data).to_bytes(4, "little")
        + bytes(2)
    )
    path.write_bytes(data + cd_bytes + eocd)
    return path


def test_a_zip_with_overlapping_members_is_refused(sandbox: Path) -> None:
    archive = overlapping_zip(sandbox / "data" / "overlap.zip")
    with zipfile.ZipFile(archive) as zf:  # zipfile itself reads both members happily
        assert [len(zf.read(n)) for n in zf.namelist()] == [len(zf.read("a.bin")), 100_000]
    assert_refused_cleanly(sandbox, archive, "b.bin", "overlap")


def test_setuid_setgid_and_world_writable_bits_never_land(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "modes.tar",
        [f("suid", b"x", 0o4755), f("sgid", b"x", 0o2777), f("sticky", b"x", 0o1666)],
    )
    target = extract(archive).target
    for name in ("suid", "sgid", "sticky"):
        mode = os.stat(target / name).st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH), name
    assert os.stat(target / "suid").st_mode & 0o100


def test_links_inside_the_target_are_kept(tmp_path: Path) -> None:
    members = [
        d("a"),
        f("a/data.bin", b"payload"),
        hard("hard.bin", "a/data.bin"),
        sym("a/up", ".."),
        sym("rel", "a/data.bin"),
    ]
    target = extract(make_tar(tmp_path / "links.tar", members)).target
    assert (target / "hard.bin").read_bytes() == b"payload"
    assert os.stat(target / "hard.bin").st_ino == os.stat(target / "a/data.bin").st_ino
    assert (target / "rel").read_bytes() == b"payload"
    assert os.path.realpath(target / "a" / "up") == os.path.realpath(target)


def test_a_later_member_of_the_same_name_wins_as_in_tar(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "dup.tar", [f("x", b"old"), f("x", b"new")])
    assert (extract(archive).target / "x").read_bytes() == b"new"


# --- caps: bombs stop at the cap with flat memory ----------------------------------------------


def gzip_bomb(path: Path, size: int) -> Path:
    """A gzip of ``size`` zero bytes, about 1000 times smaller, written in chunks."""
    with gzip.open(path, "wb", compresslevel=9) as out:
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(block)
    return path


def tar_bomb(path: Path, size: int) -> Path:
    """A tar.gz holding one member of ``size`` zero bytes, streamed, never in memory."""

    class Zeros(io.RawIOBase):
        def __init__(self, n: int) -> None:
            self.left = n

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros(size)))
    return path


def zip_bomb(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("zeros.bin", "w", force_zip64=True) as out:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                out.write(block)
    return path


def measure(fn: Callable[[], object]) -> tuple[BaseException | None, int]:
    """Run ``fn``; its exception (if any) and the peak of Python allocations meanwhile."""
    tracemalloc.start()
    try:
        fn()
        error: BaseException | None = None
    except BaseException as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize("make", [gzip_bomb, tar_bomb, zip_bomb], ids=["gz", "tar.gz", "zip"])
def test_a_1000_to_1_bomb_stops_at_the_cap_with_flat_memory(
    tmp_path: Path, make: Callable[[Path, int], Path]
) -> None:
    archive = make(tmp_path / "bomb", 200 << 20)
    ratio = (200 << 20) / archive.stat().st_size
    assert ratio > 900  # a 1000:1 bomb
    target = tmp_path / "out"
    seen: list[ExtractProgress] = []
    error, peak = measure(lambda: extract(archive, target, max_size=20 << 20, progress=seen.append))
    assert isinstance(error, ExtractError)
    assert "max_extract_size" in str(error)
    assert error.member is not None
    assert peak < 8 << 20  # a few chunks of 1 MiB, not the 200 MiB the bomb holds
    assert max(p.bytes for p in seen) <= 20 << 20
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_a_declared_size_over_the_cap_fails_before_writing(tmp_path: Path) -> None:
    members = [f("small", b"x" * 10), f("big", bytes(40 << 20))]
    archive = make_tar(tmp_path / "big.tar.gz", members, "gz")
    seen: list[ExtractProgress] = []
    with pytest.raises(ExtractError, match="max_extract_size") as info:
        extract(archive, max_size=20 << 20, progress=seen.append)
    assert info.value.member == "big"
    assert max(p.bytes for p in seen) == 10  # streaming to the cap would report 16 MiB


def test_a_zip_that_lies_about_its_sizes_fails(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "liar.zip", [f("x.bin", b"A" * 10_000)])
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[0]
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (100).to_bytes(4, "little")  # "100 bytes", it says
    raw[22:26] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    assert info.file_size == 10_000
    with pytest.raises(ExtractError, match=r"unreadable archive \(Bad CRC-32"):
        extract(archive)
    assert not (tmp_path / "liar").exists()


@pytest.mark.parametrize("maker", [make_tar, make_zip], ids=["tar", "zip"])
def test_member_count_is_capped(tmp_path: Path, maker: Callable[..., Path]) -> None:
    archive = maker(tmp_path / "many.x", [f(f"f{i}", b"1") for i in range(11)])
    with pytest.raises(ExtractError, match="more than 10 members"):
        extract(archive, tmp_path / "out", max_files=10)
    assert extract(archive, tmp_path / "out", max_files=11).members == 11


def test_a_tar_header_over_a_mib_is_refused_with_flat_memory(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"comment": "z" * (8 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    archive = tmp_path / "header.tar.gz"
    archive.write_bytes(gzip.compress(buf.getvalue()))
    error, peak = measure(lambda: extract(archive))
    assert isinstance(error, ExtractError)
    assert "header over 1 MiB" in str(error)
    assert peak < 6 << 20


def test_memory_stays_flat_as_tar_members_grow(tmp_path: Path) -> None:
    """tarfile remembers every header it reads; extraction must not keep them."""

    def peak(n: int) -> int:
        archive = make_tar(tmp_path / f"many{n}.tar.gz", [f(f"f{i}") for i in range(n)], "gz")
        error, peak = measure(lambda: extract(archive))
        assert error is None
        return peak

    small, large = peak(400), peak(2400)
    assert large - small < 300 << 10  # keeping 2000 more headers would cost about 1 MiB


@pytest.mark.slow
def test_default_cap_stops_a_bomb_over_the_floor(tmp_path: Path) -> None:
    archive = gzip_bomb(tmp_path / "bomb.gz", SIZE_FLOOR + (64 << 20))
    assert size_limit(archive.stat().st_size) == SIZE_FLOOR
    error, peak = measure(lambda: extract(archive))
    assert isinstance(error, ExtractError)
    assert f"more than {SIZE_FLOOR:,} bytes" in str(error)
    assert peak < 8 << 20
    assert not (tmp_path / "bomb").exists()
    assert leftovers(tmp_path) == []


# --- atomic and idempotent ------------------------------------------------------------------


def test_a_rerun_skips_a_completed_extraction(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "train.tar.gz", SAMPLE, "gz")
    first = extract(archive)
    stamp = os.stat(first.target / "a.csv")
    again = extract(archive)
    assert again.skipped
    assert (again.target, again.kind, again.members, again.bytes) == (
        first.target,
        first.kind,
        first.members,
        first.bytes,
    )
    assert os.stat(first.target / "a.csv").st_ino == stamp.st_ino
    record = json.loads(next((tmp_path / WORK_DIR).glob("extract-*.json")).read_text())
    assert len(record["sha256"]) == 64
    assert record["size"] == archive.stat().st_size
    assert record["archive"] == "train.tar.gz"


def test_the_record_keeps_the_digests_asked_for_and_answers_for_its_own_archive(
    tmp_path: Path,
) -> None:
    archive = make_tar(tmp_path / "x.tar.gz", SAMPLE, "gz")
    data = archive.read_bytes()
    extract(archive, remove=True, hashes=("md5",))
    found = recorded(tmp_path / "x.tar.gz")
    assert found is not None
    target, size, digests = found
    assert (target, size) == (tmp_path / "x", len(data))
    assert digests == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }
    # x.zip would extract into x/ too, but x/ is not what x.zip became.
    assert recorded(tmp_path / "x.zip") is None


def test_a_rerun_adds_a_digest_the_record_lacks(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "x.tar", SAMPLE)
    extract(archive)
    assert extract(archive, hashes=("sha1",)).skipped
    found = recorded(archive)
    assert found is not None
    assert found[2]["sha1"] == hashlib.sha1(archive.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="crc32"):
        extract(archive, hashes=("crc32",))


def test_a_touched_archive_with_the_same_bytes_still_skips(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "train.tar", SAMPLE)
    extract(archive)
    os.utime(archive, (1, 1))
    assert extract(archive).skipped


def test_a_changed_archive_replaces_the_earlier_extraction(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "train.tar", SAMPLE)
    extract(archive)
    make_tar(archive, [f("new.csv", b"v2")])
    result = extract(archive)
    assert not result.skipped
    assert tree(result.target) == {"new.csv": "v2"}
    assert leftovers(tmp_path) == []


def test_a_deleted_target_is_extracted_again(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "train.tar", SAMPLE)
    target = extract(archive).target
    for p in sorted(target.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
    target.rmdir()
    assert not extract(archive).skipped
    assert tree(target) == EXPECTED


def test_a_folder_that_is_not_ours_is_never_replaced(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "train.tar", SAMPLE)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mine.txt").write_text("my notes")
    with pytest.raises(ExtractError, match="not extracted from this archive"):
        extract(archive)
    assert tree(tmp_path / "train") == {"mine.txt": "my notes"}


def test_a_symlinked_target_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "train.tar", SAMPLE)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "train").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ExtractError, match="symbolic link"):
        extract(archive)
    assert os.listdir(tmp_path / "elsewhere") == []


def test_extract_into_a_chosen_folder_and_remove_the_archive(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "data" / "bert.zip", SAMPLE)
    result = extract(archive, tmp_path / "data" / "models" / "bert", remove=True)
    assert result.target == tmp_path / "data" / "models" / "bert"
    assert tree(result.target) == EXPECTED
    assert not archive.exists()
    assert (tmp_path / "data" / "models" / WORK_DIR).is_dir()


def test_a_refused_archive_is_kept_even_with_remove(sandbox: Path) -> None:
    archive = make_tar(sandbox / "data" / "evil.tar", [f("../evil", b"x")])
    with pytest.raises(ExtractError):
        extract(archive, remove=True)
    assert archive.exists()


def test_progress_counts_members_and_an_exception_in_it_cancels(tmp_path: Path) -> None:
    members = [f(f"f{i}.bin", bytes(1000)) for i in range(20)]
    archive = make_zip(tmp_path / "p.zip", members)
    seen: list[ExtractProgress] = []
    extract(archive, tmp_path / "one", progress=seen.append)
    counted = [p for p in seen if p.members]
    assert [p.members for p in counted] == list(range(1, 21))
    assert {p.total for p in counted} == {20}
    assert counted[-1].bytes == 20_000

    class Stop(Exception):
        pass

    def stop_at_ten(p: ExtractProgress) -> None:
        if p.members == 10:
            raise Stop

    with pytest.raises(Stop):
        extract(archive, tmp_path / "two", progress=stop_at_ten)
    assert not (tmp_path / "two").exists()
    assert leftovers(tmp_path) == []
    assert extract(archive, tmp_path / "two").members == 20  # and a rerun does it all


def test_an_extraction_killed_midway_is_redone_from_scratch(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "slow.tar", [f(f"f{i}.bin", bytes(4096)) for i in range(50)])
    marker = tmp_path / "halfway"
    script = textwrap.dedent(
        f"""
        import pathlib, time
        from rheo_nb.extract import extract
        def slow(p):
            if p.members == 25:
                pathlib.Path({str(marker)!r}).touch()
                time.sleep(60)
        extract({str(archive)!r}, progress=slow)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert leftovers(tmp_path) != []  # a half-done temporary folder, never the target
    assert not (tmp_path / "slow").exists()
    result = extract(archive)
    assert result.members == 50
    assert not result.skipped
    assert len(os.listdir(result.target)) == 50
    assert leftovers(tmp_path) == []


def test_two_threads_extracting_one_archive_both_succeed(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "t.tar", [f(f"f{i}", bytes(10_000)) for i in range(100)])
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(extract(archive))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.skipped for r in results) == [False, True]
    assert len(os.listdir(tmp_path / "t")) == 100


def test_a_damaged_archive_fails_cleanly(tmp_path: Path) -> None:
    good = compress(tar_bytes([f(f"f{i}", os.urandom(5000)) for i in range(10)]), "gz")
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(good[: len(good) // 2])
    with pytest.raises(ExtractError, match="unreadable") as info:
        extract(archive)
    assert isinstance(info.value, DownloadError)
    assert isinstance(info.value, RheoNbError)
    assert not (tmp_path / "cut").exists()
    assert leftovers(tmp_path) == []


def test_zstd_without_the_package_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_tar(tmp_path / "t.tar.zst", SAMPLE, "zst")
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ExtractError, match=r"pip install 'rheo_nb\[zstd\]'"):
        extract(archive)
    assert not (tmp_path / "t").exists()


def test_a_missing_archive_is_an_extract_error(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="No such file"):
        extract(tmp_path / "nope.zip", label="https://example.org/nope.zip")


# --- property: nothing lands outside the target, whatever the members ------------------------

_names = st.lists(st.sampled_from(["a", "b", "..", ".", "ABS"]), min_size=1, max_size=4).flatmap(
    lambda parts: st.sampled_from(["/", "/", "/", "\\"]).map(lambda sep: sep.join(parts))
)
_members = st.lists(
    st.tuples(st.sampled_from(["file", "dir", "sym", "sym", "hard"]), _names, _names),
    min_size=1,
    max_size=6,
)


def _outside_entries(sandbox: Path, archive: Path, target: Path) -> list[str]:
    """Paths in the sandbox other than the archive, the target and the record and lock
    of the extraction."""
    bad = [str(p) for p in (sandbox / "outside").iterdir()]
    work = archive.parent / WORK_DIR
    for dirpath, dirnames, filenames in os.walk(sandbox / "data"):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p in (archive, work) or p == target or target in p.parents:
                continue
            if p.parent == work and p.suffix in (".json", ".lock"):
                continue
            bad.append(str(p))
    return bad


@given(members=_members, kind=st.sampled_from(["tar", "zip"]))
def test_extraction_never_writes_outside_the_target(
    members: list[tuple[str, str, str]], kind: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        (sandbox / "outside").mkdir()
        out = str(sandbox / "outside")
        built: list[Member] = []
        for mkind, name, link in members:
            name = name.replace("ABS", out)
            if mkind in ("sym", "hard"):
                if kind == "zip" and mkind == "hard":
                    mkind = "file"
                built.append((mkind, name, link.replace("ABS", out), 0o644))
            else:
                built.append((mkind, name, b"x", 0o644))
        maker = make_tar if kind == "tar" else make_zip
        try:
            archive = maker(sandbox / "data" / f"archive.{kind}", built)
        except (ValueError, OSError, tarfile.TarError):
            assume(False)  # an archive the library will not even write
            return
        target = sandbox / "data" / "archive"
        try:
            extract(archive)
        except ExtractError:
            assert not target.exists()
        assert _outside_entries(sandbox, archive, target) == []
        assert leftovers(archive.parent) == []
        if target.exists():
            root = os.path.realpath(target)
            for dirpath, dirnames, filenames in os.walk(target):
                for name in dirnames + filenames:
                    real = os.path.realpath(os.path.join(dirpath, name))
                    assert real == root or real.startswith(root + os.sep), (name, real)
