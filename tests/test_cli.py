"""The rheo-nb command: in process for the details, as a subprocess for the real thing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from server import Server

from rheo_nb import __version__
from rheo_nb.cli import main

#: The installed console script, beside the interpreter running the tests.
SCRIPT = Path(sys.executable).with_name("rheo-nb")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "rheo_nb"]
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    return subprocess.run(
        [*command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_get_downloads_into_the_folder(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    a, b = server.url("a.bin"), server.url("b.bin")
    code = main(["get", a, b, "-o", str(out), "-j", "2", "-q"])
    assert code == 0
    assert (out / "a.bin").read_bytes() == server.content("a.bin")
    assert (out / "b.bin").read_bytes() == server.content("b.bin")


def test_get_checks_hashes_in_order(server: Server, tmp_path: Path) -> None:
    a, b = server.url("a.bin"), server.url("b.bin")
    args = ["get", a, b, "-o", str(tmp_path), "-q", "--retries", "0"]
    good = ["--hash", server.hash("a.bin"), "--hash", server.hash("b.bin")]
    assert main([*args, *good]) == 0
    swapped = ["--hash", server.hash("b.bin"), "--hash", server.hash("a.bin")]
    assert main([*args, "--overwrite", *swapped]) == 1
    # A failed overwrite leaves the old file as it was.
    assert (tmp_path / "a.bin").read_bytes() == server.content("a.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_get_exits_1_when_a_file_failed(server: Server, tmp_path: Path) -> None:
    urls = [server.url("ok.bin"), server.url("gone.bin", status=404)]
    assert main(["get", *urls, "-o", str(tmp_path), "-q"]) == 1
    assert (tmp_path / "ok.bin").exists()


def test_get_needs_one_hash_per_url(server: Server, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--hash given 1 times for 2 URLs"):
        main(["get", server.url("a"), server.url("b"), "--hash", "md5:" + "0" * 32])


def test_get_needs_urls() -> None:
    with pytest.raises(SystemExit, match="no URLs given"):
        main(["get"])


def test_get_reads_a_list_file(server: Server, tmp_path: Path) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text(
        "# the training set\n"
        f"{server.url('a.bin')}\n"
        "\n"
        f"{server.url('b.bin')} {server.hash('b.bin')} sub/b.bin\n"
        f"{server.url('c.bin')} renamed.bin\n"
    )
    out = tmp_path / "out"
    assert main(["get", "-i", str(listing), "-o", str(out), "-q"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.bin")) == [
        "a.bin",
        "renamed.bin",
        "sub/b.bin",
    ]


def test_get_refuses_a_malformed_list_line(tmp_path: Path) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text("http://127.0.0.1/a one two three\n")
    with pytest.raises(SystemExit, match=r"urls\.txt:1: expected 'URL \[hash\] \[path\]'"):
        main(["get", "-i", str(listing)])


def test_get_exits_2_when_the_destination_is_unusable(server: Server, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["get", server.url("a.bin"), "-o", str(blocker / "out"), "-q"]) == 2
    assert server.count() == 0


def test_get_shows_text_progress_on_stderr(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", server.url("a.bin"), "-o", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "1 file: 1 completed" in captured.err


def test_subprocess_get_succeeds(server: Server, tmp_path: Path) -> None:
    url = server.url("sub.bin")
    proc = run("get", url, "-o", str(tmp_path), "-j", "1", "--hash", server.hash("sub.bin"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sub.bin").read_bytes() == server.content("sub.bin")
    assert "1 file: 1 completed" in proc.stderr


def test_subprocess_get_fails_when_a_file_failed(server: Server, tmp_path: Path) -> None:
    urls = [server.url("fine.bin"), server.url("bad.bin", status=404)]
    proc = run("get", *urls, "-o", str(tmp_path), "-q")
    assert proc.returncode == 1
    assert (tmp_path / "fine.bin").exists()
    assert not (tmp_path / "bad.bin").exists()


def test_subprocess_get_with_a_wrong_hash_fails(server: Server, tmp_path: Path) -> None:
    proc = run("get", server.url("h.bin"), "-o", str(tmp_path), "--hash", "sha256:" + "0" * 64)
    assert proc.returncode == 1
    assert "sha256 mismatch" in proc.stderr
    assert not (tmp_path / "h.bin").exists()


def test_subprocess_reads_urls_from_stdin(server: Server, tmp_path: Path) -> None:
    proc = run("get", "-i", "-", "-o", str(tmp_path), "-q", stdin=server.url("in.bin") + "\n")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "in.bin").exists()


def test_version_and_usage() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"rheo_nb {__version__}"
    proc = run()
    assert proc.returncode == 2
    assert "usage: rheo-nb" in proc.stderr
