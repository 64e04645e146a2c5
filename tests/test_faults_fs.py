"""Filesystem faults: a full disk, a destination that cannot be written, a directory or a
planted symlink where a file should go, and where temp files live.

A small tmpfs is mounted where the machine allows it (root on Linux); elsewhere a full
disk is simulated by an ``OSError(ENOSPC)`` from the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import leftovers, part_size, text_of, until
from server import FAST, Server

import rheo_nb
from rheo_nb import DestinationError, File, Status, files, partfile
from rheo_nb.segments import MIN_SEGMENT


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m", *, readonly: bool = False) -> Iterator[bool]:
    """Mount a tmpfs at ``path``; yields False (nothing mounted) where that is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
            capture_output=True,
            timeout=10,
            check=False,
        )
        mounted = done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(
                ["umount", "-l", str(path)], capture_output=True, timeout=10, check=False
            )


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A destination with 1 MiB of room."""
    path = tmp_path / "small"
    with tmpfs(path) as mounted:
        if not mounted:
            real_write = partfile.write_all
            real_fallocate = os.posix_fallocate

            def full_write(fd: int, chunks: list[bytes], *args: Any) -> int:
                if os.fstat(fd).st_size + sum(map(len, chunks)) > 1 << 20:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_write(fd, chunks, *args)

            def full_fallocate(fd: int, offset: int, length: int) -> None:
                if length > 1 << 20:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real_fallocate(fd, offset, length)

            monkeypatch.setattr(partfile, "write_all", full_write)
            monkeypatch.setattr(os, "posix_fallocate", full_fallocate)
        yield path


# --- a full disk ----------------------------------------------------------------------------------


async def test_a_full_disk_fails_that_file_cleanly_and_the_next_one_fits(
    server: Server, small_disk: Path
) -> None:
    big, small = server.url("big.bin", 3 << 20), server.url("small.bin", 10_000)
    res = await fetch([big, small], small_disk, concurrency=1, chunk_size=1 << 16)
    full, fits = res
    assert full.status is Status.FAILED
    assert full.error is not None
    assert "No space left on device" in full.error
    assert server.count("big.bin") == 1  # a full disk is not worth another attempt
    assert not (small_disk / "big.bin").exists()
    assert fits.status is Status.COMPLETED
    assert (small_disk / "small.bin").read_bytes() == server.content("small.bin", 10_000)
    assert leftovers(small_disk) == ["small.bin"]


async def test_a_full_disk_shows_at_once_for_a_segmented_download(
    server: Server, small_disk: Path
) -> None:
    size = 2 * MIN_SEGMENT
    res = await fetch([server.route_url("ranged", "huge.bin", size)], small_disk)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "No space left on device" in res[0].error
    assert not (small_disk / "huge.bin").exists()
    assert leftovers(small_disk) == []


# --- a destination that cannot be written ---------------------------------------------------------


async def test_a_read_only_destination_fails_before_any_request(
    server: Server, tmp_path: Path
) -> None:
    ro = tmp_path / "ro"
    with tmpfs(ro, readonly=True) as mounted:
        if not mounted:
            pytest.skip("cannot mount a read-only tmpfs here")
        with pytest.raises(DestinationError, match=r"cannot write there \(read-only file system\)"):
            await fetch([server.url("x.bin")], ro)
    assert server.count() == 0


async def test_an_uncreatable_destination_fails_before_any_request(
    server: Server, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(DestinationError, match="a folder above it, is a file") as info:
        await fetch([server.url("x.bin")], tmp_path / "a-file" / "data")
    assert "cannot be the destination folder" in str(info.value)
    assert server.count() == 0


async def test_a_read_only_sub_folder_fails_its_files_only_and_sends_nothing_for_them(
    server: Server, dest: Path
) -> None:
    with tmpfs(dest / "ro", readonly=True) as mounted:
        if not mounted:
            pytest.skip("cannot mount a read-only tmpfs here")
        res = await fetch(
            [File(server.url("locked.bin"), "ro/locked.bin"), server.url("free.bin")], dest
        )
    locked, free = res
    assert locked.status is Status.FAILED
    assert locked.error is not None
    assert "Read-only file system" in locked.error
    assert server.count("locked.bin") == 0
    assert free.status is Status.COMPLETED


async def test_a_directory_at_the_final_path_fails_that_file_before_any_request(
    server: Server, dest: Path
) -> None:
    (dest / "dir.bin").mkdir()
    res = await fetch([server.url("dir.bin"), server.url("fine.bin")], dest, overwrite=True)
    bad, fine = res
    assert bad.status is Status.FAILED
    assert bad.error is not None
    assert "is a directory" in bad.error
    assert server.count("dir.bin") == 0
    assert (dest / "dir.bin").is_dir()
    assert fine.status is Status.COMPLETED


# --- planted symlinks -----------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside.txt"
    target.write_text("keep me")
    return target


@pytest.mark.parametrize("overwrite", [False, True])
async def test_a_symlink_at_the_final_path_is_never_followed_or_replaced(
    server: Server, dest: Path, outside: Path, overwrite: bool
) -> None:
    (dest / "link.bin").symlink_to(outside)
    res = await fetch([server.url("link.bin")], dest, overwrite=overwrite)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "symbolic link" in res[0].error
    assert text_of(outside) == "keep me"
    assert (dest / "link.bin").is_symlink()
    assert server.count("link.bin") == 0


@pytest.mark.parametrize(
    "planted",
    ["{name}.part", ".{name}.part.json", ".{name}.part.json.tmp", ".{name}.lock"],
    ids=["part", "sidecar", "sidecar-tmp", "lock"],
)
async def test_a_symlink_at_a_temp_path_is_never_followed(
    server: Server, dest: Path, outside: Path, planted: str
) -> None:
    name = "t.bin"
    (dest / planted.format(name=name)).symlink_to(outside)
    size = 300_000
    res = await fetch([server.url(name, size)], dest, chunk_size=1 << 16)
    assert text_of(outside) == "keep me"
    if res[0].status is Status.COMPLETED:
        assert not (dest / name).is_symlink()
        assert (dest / name).read_bytes() == server.content(name, size)
    else:  # refusing is safe too, as long as the message says why
        assert res[0].error is not None
        assert "symbolic links" in res[0].error


# --- temp files live beside the destination -------------------------------------------------------


async def test_the_part_file_lives_beside_the_final_path_on_the_same_device(
    server: Server, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing may go through the system temp folder: a rename from there would be a copy.
    monkeypatch.setattr(tempfile, "tempdir", str(dest / "no-such-folder"))
    url = server.url("deep.bin", 400_000, rate=1_000_000)
    final = dest / "sub" / "deeper" / "deep.bin"
    task = asyncio.create_task(fetch([File(url, "sub/deeper/deep.bin")], dest, chunk_size=4096))
    await until(lambda: part_size(final) > 0)
    part = files.working_path(final, ".part")
    assert part.parent == final.parent / files.WORKDIR  # the folder's own working folder
    assert part.stat().st_dev == final.parent.stat().st_dev
    res = await asyncio.wait_for(task, 20)
    assert res[0].status is Status.COMPLETED
    assert final.read_bytes() == server.content("deep.bin", 400_000)
    assert leftovers(dest) == ["sub", "sub/deeper", "sub/deeper/deep.bin"]
