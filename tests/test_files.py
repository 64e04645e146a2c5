"""Naming, confinement to dest, locks, partial files and the final rename."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rheo_nb import files
from rheo_nb.errors import InvalidItemError

# --- sanitize_name ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("data.csv", "data.csv"),
        ("a/b/c.txt", "c.txt"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("..", ""),
        ("...", ""),
        (".bashrc", "bashrc"),
        ("name. . ", "name"),
        ("a\x00b", "a_b"),
        ("tab\there", "tab_here"),
        ("a\x9b[2Jb.bin", "a_[2Jb.bin"),  # a C1 control: CSI on an 8-bit terminal
        ("a\x85b\x9f", "a_b_"),
        ('a<b>c:d"e|f?g*h', "a_b_c_d_e_f_g_h"),
        ("con", "_con"),
        ("CON.txt", "_CON.txt"),
        ("lpt1.tar.gz", "_lpt1.tar.gz"),
        ("console.txt", "console.txt"),
        ("e\u0301t\u0301e\u0301", "\u00e9t\u0301\u00e9"),
    ],
)
def test_sanitize_name_examples(raw: str, safe: str) -> None:
    assert files.sanitize_name(raw) == safe


def test_sanitize_name_shortens_long_names_and_keeps_the_extension() -> None:
    name = files.sanitize_name("x" * 400 + ".csv")
    assert name.endswith(".csv")
    assert len(name.encode()) <= files.MAX_NAME_BYTES


def test_sanitize_name_never_splits_a_multibyte_character() -> None:
    name = files.sanitize_name("é" * 400)
    assert name
    assert set(name) == {"é"}
    assert len(name.encode()) <= 255


@given(st.text())
def test_sanitize_name_always_gives_one_safe_component(raw: str) -> None:
    name = files.sanitize_name(raw)
    assert "/" not in name
    assert "\\" not in name
    assert not any(unicodedata.category(c) == "Cc" for c in name)
    assert not name.startswith(".")
    assert name == name.rstrip(". ")
    assert len(name.encode()) <= files.MAX_NAME_BYTES
    if name:
        root = PurePosixPath("/dest")
        assert (root / name).parent == root


@given(st.text(alphabet="ab. é-", min_size=230, max_size=600))
def test_sanitize_name_shortened_names_keep_the_rules(raw: str) -> None:
    name = files.sanitize_name(raw)
    assert len(name.encode()) <= files.MAX_NAME_BYTES
    assert not name.startswith(".")
    assert name == name.rstrip(". ")


@given(st.text())
def test_sanitize_name_is_stable(raw: str) -> None:
    once = files.sanitize_name(raw)
    assert files.sanitize_name(once) == once.strip()


# --- name_from_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://example.org/data/train.csv?version=2#top", "train.csv"),
        ("https://example.org/", "index.html"),
        ("https://example.org", "index.html"),
        ("https://example.org/a/%2e%2e", "index.html"),
        ("https://example.org/..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("https://example.org/%2Fetc%2Fshadow", "shadow"),
        ("https://example.org/my%20file.txt", "my file.txt"),
        ("https://example.org/.env", "env"),
    ],
)
def test_name_from_url(url: str, name: str) -> None:
    assert files.name_from_url(url) == name


# --- relative_path -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a.txt", "a.txt"),
        ("raw/2024/a.txt", "raw/2024/a.txt"),
        ("./raw//a.txt", "raw/a.txt"),
        ("raw\\a.txt", "raw/a.txt"),
        (Path("raw") / "a.txt", "raw/a.txt"),
    ],
)
def test_relative_path_accepts_paths_inside_dest(given: str | Path, expected: str) -> None:
    assert files.relative_path(given) == PurePosixPath(expected)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("../escape.txt", "outside dest"),
        ("a/../../escape.txt", "outside dest"),
        ("a\\..\\..\\escape.txt", "outside dest"),
        ("/etc/passwd", "absolute"),
        ("\\\\server\\share\\x", "absolute"),
        ("C:\\Windows\\x", "absolute"),
        ("c:x", "absolute"),
        ("", "names no file"),
        (".", "names no file"),
        ("a/./", "a"),
        ("a\x00b", "NUL"),
    ],
)
def test_relative_path_rejects_escapes_and_empty_names(given: str, words: str) -> None:
    if given == "a/./":  # a folder-looking path still names the file "a"
        assert files.relative_path(given) == PurePosixPath("a")
        return
    with pytest.raises(InvalidItemError, match=words):
        files.relative_path(given)


@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "/", "\\", "c:"]), max_size=8))
def test_relative_path_never_leaves_dest(parts: list[str]) -> None:
    text = "/".join(parts)
    try:
        rel = files.relative_path(text)
    except InvalidItemError:
        return
    root = Path("/dest")
    assert files.is_within(Path(os.path.normpath(root.joinpath(*rel.parts))), root)
    assert ".." not in rel.parts


# --- working names and confinement ------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.csv", "x.csv.part", ".x.csv.lock", "é" * 127, "y" * 255])
def test_working_names_live_in_the_working_folder_and_stay_short(name: str) -> None:
    final = Path("/d") / name
    names = {files.working_path(final, suffix) for suffix in (".part", ".json", ".lock")}
    assert {n.parent for n in names} == {Path("/d") / files.WORKDIR}
    assert all(len(n.name.encode()) <= 40 for n in names)
    assert len(names) == 3


def test_working_names_of_different_files_differ() -> None:
    a = files.working_path(Path("/d/x"), ".part")
    b = files.working_path(Path("/d/x.part"), ".part")
    assert a != b


@pytest.mark.parametrize("given", [".rheo_nb/x", "a/.rheo_nb/x", ".rheo_nb"])
def test_relative_path_refuses_the_working_folder(given: str) -> None:
    with pytest.raises(InvalidItemError, match="working files"):
        files.relative_path(given)


def test_relative_path_refuses_a_name_too_long_for_the_filesystem() -> None:
    assert files.relative_path("a" * 255) == PurePosixPath("a" * 255)
    with pytest.raises(InvalidItemError, match="256 bytes"):
        files.relative_path("sub/" + "a" * 256)


def test_is_within() -> None:
    root = Path("/d")
    assert files.is_within(Path("/d"), root)
    assert files.is_within(Path("/d/a/b"), root)
    assert not files.is_within(Path("/dx"), root)
    assert not files.is_within(Path("/"), root)


def test_ensure_parent_creates_the_folders(tmp_path: Path) -> None:
    final = tmp_path / "a" / "b" / "x.bin"
    files.ensure_parent(tmp_path, final)
    assert final.parent.is_dir()
    assert files.existing_size(final) is None


def test_existing_size_of_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"12345")
    assert files.existing_size(tmp_path / "x.bin") == 5


def test_existing_size_refuses_a_symlink_at_the_final_path(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x.txt").symlink_to(outside)
    with pytest.raises(OSError, match="symbolic link") as info:
        files.existing_size(dest / "x.txt")
    assert info.value.errno == errno.ELOOP
    assert outside.read_text() == "keep me"


def test_existing_size_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(IsADirectoryError):
        files.existing_size(tmp_path / "x")


def test_ensure_parent_refuses_a_folder_linked_outside_dest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OSError, match="outside the destination") as info:
        files.ensure_parent(dest, dest / "sub" / "x.bin")
    assert info.value.errno == errno.EXDEV


# --- locks ------------------------------------------------------------------------------------


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    final = tmp_path / "x.bin"
    fd = files.try_lock(final)
    assert fd is not None
    assert fd >= 0
    assert files.try_lock(final) is None
    files.unlock(final, fd)
    assert not files.working_path(final, ".lock").exists()
    again = files.try_lock(final)
    assert again is not None
    assert again >= 0
    files.unlock(final, again)


def test_unlock_without_flock_support_is_a_no_op(tmp_path: Path) -> None:
    files.unlock(tmp_path / "x.bin", files.LOCK_UNSUPPORTED)


def test_lockless_part_files_of_writers_gone_are_dropped_and_live_ones_kept(
    tmp_path: Path,
) -> None:
    # Where flock fails, each writer has a part file of its own; a killed writer's is
    # removed by a later run, a running writer's never.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    work = tmp_path / files.WORKDIR
    work.mkdir()
    base = files.working_base(tmp_path / "x.bin")
    live = files.lockless_part(base)
    killed = live.replace(f".{os.getpid()}-", f".{dead.stdout.strip()}-")
    elsewhere = live.replace(f"-{files._HOST}-", "-00000000-")
    old_elsewhere = files.working_base(tmp_path / "y.bin") + ".1-00000000-0123456789ab.part"
    others = [base + ".part", base + ".json", base + ".lock", str(work / "extract-x.json")]
    for path in [live, killed, elsewhere, old_elsewhere, *others]:
        Path(path).write_bytes(b"x")
    day_ago = time.time() - files.ORPHAN_AGE - 60
    os.utime(old_elsewhere, (day_ago, day_ago))
    os.utime(others[0], (day_ago, day_ago))
    files.drop_orphans(work)
    assert sorted(os.listdir(work)) == sorted(
        os.path.basename(p) for p in [live, elsewhere, *others]
    )
