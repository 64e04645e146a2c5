"""The rheo-nb command: in process for the details, as a subprocess for the real thing.

The bad-input table runs the installed ``rheo-nb`` in a subprocess for each row and fails
on any traceback; what it saw (input, exit status, message) is written to
``tests/artifacts/cli-bad-inputs.md``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from server import Server

import rheo_nb
from rheo_nb import __version__
from rheo_nb.cli import EXIT_STATUSES, Exit, main

#: The installed console script, beside the interpreter running the tests.
SCRIPT = Path(sys.executable).with_name("rheo-nb")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def command() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "rheo_nb"]


def environment() -> dict[str, str]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    env.pop("RHEO_NB_TEST_UNSET", None)
    return env


def run(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        cwd=cwd,
        check=False,
    )


# --- downloads ---------------------------------------------------------------------------------


def test_get_downloads_into_the_folder(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out"
    a, b = server.url("a.bin"), server.url("b.bin")
    code = main(["get", a, b, "-o", str(out), "-j", "2", "-q"])
    assert code == 0
    assert (out / "a.bin").read_bytes() == server.content("a.bin")
    assert (out / "b.bin").read_bytes() == server.content("b.bin")


def test_get_limits_the_rate_and_spaces_the_requests(server: Server, tmp_path: Path) -> None:
    urls = [server.url(f"polite-{i}.bin", 300_000) for i in range(3)]
    start = time.monotonic()
    proc = run(
        "get", *urls, "-o", str(tmp_path / "out"), "-j", "3",
        "--limit-rate", "400k", "--requests-per-second", "4",
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode == Exit.OK, proc.stderr
    for i in range(3):
        got = (tmp_path / "out" / f"polite-{i}.bin").read_bytes()
        assert got == server.content(f"polite-{i}.bin", 300_000)
    # 900 kB at 400 KiB/s (the cap starts with one read's worth of tokens).
    assert elapsed >= (900_000 - (128 << 10)) / (400 << 10)
    # Three downloads at once, their requests a quarter of a second apart.
    first, *later = sorted(r.time for r in server.requests())
    assert [t - first >= k * 0.25 - 0.01 for k, t in enumerate(later, 1)] == [True, True]


def test_get_checks_hashes_in_order(server: Server, tmp_path: Path) -> None:
    a, b = server.url("a.bin"), server.url("b.bin")
    args = ["get", a, b, "-o", str(tmp_path), "-q", "--retries", "0"]
    good = ["--hash", server.hash("a.bin"), "--hash", server.hash("b.bin")]
    assert main([*args, *good]) == 0
    swapped = ["--hash", server.hash("b.bin"), "--hash", server.hash("a.bin")]
    assert main([*args, "--overwrite", *swapped]) == 1
    # A failed overwrite leaves the old file as it was.
    assert (tmp_path / "a.bin").read_bytes() == server.content("a.bin")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "a.bin",
        "b.bin",
    ]


def test_get_reads_a_list_file_with_comments(server: Server, tmp_path: Path) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text(
        "# the training set\n"
        f"{server.url('a.bin')}   # the first shard\n"
        "\n"
        f"{server.url('b.bin')} {server.hash('b.bin')} sub/b.bin\n"
        f"{server.url('c.bin')} renamed.bin #renamed\n"
        "   # an indented comment\n"
    )
    out = tmp_path / "out"
    assert main(["get", "-i", str(listing), "-o", str(out), "-q"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.bin")) == [
        "a.bin",
        "renamed.bin",
        "sub/b.bin",
    ]


def test_get_shows_text_progress_on_stderr(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", server.url("a.bin"), "-o", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "1 file: 1 completed" in captured.err
    assert "100% 1/1 files" in captured.err


def test_quiet_hides_progress_but_not_failures(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", server.url("a.bin"), "-o", str(tmp_path), "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    urls = [server.url("b.bin"), server.url("gone.bin", status=404)]
    assert main(["get", *urls, "-o", str(tmp_path), "-q"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"failed: {urls[1]}: HTTP 404 Not Found"]


def test_subprocess_get_succeeds(server: Server, tmp_path: Path) -> None:
    url = server.url("sub.bin")
    proc = run("get", url, "-o", str(tmp_path), "-j", "1", "--hash", server.hash("sub.bin"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sub.bin").read_bytes() == server.content("sub.bin")
    assert "1 file: 1 completed" in proc.stderr


def test_subprocess_get_with_a_wrong_hash_fails(server: Server, tmp_path: Path) -> None:
    proc = run("get", server.url("h.bin"), "-o", str(tmp_path), "--hash", "sha256:" + "0" * 64)
    assert proc.returncode == 1
    assert "sha256 mismatch" in proc.stderr
    assert not (tmp_path / "h.bin").exists()


def test_subprocess_reads_urls_from_stdin(server: Server, tmp_path: Path) -> None:
    proc = run("get", "-i", "-", "-o", str(tmp_path), "-q", stdin=server.url("in.bin") + "\n")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "in.bin").exists()


def test_version_and_help() -> None:
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"rheo_nb {__version__}"
    for args in (["--help"], ["get", "--help"], ["demo", "--help"]):
        proc = run(*args)
        assert proc.returncode == 0
        assert EXIT_STATUSES in proc.stdout, args
    helped = run("get", "--help").stdout
    assert "--retries N" in helped
    assert "further attempts after a transient failure" in helped


def test_the_exit_statuses_in_help_are_the_real_ones() -> None:
    documented = {int(m.group(1)) for m in re.finditer(r"^  (\d+) ", EXIT_STATUSES, re.MULTILINE)}
    assert documented == {int(e) for e in Exit}


# --- the bad-input table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One bad input: the arguments (``{tmp}``, ``{url}``, ``{gone}`` and ``{file}`` are
    filled in), the exit status, and a line stderr must hold (``{...}`` filled in too)."""

    id: str
    args: tuple[str, ...]
    code: Exit
    message: str
    #: Usage and destination errors print this one line and nothing else ("line"); a
    #: failed download prints it among progress lines ("among"); "start": one line
    #: that starts so (argparse quotes its choices differently across Python versions).
    match: str = "line"


ROWS = [
    Row(
        "segments-not-a-number",
        ("get", "--segments", "abc", "{url}"),
        Exit.USAGE,
        "rheo-nb get: argument --segments: expected 'auto' or a whole number >= 1 "
        "(1: never split), not 'abc'; see 'rheo-nb get --help'",
    ),
    Row(
        "input-file-missing",
        ("get", "-i", "nosuchfile.txt"),
        Exit.USAGE,
        "rheo-nb get: -i nosuchfile.txt: no such file",
    ),
    Row(
        "input-is-a-folder",
        ("get", "-i", "{tmp}"),
        Exit.USAGE,
        "rheo-nb get: -i {tmp}: is a folder; give a file of 'URL [hash] [path]' lines",
    ),
    Row(
        "input-not-text",
        ("get", "-i", "{tmp}/binary.dat"),
        Exit.USAGE,
        "rheo-nb get: -i {tmp}/binary.dat: not a UTF-8 text file of URLs",
    ),
    Row(
        "input-line-too-long",
        ("get", "-i", "{tmp}/bad-list.txt"),
        Exit.USAGE,
        "rheo-nb get: {tmp}/bad-list.txt:2: expected 'URL [hash] [path]', got 4 fields; "
        "quote nothing, and put a '#' before a comment",
    ),
    Row(
        "input-bad-hash",
        ("get", "-i", "{tmp}/bad-hash.txt"),
        Exit.USAGE,
        "rheo-nb get: {tmp}/bad-hash.txt:1: malformed md5 digest in 'md5:xyz': "
        "expected 32 hex digits",
    ),
    Row(
        "demo-into-a-file",
        ("demo", "-o", "{file}"),
        Exit.DESTINATION,
        "rheo-nb: -o {file}: cannot be the destination folder: it is a file; choose another folder",
    ),
    Row(
        "get-into-a-file",
        ("get", "{url}", "-o", "{file}"),
        Exit.DESTINATION,
        "rheo-nb: -o {file}: cannot be the destination folder: it is a file; choose another folder",
    ),
    Row(
        "get-under-a-file",
        ("get", "{url}", "-o", "{file}/data"),
        Exit.DESTINATION,
        "rheo-nb: -o {file}/data: cannot be the destination folder: {file}, a folder "
        "above it, is a file; choose another folder",
    ),
    Row(
        "quiet-not-a-url",
        ("get", "-q", "not-a-url", "-o", "{tmp}/out"),
        Exit.FAILED,
        "failed: unsupported URL scheme (none) in 'not-a-url'; rheo_nb downloads http: "
        "and https: URLs",
    ),
    Row(
        "a-404",
        ("get", "{gone}", "-o", "{tmp}/out"),
        Exit.FAILED,
        "failed: {gone}: HTTP 404 Not Found",
        match="among",
    ),
    Row(
        "hash-count",
        ("get", "{url}", "{gone}", "--hash", "md5:" + "0" * 32),
        Exit.USAGE,
        "rheo-nb get: --hash given 1 time for 2 URLs: give one per URL, in the same order "
        "(or use -i FILE with 'URL hash' lines)",
    ),
    Row(
        "hash-malformed",
        ("get", "{url}", "--hash", "md5:xyz"),
        Exit.USAGE,
        "rheo-nb get: --hash: malformed md5 digest in 'md5:xyz': expected 32 hex digits",
    ),
    Row(
        "no-urls",
        ("get",),
        Exit.USAGE,
        "rheo-nb get: no URLs given; pass them as arguments or with -i FILE "
        "(see 'rheo-nb get --help')",
    ),
    Row(
        "no-command",
        (),
        Exit.USAGE,
        "rheo-nb: give a command: 'get' to download URLs, or 'demo'; see 'rheo-nb --help'",
    ),
    Row(
        "unknown-command",
        ("fetch", "{url}"),
        Exit.USAGE,
        "rheo-nb: argument COMMAND: invalid choice: 'fetch' (choose from ",
        match="start",
    ),
    Row(
        "misspelt-flag",
        ("get", "--concurency", "4", "{url}"),
        Exit.USAGE,
        "rheo-nb get: unrecognized argument: --concurency (did you mean --concurrency?); "
        "see 'rheo-nb get --help'",
    ),
    Row(
        "zero-concurrency",
        ("get", "-j", "0", "{url}"),
        Exit.USAGE,
        "rheo-nb get: argument -j/--concurrency: expected a whole number >= 1, not '0'; "
        "see 'rheo-nb get --help'",
    ),
    Row(
        "negative-retries",
        ("get", "--retries", "-1", "{url}"),
        Exit.USAGE,
        "rheo-nb get: argument --retries: expected a whole number >= 0, not '-1'; "
        "see 'rheo-nb get --help'",
    ),
    Row(
        "zero-timeout",
        ("get", "--timeout", "0", "{url}"),
        Exit.USAGE,
        "rheo-nb get: argument --timeout: expected a number of seconds > 0, not '0'; "
        "see 'rheo-nb get --help'",
    ),
    Row(
        "limit-rate-unknown-unit",
        ("get", "--limit-rate", "20Q", "{url}"),
        Exit.USAGE,
        "rheo-nb get: argument --limit-rate: expected at least 1 byte per second, written as "
        "20M (1024-based, as curl and wget read it), 20MB/s, 500KiB/s or 100Mbit/s, not '20Q'; "
        "see 'rheo-nb get --help'",
    ),
    Row(
        "limit-rate-under-a-byte",
        ("get", "--limit-rate", "0.5", "{url}"),
        Exit.USAGE,
        "rheo-nb get: argument --limit-rate: expected at least 1 byte per second, written as "
        "20M (1024-based, as curl and wget read it), 20MB/s, 500KiB/s or 100Mbit/s, not '0.5'; "
        "see 'rheo-nb get --help'",
    ),
    Row(
        "limit-rate-per-host-negative",
        ("get", "--limit-rate-per-host=-1M", "{url}"),
        Exit.USAGE,
        "rheo-nb get: argument --limit-rate-per-host: expected at least 1 byte per second, "
        "written as 20M (1024-based, as curl and wget read it), 20MB/s, 500KiB/s or "
        "100Mbit/s, not '-1M'; see 'rheo-nb get --help'",
    ),
    Row(
        "requests-per-second-zero",
        ("get", "--requests-per-second", "0", "{url}"),
        Exit.USAGE,
        "rheo-nb get: argument --requests-per-second: expected a number of requests per "
        "second > 0 (0.5: one every 2 s), not '0'; see 'rheo-nb get --help'",
    ),
    Row(
        "header-without-colon",
        ("get", "-H", "X-Team alpha", "{url}"),
        Exit.USAGE,
        "rheo-nb get: --header 'X-Team alpha': expected 'Name: value'",
    ),
    Row(
        "bearer-env-unset",
        ("get", "--bearer-env", "RHEO_NB_TEST_UNSET", "{url}"),
        Exit.USAGE,
        "rheo-nb get: --bearer-env RHEO_NB_TEST_UNSET: the environment variable "
        "RHEO_NB_TEST_UNSET is not set",
    ),
    Row(
        "ca-missing",
        ("get", "--ca", "{tmp}/nosuch.pem", "{url}"),
        Exit.USAGE,
        "rheo-nb get: --ca {tmp}/nosuch.pem: no such file",
    ),
    Row(
        "proxy-password",
        ("get", "--proxy", "http://me:secret@127.0.0.1:3128", "{url}"),
        Exit.USAGE,
        "rheo-nb get: --proxy: a password on the command line is visible to other users; "
        "set HTTPS_PROXY / HTTP_PROXY in the environment instead",
    ),
]


@pytest.fixture(scope="module")
def observed() -> Iterator[list[tuple[str, int, str]]]:
    seen: list[tuple[str, int, str]] = []
    yield seen
    if seen:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        lines = ["| input | exit | message |", "|---|---|---|"]
        lines += [f"| `{args}` | {code} | {msg} |" for args, code, msg in seen]
        (ARTIFACTS / "cli-bad-inputs.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gets_one_line_and_its_exit_status(
    row: Row, server: Server, tmp_path: Path, observed: list[tuple[str, int, str]]
) -> None:
    blocker = tmp_path / "afile.txt"
    blocker.write_text("not a folder")
    (tmp_path / "binary.dat").write_bytes(b"\xff\xfe\x00\x01" * 64)
    (tmp_path / "bad-list.txt").write_text(f"{server.url('a')}\n{server.url('b')} one two three\n")
    (tmp_path / "bad-hash.txt").write_text(f"{server.url('a')} md5:xyz\n")
    names = {
        "tmp": str(tmp_path),
        "url": server.url("fine.bin"),
        "gone": server.url("gone.bin", status=404),
        "file": str(blocker),
    }
    args = [a.format(**names) for a in row.args]
    proc = run(*args, cwd=tmp_path)
    message = row.message.format(**names)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == row.code, proc.stderr
    lines = proc.stderr.splitlines()
    if row.match == "line":
        assert lines == [message]
    elif row.match == "start":
        assert len(lines) == 1
        assert lines[0].startswith(message)
    else:
        assert message in lines
    placeholders = {"tmp": "$TMP", "url": "URL", "gone": "URL-of-a-404", "file": "$TMP/afile.txt"}
    shown = " ".join(["rheo-nb", *(a.format(**placeholders) for a in row.args)])
    first = lines[0] if row.match != "among" else message
    for real, placeholder in ((names["gone"], "URL-of-a-404"), (str(tmp_path), "$TMP")):
        first = first.replace(real, placeholder)
    observed.append((shown, proc.returncode, first))
    if row.code in (Exit.USAGE, Exit.DESTINATION):
        assert server.count() == 0  # nothing was downloaded


def test_ctrl_c_exits_130_keeps_the_partial_and_shows_what_was_done(
    server: Server, tmp_path: Path, observed: list[tuple[str, int, str]]
) -> None:
    out = tmp_path / "out"
    url = server.url("big.bin", 64 << 20, rate=4 << 20)
    proc = subprocess.Popen(
        [*command(), "get", url, "-o", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    deadline = time.monotonic() + 30
    while server.count("big.bin") == 0 or not _has_bytes(out):
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == Exit.INTERRUPTED, err
    assert "Traceback" not in err
    lines = err.splitlines()
    last = lines[-1]
    assert re.fullmatch(
        r"rheo-nb: interrupted: downloads stopped: 0 of 1 files done, 1 partial file kept "
        r"in .*; run it again to resume",
        last,
    ), last
    # The closing progress line shows what was done of what was asked: never 100%.
    final = next(line for line in lines if "■ stopped" in line)
    assert re.match(r"▕█*░+▏ +\d+% 0/1 files · [\d.]+ MiB/64\.0 MiB", final), final
    assert "100%" not in final
    assert _has_bytes(out)
    observed.append(("rheo-nb get URL -o out, then Ctrl-C", proc.returncode, last))
    # The same command resumes.
    again = run("get", url, "-o", str(out), "-q")
    assert again.returncode == 0, again.stderr
    assert (out / "big.bin").stat().st_size == 64 << 20


def _has_bytes(folder: Path) -> bool:
    return folder.exists() and any(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_an_internal_error_is_one_line_with_status_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bug cannot be made to happen on purpose: this one is planted.
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("planted")

    monkeypatch.setattr(rheo_nb.api, "fetch_sync", broken)
    assert main(["get", "http://127.0.0.1:9/x"]) == Exit.INTERNAL
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"rheo-nb: internal error (RuntimeError: planted); this is a bug in rheo_nb "
        f"{__version__}: please report it with the command that caused it"
    ]
