"""Issue 9, defect family 1: names.

A download's working files (temporary bytes, resume record, lock) must never share a name
with another download's final file or with a caller's path, and the longest legal names
must leave room for them. Every test here looks only at final files and outcomes: where the
working files live is the transfer's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faults import interrupt_after
from server import FAST, Server

import rheo_nb
from rheo_nb import File, Status

MiB = 1 << 20


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


def assert_on_disk(res: rheo_nb.Results, expected: dict[str, bytes], dest: Path) -> None:
    """Every outcome is ok, and every named file holds its own bytes."""
    assert [(o.path.name, o.status) for o in res if not o.ok] == []
    said = {o.path.name: o.status for o in res}
    for name, data in expected.items():
        path = dest / name
        assert path.is_file(), f"{name} is not on disk; the outcomes say {said}"
        assert path.read_bytes() == data, f"{name} does not hold its own bytes"


# --- a final name that is another download's working name -------------------------------------


async def test_x_and_x_part_in_one_call_both_end_on_disk(server: Server, dest: Path) -> None:
    # One at a time, x.bin.part first: it is complete when x.bin starts writing.
    res = await fetch([server.url("x.bin.part"), server.url("x.bin")], dest, concurrency=1)
    assert_on_disk(
        res,
        {"x.bin.part": server.content("x.bin.part"), "x.bin": server.content("x.bin")},
        dest,
    )


async def test_downloading_x_keeps_a_complete_x_part_from_an_earlier_call(
    server: Server, dest: Path
) -> None:
    first = await fetch([server.url("y.bin.part")], dest)
    assert first[0].status is Status.COMPLETED
    second = await fetch([server.url("y.bin")], dest)
    assert second[0].status is Status.COMPLETED
    assert_on_disk(
        second,
        {"y.bin.part": server.content("y.bin.part"), "y.bin": server.content("y.bin")},
        dest,
    )


# --- caller paths named like a working file -------------------------------------------------------


async def test_caller_paths_like_lock_and_resume_record_beside_a_later_download_stay_on_disk(
    server: Server, dest: Path
) -> None:
    items = [
        File(server.url("lock-owner.bin"), ".z.bin.lock"),
        File(server.url("meta-owner.bin"), ".z.bin.part.json"),
        File(server.url("z.bin", 2 * MiB), "z.bin"),
    ]
    res = await fetch(items, dest, concurrency=1)
    assert_on_disk(
        res,
        {
            ".z.bin.lock": server.content("lock-owner.bin"),
            ".z.bin.part.json": server.content("meta-owner.bin"),
            "z.bin": server.content("z.bin", 2 * MiB),
        },
        dest,
    )


async def test_caller_paths_like_lock_and_resume_record_of_a_running_download_stay_on_disk(
    server: Server, dest: Path
) -> None:
    # w.bin is large enough to keep a resume record and slow enough to be running while
    # the two other files are looked at.
    items = [
        File(server.url("w.bin", 2 * MiB, rate=4 * MiB), "w.bin"),
        File(server.url("lock-owner.bin", delay=0.2), ".w.bin.lock"),
        File(server.url("meta-owner.bin", delay=0.2), ".w.bin.part.json"),
    ]
    res = await fetch(items, dest, concurrency=8)
    assert_on_disk(
        res,
        {
            "w.bin": server.content("w.bin", 2 * MiB),
            ".w.bin.lock": server.content("lock-owner.bin"),
            ".w.bin.part.json": server.content("meta-owner.bin"),
        },
        dest,
    )


# --- long names -----------------------------------------------------------------------------------

#: The last segment of a URL: 250 bytes, more than a working name can add to and stay
#: under the 255-byte limit of most filesystems.
LONG_URL_NAME = "n" * 246 + ".bin"
#: A caller's path whose one component is as long as a name can be.
LONGEST_PATH = "p" * 251 + ".bin"


async def test_a_url_name_of_250_bytes_downloads(server: Server, dest: Path) -> None:
    # Over chunk_size: the download keeps a resume record as it goes.
    res = await fetch([server.url(LONG_URL_NAME, 2 * MiB)], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert res[0].path.parent.name == dest.name
    assert isinstance(res[0].path, Path)
    assert res[0].path.read_bytes() == server.content(LONG_URL_NAME, 2 * MiB)


async def test_a_url_name_of_250_bytes_resumes_after_an_interrupt(
    server: Server, dest: Path
) -> None:
    url = server.route_url("slowstart", LONG_URL_NAME, 2 * MiB, rate=MiB)
    await interrupt_after([url], dest, 1_300_000, **FAST)
    res = await fetch([url], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert isinstance(res[0].path, Path)
    assert res[0].path.read_bytes() == server.content(LONG_URL_NAME, 2 * MiB)
    rerun = server.requests(LONG_URL_NAME)[-1]
    assert rerun.headers.get("Range", "").startswith("bytes="), (
        "the rerun started again from zero: "
        f"{[r.headers.get('Range') for r in server.requests(LONG_URL_NAME)]}"
    )
    assert int(rerun.headers["Range"].removeprefix("bytes=").partition("-")[0]) >= 1_000_000


async def test_a_caller_path_of_255_bytes_downloads(server: Server, dest: Path) -> None:
    res = await fetch([File(server.url("longest.bin", 2 * MiB), LONGEST_PATH)], dest)
    assert res[0].status is Status.COMPLETED, res[0].error
    assert (dest / LONGEST_PATH).read_bytes() == server.content("longest.bin", 2 * MiB)
