"""The rheo-nb command: in process for the details, as a subprocess for the real thing.

The bad-input table runs the installed ``rheo-nb`` in a subprocess for each row and fails
on any traceback; what it saw (input, exit status, message) is written to
``tests/artifacts/cli-bad-inputs.md``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from faults import closed_port
from s3 import PART, attempt, pending
from server import Server, Spec

import rheo_nb
from rheo_nb import __version__, objstore
from rheo_nb.cli import EXIT_STATUSES, Exit, main
from rheo_nb.testing import S3Server

#: The installed console script, beside the interpreter running the tests.
SCRIPT = Path(sys.executable).with_name("rheo-nb")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def command() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "rheo_nb"]


def environment() -> dict[str, str]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    env.pop("RHEO_NB_TEST_UNSET", None)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    # Without credentials, botocore would ask an instance metadata service: not here.
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return env


def run(
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment(), **(env or {})},
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


# --- datasets: manifests, mirrors, extraction, offline -------------------------------------


def gen_folder(server: Server) -> str:
    return f"{server.base_url}/gen/{server.tag}/"


def digest(server: Server, name: str) -> str:
    return server.hash(name).split(":")[1]


def manifest_text(kind: str, server: Server, names: list[str]) -> str:
    """A manifest of ``kind`` for generated files of the server (relative to gen_folder)."""
    h = {n: server.hash(n) for n in names}
    if kind == "sums":
        return "".join(f"{digest(server, n)}  {n}\n" for n in names)
    if kind == "registry":
        return "# name hash\n" + "".join(f"{n} {h[n]}\n" for n in names)
    if kind == "aria2":
        return "".join(
            f"{server.url(n, status=404)}\t{gen_folder(server)}{n}\n"
            f"  out={n}\n  checksum=sha-256={digest(server, n)}\n"
            for n in names
        )
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        rows = [sep.join([f"{gen_folder(server)}{n}", f"k/{n}", h[n]]) for n in names]
        return sep.join(["image_url", "key", "sha"]) + "\n" + "\n".join(rows) + "\n"
    assert kind == "jsonl"
    return "".join(json.dumps({"url": n, "path": n, "hash": h[n]}) + "\n" for n in names)


MANIFESTS = {
    "sums": ("SHA256SUMS", ["--base-url", "{base}"]),
    "registry": ("registry.txt", ["--base-url", "{base}"]),
    "aria2": ("input.txt", []),
    "csv": ("images.csv", ["--columns", "url=image_url,path=key,hash=sha"]),
    "tsv": ("images.tsv", ["--columns", "url=image_url,path=key,hash=sha"]),
    "jsonl": ("list.jsonl", ["--base-url", "{base}"]),
}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_get_reads_each_manifest_format_by_name_and_content(
    server: Server, tmp_path: Path, kind: str
) -> None:
    names = ["a.bin", "sub/b.bin"]
    file, flags = MANIFESTS[kind]
    manifest = tmp_path / file
    manifest.write_text(manifest_text(kind, server, names))
    out = tmp_path / "out"
    extra = [f.format(base=gen_folder(server)) for f in flags]
    assert main(["get", "-i", str(manifest), "-o", str(out), "-q", *extra]) == 0
    where = {"csv": "k/", "tsv": "k/"}.get(kind, "")
    for n in names:
        assert (out / f"{where}{n}").read_bytes() == server.content(n)


def test_get_reads_a_parquet_manifest_lazily(server: Server, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"p{i}.bin" for i in range(12)]
    table = pa.table({"image_url": [f"{gen_folder(server)}{n}" for n in names]})
    pq.write_table(table, tmp_path / "shards.pq", row_group_size=5)
    out = tmp_path / "out"
    assert (
        main(
            [
                "get",
                "-i",
                str(tmp_path / "shards.pq"),
                "--columns",
                "url=image_url",
                "-o",
                str(out),
                "-q",
                server.url("extra.bin"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.glob("*.bin")) == sorted([*names, "extra.bin"])


def test_get_reads_a_private_manifest_from_a_url_with_the_same_credentials(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "t0k-manifest"

    async def guarded(request: web.Request, spec: Spec) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401)
        body = "".join(f"{server.url(n)}\n" for n in ("x.bin", "y.bin"))
        return web.Response(text=body)

    url = server.handle("urls.txt", guarded)
    monkeypatch.setenv("LIST_TOKEN", token)
    out = tmp_path / "out"
    assert main(["get", "-i", url, "-o", str(out), "-q", "--bearer-env", "LIST_TOKEN"]) == 0
    assert (out / "x.bin").read_bytes() == server.content("x.bin")
    assert (out / "y.bin").exists()


def test_format_names_the_format_whatever_the_file_is_called(
    server: Server, tmp_path: Path
) -> None:
    manifest = tmp_path / "download-these.txt"
    manifest.write_text("url,path\n" + f"{server.url('c.bin')},renamed.bin\n")
    out = tmp_path / "out"
    assert main(["get", "-i", str(manifest), "--format", "csv", "-o", str(out), "-q"]) == 0
    assert (out / "renamed.bin").read_bytes() == server.content("c.bin")


def test_a_url_list_with_tab_separated_mirrors_is_read_as_aria2(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text(
        f"{server.url('m.bin', status=404)}\t{server.url('m.bin', mirror=1)}\n"
        "  max-connection-per-server=4\n"
        f"{server.url('n.bin')}\n"
    )
    out = tmp_path / "out"
    assert main(["get", "-i", str(listing), "-o", str(out), "-q"]) == 0
    assert (out / "m.bin").read_bytes() == server.content("m.bin")
    assert capsys.readouterr().err.splitlines() == [
        f"rheo-nb get: {listing}: aria2 options ignored (rheo_nb honours out, dir and "
        "checksum): max-connection-per-server"
    ]


def test_skip_bad_rows_downloads_the_rest_and_exits_1(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"url\n{server.url('ok.bin')}\nftp://nope.example/x\n")
    out = tmp_path / "out"
    assert main(["get", "-i", str(manifest), "-o", str(out), "-q", "--skip-bad-rows"]) == 1
    assert (out / "ok.bin").exists()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("failed: ")
    assert f"{manifest}, line 3: unsupported URL scheme ftp:" in line


def test_get_extracts_archives_and_can_remove_them(server: Server, tmp_path: Path) -> None:
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("rows.csv")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"a,b\n"))
    url = server.publish("set.tar.gz", raw.getvalue())
    out = tmp_path / "out"
    assert main(["get", url, "-o", str(out), "-q", "--extract"]) == 0
    assert (out / "set" / "rows.csv").read_bytes() == b"a,b\n"
    assert (out / "set.tar.gz").exists()
    again = tmp_path / "again"
    assert main(["get", url, "-o", str(again), "-q", "--extract", "--extract-remove"]) == 0
    assert (again / "set" / "rows.csv").exists()
    assert not (again / "set.tar.gz").exists()
    assert main(["get", url, "-o", str(again), "-q", "--extract", "--extract-remove"]) == 0
    assert server.count("set.tar.gz") == 2  # the rerun found the extraction: no request


def test_offline_sends_no_request_and_fails_what_is_missing(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    a, b = server.url("a.bin"), server.url("b.bin")
    assert main(["get", a, "-o", str(out), "-q"]) == 0
    assert main(["get", a, "-o", str(out), "-q", "--offline"]) == 0  # complete: skipped
    assert main(["get", a, b, "-o", str(out), "-q", "--offline"]) == 1
    assert server.count() == 1
    assert capsys.readouterr().err.splitlines() == [f"failed: {b}: offline: not downloaded"]


def test_the_format_and_column_names_are_the_manifest_readers() -> None:
    from rheo_nb import cli, manifest

    assert cli.INPUT_FORMATS == ("auto", "list", *manifest.FORMATS)
    assert cli.COLUMNS == manifest.COLUMNS


def test_the_command_starts_without_what_only_some_calls_need() -> None:
    # Start-up is paid by every command: the manifest readers, extraction, the cluster
    # path and the notebook display are imported by the calls that use them.
    lazy = ["rheo_nb.manifest", "rheo_nb.extract", "rheo_nb.cluster", "tarfile", "ipywidgets"]
    code = f"import sys, rheo_nb.cli; print([m for m in {lazy!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


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
        "rheo-nb get: -i {tmp}: is a folder; give a file of 'URL [hash] [path]' lines "
        "or a manifest",
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
        "format-unknown",
        ("get", "-i", "{tmp}/bad-list.txt", "--format", "xml"),
        Exit.USAGE,
        "rheo-nb get: argument --format: expected one of auto, list, sums, registry, aria2, "
        "csv, tsv, jsonl, parquet; not 'xml'; see 'rheo-nb get --help'",
    ),
    Row(
        "columns-without-equals",
        ("get", "-i", "{tmp}/table.csv", "--columns", "url:image_url"),
        Exit.USAGE,
        "rheo-nb get: argument --columns: expected FIELD=COLUMN pairs separated by commas, "
        "e.g. url=image_url; not 'url:image_url'; see 'rheo-nb get --help'",
    ),
    Row(
        "columns-unknown-field",
        ("get", "-i", "{tmp}/table.csv", "--columns", "url=image_url,size=bytes"),
        Exit.USAGE,
        "rheo-nb get: argument --columns: unknown field 'size': map url, path, hash, mirrors "
        "to your column names; see 'rheo-nb get --help'",
    ),
    Row(
        "columns-for-a-checksum-file",
        ("get", "-i", "{tmp}/SHA256SUMS", "--columns", "url=x", "--base-url", "{url}"),
        Exit.USAGE,
        "rheo-nb get: -i {tmp}/SHA256SUMS: columns= applies to csv, tsv, jsonl and parquet, "
        "not sums",
    ),
    Row(
        "manifest-bad-line",
        ("get", "-i", "{tmp}/SHA256SUMS", "--base-url", "{url}"),
        Exit.USAGE,
        "rheo-nb get: {tmp}/SHA256SUMS, line 2: not a checksum line ('<hex>  name' or "
        "'ALG (name) = <hex>')",
    ),
    Row(
        "table-row-without-url",
        ("get", "-i", "{tmp}/table.csv", "--columns", "url=image_url"),
        Exit.USAGE,
        "rheo-nb get: {tmp}/table.csv, line 3: no URL",
    ),
    Row(
        "manifest-names-without-base-url",
        ("get", "-i", "{tmp}/names.sha256"),
        Exit.USAGE,
        "rheo-nb get: {tmp}/names.sha256, line 1: 'a.bin' is not a URL and no base_url was "
        "given (the folder it is in)",
    ),
    Row(
        "base-url-malformed",
        ("get", "-i", "{tmp}/names.sha256", "--base-url", "ftp://host/x/"),
        Exit.USAGE,
        "rheo-nb get: --base-url: unsupported URL scheme ftp: in 'ftp://host/x/'; rheo_nb "
        "downloads http: and https: URLs",
    ),
    Row(
        "stdin-as-a-table",
        ("get", "-i", "-", "--format", "csv"),
        Exit.USAGE,
        "rheo-nb get: -i -: standard input is read as 'URL [hash] [path]' lines; give a csv "
        "manifest as a file or a URL",
    ),
    Row(
        "extract-remove-alone",
        ("get", "{url}", "--extract-remove"),
        Exit.USAGE,
        "rheo-nb get: --extract-remove deletes archives once extracted: give --extract too",
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
        "rheo-nb: give a command: 'get' to download URLs, 'clean', or 'demo'; see 'rheo-nb --help'",
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
        "bucket-of-another-kind",
        ("get", "{url}", "-o", "gs://bucket/data"),
        Exit.USAGE,
        "rheo-nb: not an s3:// destination: 'gs://bucket/data'; object storage is written to "
        "as s3://bucket/prefix (any S3-compatible store: give its endpoint_url in "
        "storage_options)",
    ),
    Row(
        "storage-option-without-value",
        ("get", "{url}", "-o", "s3://bucket/data", "--storage-option", "endpoint_url"),
        Exit.USAGE,
        "rheo-nb get: --storage-option 'endpoint_url': expected NAME=VALUE, e.g. "
        "endpoint_url=http://127.0.0.1:9000",
    ),
    Row(
        "storage-option-secret",
        ("get", "{url}", "-o", "s3://bucket/data", "--storage-option", "secret=hush"),
        Exit.USAGE,
        "rheo-nb get: --storage-option secret: a secret on the command line is visible to "
        "other users; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the "
        "environment instead",
    ),
    Row(
        "storage-option-for-a-folder",
        ("get", "{url}", "-o", "{tmp}/out", "--storage-option", "endpoint_url=http://127.0.0.1:9"),
        Exit.USAGE,
        "rheo-nb: storage_options are for s3:// destinations; dest '{tmp}/out' is a local folder",
    ),
    Row(
        "bucket-without-credentials",
        ("get", "{url}", "-o", "s3://bucket/data", "--storage-option", "endpoint_url={closed}"),
        Exit.DESTINATION,
        "rheo-nb: -o s3://bucket/data/: no S3 credentials found: set key/secret in "
        "storage_options, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile",
    ),
    Row(
        "clean-a-folder",
        ("clean", "{tmp}"),
        Exit.USAGE,
        "rheo-nb: clean takes an s3:// destination, not '{tmp}': a local folder's partial "
        "files are in its hidden .rheo_nb/ folders",
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
    (tmp_path / "SHA256SUMS").write_text(f"{'ab' * 32}  a.bin\nnot a line\n")
    (tmp_path / "names.sha256").write_text(f"{'ab' * 32}  a.bin\n")
    (tmp_path / "table.csv").write_text(f"image_url,key\n{server.url('a')},a.bin\n,b.bin\n")
    names = {
        "tmp": str(tmp_path),
        "url": server.url("fine.bin"),
        "gone": server.url("gone.bin", status=404),
        "file": str(blocker),
        "closed": f"http://127.0.0.1:{closed_port()}",
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
    placeholders = {
        "tmp": "$TMP",
        "url": "URL",
        "gone": "URL-of-a-404",
        "file": "$TMP/afile.txt",
        "closed": "http://127.0.0.1:PORT",
    }
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


# --- into a bucket ---------------------------------------------------------------------------


def test_get_into_a_bucket_then_again_then_clean(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    url, gone = server.url("a.bin", 300_000), server.url("b.bin", status=404)
    flags = ["--storage-option", f"endpoint_url={s3_server.endpoint_url}"]
    flags += ["--storage-option", f"client_kwargs.region_name={s3_server.region}"]
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }
    dest = f"s3://{s3_bucket}/cli"
    first = run("get", url, "-o", dest, *flags, env=env)
    assert first.returncode == Exit.OK, first.stderr
    assert s3.get_object(Bucket=s3_bucket, Key="cli/a.bin")["Body"].read() == server.content(
        "a.bin", 300_000
    )
    assert "1 completed" in first.stderr
    again = run("get", url, gone, "-o", dest, *flags, env=env)
    assert again.returncode == Exit.FAILED
    assert "1 skipped, 1 failed" in again.stderr
    assert s3_server.secret_key not in first.stderr + again.stderr
    s3.create_multipart_upload(Bucket=s3_bucket, Key="cli/foreign.bin")  # not rheo_nb's
    cut = server.route_url("truncate", "left.bin", 2 * PART + 1, cut=PART + 10)

    async def interrupted() -> None:  # an upload kept for a rerun, with its record
        async with objstore.Bucket(dest, s3_server.storage_options, part_size=PART) as b:
            with pytest.raises(rheo_nb.TransferError):
                await attempt(b, "cli/left.bin", cut)

    asyncio.run(interrupted())
    assert pending(s3, s3_bucket) == ["cli/foreign.bin", "cli/left.bin"]
    cleaned = run("clean", dest, *flags, env=env)
    assert (cleaned.returncode, cleaned.stderr) == (Exit.OK, "")
    assert cleaned.stdout.splitlines() == [f"{dest}/left.bin"]
    assert pending(s3, s3_bucket) == ["cli/foreign.bin"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "wrong-secret",
            "rheo-nb: -o s3://{bucket}/cli/: S3 refused the credentials "
            "(SignatureDoesNotMatch on ListMultipartUploads): check the access key and "
            "secret (storage_options, the environment or the profile)",
        ),
        (
            "no-bucket",
            "rheo-nb: -o s3://no-such-bucket/cli/: bucket 'no-such-bucket' does not exist "
            "(ListMultipartUploads)",
        ),
        (
            "clean-no-bucket",
            "rheo-nb clean: s3://no-such-bucket/cli/: bucket 'no-such-bucket' does not exist "
            "(ListMultipartUploads)",
        ),
    ],
)
def test_a_bucket_that_cannot_be_used_is_one_line_and_status_3(
    case: str, message: str, s3_server: S3Server, s3_bucket: str, server: Server
) -> None:
    secret = "wrong-" + s3_server.secret_key[6:]
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": secret if case == "wrong-secret" else s3_server.secret_key,
    }
    bucket = s3_bucket if case == "wrong-secret" else "no-such-bucket"
    flags = ["--storage-option", f"endpoint_url={s3_server.endpoint_url}"]
    args = ["clean"] if case.startswith("clean") else ["get", server.url("x.bin"), "-o"]
    proc = run(*args, f"s3://{bucket}/cli", *flags, env=env)
    assert "Traceback" not in proc.stderr
    assert (proc.returncode, proc.stderr.splitlines()) == (
        Exit.DESTINATION,
        [message.format(bucket=s3_bucket)],
    )
    assert secret not in proc.stderr
    assert server.count() == 0
