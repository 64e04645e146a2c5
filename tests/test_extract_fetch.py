"""Extraction as part of a download: ``fetch(..., extract=True)`` and ``File(extract=...)``
against a real server, with reruns, hostile archives, cancels, events and offline mode.

The archive rules themselves (every kind, every hostile member, the caps) are tested on
their own in ``test_extract.py``; here is how they meet the download around them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from faults import until
from server import FAST, FAST_ENGINE, Server, of_type, run_manager

import rheo_nb
from rheo_nb import File, Status
from rheo_nb.events import Cancelled, Extracting, Skipped
from rheo_nb.extract import WORK_DIR


def tgz(members: dict[str, bytes], **special: tarfile.TarInfo) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        for info in special.values():
            tar.addfile(info)
    return gzip.compress(raw.getvalue(), mtime=0)


def zipped(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 2, 3, 4, 6)), data)
    return raw.getvalue()


def sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (working files aside) with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and WORK_DIR not in p.relative_to(folder).parts
    }


def working(folder: Path) -> list[str]:
    """What rheo_nb keeps in the hidden working folders under ``folder``."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if WORK_DIR in p.relative_to(folder).parts[:-1]
    )


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


TRAIN = {"train/a.csv": b"x,y\n1,2\n", "train/b.csv": b"x,y\n3,4\n"}
IMAGES = {"cat.png": b"\x89PNG cat", "sub/dog.png": b"\x89PNG dog"}
LABELS = b"id,label\n1,cat\n2,dog\n"


# --- what gets extracted, and where ------------------------------------------------------


async def test_extract_true_unpacks_every_archive_of_the_call_and_leaves_other_files(
    server: Server, dest: Path
) -> None:
    urls = [
        server.publish("train.tar.gz", tgz(TRAIN)),
        server.publish("images.zip", zipped(IMAGES)),
        server.publish("labels.csv.gz", gzip.compress(LABELS, mtime=0)),
        server.publish("README.txt", b"read me\n"),
        server.publish("blob.bin", zipped({"inside.txt": b"found by its magic"})),
    ]
    res = await fetch(urls, dest, extract=True)
    assert [o.status for o in res] == [Status.COMPLETED] * 5, res
    assert [o.extracted for o in res] == [
        dest / "train",
        dest / "images",
        dest / "labels.csv",
        None,
        dest / "blob.bin.extracted",
    ]
    assert listing(dest / "train") == TRAIN
    assert listing(dest / "images") == IMAGES
    assert (dest / "labels.csv").read_bytes() == LABELS
    assert listing(dest / "blob.bin.extracted") == {"inside.txt": b"found by its magic"}
    # The archives are kept, and nothing is left of the work.
    for name in ("train.tar.gz", "images.zip", "labels.csv.gz", "README.txt", "blob.bin"):
        assert (dest / name).is_file()
    assert [w for w in working(dest) if not w.endswith((".json", ".lock"))] == []


async def test_a_file_extracts_into_the_folder_it_names(server: Server, dest: Path) -> None:
    body = tgz({"config.json": b"{}", "weights.bin": b"\0" * 1000})
    f = File(server.publish("bert.tgz", body), "archives/bert.tgz", extract="models/bert")
    (outcome,) = await fetch([f], dest)
    assert outcome.status is Status.COMPLETED, outcome.error
    assert outcome.extracted == dest / "models" / "bert"
    assert listing(dest / "models" / "bert") == {"config.json": b"{}", "weights.bin": bytes(1000)}
    assert (dest / "archives" / "bert.tgz").read_bytes() == body


async def test_a_file_asked_to_extract_that_is_no_archive_fails_and_stays(
    server: Server, dest: Path
) -> None:
    f = File(server.publish("notes.txt", b"plain text"), extract=True)
    (outcome,) = await fetch([f], dest)
    assert outcome.status is Status.FAILED
    assert outcome.error == f"{f.url}: not an archive rheo_nb extracts (zip, tar, gz…)"
    assert (dest / "notes.txt").read_bytes() == b"plain text"  # the download itself is fine


async def test_an_extract_folder_outside_dest_is_refused_before_any_request(
    server: Server, dest: Path
) -> None:
    url = server.publish("x.zip", zipped({"a": b"a"}))
    (outcome,) = await fetch([File(url, extract="../elsewhere")], dest)
    assert outcome.status is Status.FAILED
    assert "extract folder" in (outcome.error or "")
    assert server.count() == 0


# --- reruns: neither the download nor the extraction is done twice --------------------------


async def test_a_rerun_skips_the_download_and_the_extraction(server: Server, dest: Path) -> None:
    body = tgz(TRAIN)
    f = File(server.publish("train.tar.gz", body), hash=sha256(body), extract=True)
    first, events = await run_manager(dest, [f])
    assert first[0].status is Status.COMPLETED
    assert of_type(events, Extracting)
    inode = os.stat(dest / "train").st_ino
    again, events = await run_manager(dest, [f])
    (outcome,) = again
    assert outcome.status is Status.SKIPPED
    assert outcome.extracted == dest / "train"
    assert server.count() == 1
    assert of_type(events, Extracting) == []  # its record says it is done: not redone
    assert os.stat(dest / "train").st_ino == inode
    assert listing(dest / "train") == TRAIN


@pytest.mark.parametrize("how", ["call", "file"])
async def test_extract_remove_deletes_the_archive_and_a_rerun_skips_both(
    server: Server, dest: Path, how: str
) -> None:
    body = zipped(IMAGES)
    url = server.publish("images.zip", body)
    if how == "call":
        items, options = [File(url, hash=sha256(body))], {"extract": True, "extract_remove": True}
    else:
        items, options = [File(url, hash=sha256(body), extract=True, extract_remove=True)], {}
    (outcome,) = await fetch(items, dest, **options)
    assert outcome.status is Status.COMPLETED, outcome.error
    assert not (dest / "images.zip").exists()
    assert listing(dest / "images") == IMAGES
    res, events = await run_manager(dest, items, **options)
    (again,) = res
    assert again.status is Status.SKIPPED
    assert again.extracted == dest / "images"
    (skipped,) = of_type(events, Skipped)
    assert skipped.reason == "already downloaded and extracted, sha256 verified"
    assert server.count() == 1
    assert not (dest / "images.zip").exists()


async def test_a_removed_archive_whose_extraction_changed_hands_is_downloaded_again(
    server: Server, dest: Path
) -> None:
    body = zipped(IMAGES)
    f = File(server.publish("images.zip", body), extract=True, extract_remove=True)
    await fetch([f], dest)
    # The folder is replaced by the user: it is theirs now, and no longer the extraction.
    os.rename(dest / "images", dest / "mine")
    (dest / "images").mkdir()
    (outcome,) = await fetch([f], dest)
    assert server.count() == 2  # the extraction is not there any more: downloaded again
    assert outcome.status is Status.FAILED  # and its folder is not ours to replace
    assert "exists and was not extracted from this archive" in (outcome.error or "")
    assert (dest / "images.zip").exists()  # a refused extraction never removes its archive


# --- hostile archives -------------------------------------------------------------------------


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


def bomb(size: int) -> bytes:
    """A tar.gz of one member of ``size`` zero bytes: over 1000:1."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return gzip.compress(raw.getvalue(), mtime=0)


HOSTILE: list[tuple[str, bytes, str]] = [
    ("traversal", tgz({"ok.txt": b"ok", "../evil.txt": b"x"}), "member '../evil.txt': its name "),
    ("absolute", tgz({"/etc/evil": b"x"}), "member '/etc/evil': its name is absolute"),
    (
        "link-out",
        tgz({"ok.txt": b"ok"}, l=link("up", "../../outside")),
        "member 'up': symbolic link to outside the target",
    ),
    ("device", tgz({}, d=device("null")), "member 'null': "),
    ("bomb", bomb(8 << 20), "max_extract_size"),
]


@pytest.mark.parametrize(("name", "body", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_a_hostile_archive_fails_its_item_alone_and_leaves_nothing_in_the_target(
    server: Server, dest: Path, name: str, body: bytes, words: str
) -> None:
    evil = server.publish(f"{name}.tar.gz", body)
    good = server.publish("good.zip", zipped({"fine.txt": b"fine"}))
    res = await fetch([evil, good], dest, extract=True, max_extract_size=1 << 20)
    bad, fine = res
    assert bad.status is Status.FAILED
    assert words in (bad.error or "")
    assert (bad.error or "").startswith(f"{evil}: ")
    assert bad.extracted is None
    assert not (dest / name).exists()
    assert fine.status is Status.COMPLETED
    assert listing(dest / "good") == {"fine.txt": b"fine"}
    # Nothing landed outside dest, nor in it beyond the two archives and the good folder.
    assert not (dest.parent / "evil.txt").exists()
    assert not (dest.parent / "outside").exists()
    top = sorted(p.name for p in os.scandir(dest) if p.name != WORK_DIR)
    assert top == sorted([f"{name}.tar.gz", "good.zip", "good"])
    assert [w for w in working(dest) if not w.endswith((".json", ".lock"))] == []


# --- a cancel during a long extraction ------------------------------------------------------


#: Enough members that extracting them takes a while (each is a file to create).
MEMBERS = 4000


def many_members(n: int) -> bytes:
    return tgz({f"part-{i:05d}.txt": f"{i}\n".encode() * 100 for i in range(n)})


async def test_a_cancel_during_a_long_extraction_leaves_nothing_half_extracted(
    server: Server, dest: Path
) -> None:
    body = many_members(MEMBERS)
    f = File(server.publish("parts.tar.gz", body), hash=sha256(body), extract=True)
    seen: list[rheo_nb.Event] = []
    async with rheo_nb.DownloadManager(dest, **FAST_ENGINE) as m:
        m.on(None, seen.append)
        (did,) = await m.add([f])
        await until(lambda: any(isinstance(e, Extracting) and e.members for e in seen), 30)
        assert await m.cancel(did)
        (outcome,) = m.results()
    assert outcome.status is Status.CANCELLED
    assert len(of_type(seen, Cancelled)) == 1
    progress = [e for e in seen if isinstance(e, Extracting)]
    assert progress[-1].members < MEMBERS  # it was stopped midway
    # Nothing half-extracted: no target, no temporary folder; the archive is complete.
    assert not (dest / "parts").exists()
    assert [w for w in working(dest) if not w.endswith(".lock")] == []  # no record either
    assert (dest / "parts.tar.gz").read_bytes() == body
    # The next run downloads nothing and extracts it all.
    (again,) = await fetch([f], dest)
    assert again.status is Status.SKIPPED
    assert again.extracted == dest / "parts"
    assert len(os.listdir(dest / "parts")) == MEMBERS
    assert server.count() == 1


# --- events -------------------------------------------------------------------------------------


async def test_extracting_events_count_members_up_to_the_total(server: Server, dest: Path) -> None:
    members = {f"f{i}.txt": b"x" * 100 for i in range(50)}
    url = server.publish("fifty.zip", zipped(members))
    res, events = await run_manager(dest, [url], extract=True)
    assert res[0].status is Status.COMPLETED
    progress = [(e.members, e.total) for e in of_type(events, Extracting)]
    assert progress, "no Extracting event"
    assert progress[-1] == (50, 50)  # the last one says it is all done
    assert [m for m, _ in progress] == sorted(m for m, _ in progress)
    kinds = [e.type.value for e in events if e.type.value in ("extracting", "completed")]
    assert kinds[-1] == "completed"  # completed only once extracted
    assert set(kinds[:-1]) == {"extracting"}


# --- extraction targets are paths of the call ----------------------------------------------


async def test_an_extraction_target_another_item_has_is_refused_before_any_request(
    server: Server, dest: Path
) -> None:
    urls = [
        server.publish("set.tar.gz", tgz(TRAIN)),
        server.publish("set.zip", zipped(IMAGES)),  # extracts into set/ too
        server.publish("other.zip", zipped(IMAGES)),
    ]
    res = await fetch(
        [*urls, File(urls[2], "own.zip", extract="set")], dest, extract=True, concurrency=4
    )
    assert [o.status for o in res] == [
        Status.COMPLETED,
        Status.FAILED,
        Status.COMPLETED,
        Status.FAILED,
    ], res
    assert res[1].error is not None
    assert "its extraction set is already where" in res[1].error
    assert "File(url, extract='folder')" in res[1].error
    assert server.count("set.zip") == 0
    assert listing(dest / "set") == TRAIN


async def test_an_archive_whose_bytes_lead_to_another_items_path_fails_its_extraction(
    server: Server, dest: Path
) -> None:
    # Named like a tar, one gzip-compressed file: it extracts to x.tar, which its name
    # did not say, and which another item of the call downloads. Whatever the order,
    # x.tar keeps its own bytes and the archive fails, kept, with the reason.
    for concurrency, folder in ((1, dest / "one"), (8, dest / "all")):
        gz = server.publish("x.tar.gz", gzip.compress(b"not a tar\n" * 50, mtime=0))
        tar = server.publish("x.tar", b"the tar itself")
        res = await fetch([File(gz, extract=True), tar], folder, concurrency=concurrency)
        archive, plain = res
        assert archive.status is Status.FAILED, res
        assert archive.error is not None
        assert "extracts into x.tar" in archive.error
        assert (folder / "x.tar.gz").is_file()
        assert plain.status is Status.COMPLETED, plain.error
        assert (folder / "x.tar").read_bytes() == b"the tar itself"
