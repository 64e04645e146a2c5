"""read_manifest: every format, from files and from a real local server, and bad input."""

from __future__ import annotations

import asyncio
import bz2
import gc
import gzip
import hashlib
import io
import json
import os
import sys
import tempfile
import tracemalloc
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from server import FAST, Server, Spec

import rheo_nb
from rheo_nb import File, ManifestError, OptionError, Status, read_manifest
from rheo_nb.items import BadRow
from rheo_nb.manifest import BATCH_ROWS, Format, ParquetManifest

H64 = "ab" * 32
H32 = "cd" * 16
H128 = "ef" * 64
BASE = "https://data.example/v1/"


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def urls(files: Any) -> list[str]:
    return [f.url for f in files]


# --- checksum files ------------------------------------------------------------------------------


def test_sums_gnu_and_bsd_lines_keep_sub_folders(tmp_path: Path) -> None:
    text = (
        f"{H64}  train.csv\n"
        f"{H64} *images/cat 1.jpg\n"
        f"# a comment, and a blank line\n\n"
        f"SHA256 (./labels/all.json) = {H64.upper()}\r\n"
        f"MD5 (old.bin) = {H32}\n"
        f"SHA2-512(x.bin)= {H128}\n"
    )
    files = read_manifest(write(tmp_path, "SHA256SUMS", text), base_url=BASE)
    assert files == [
        File(BASE + "train.csv", "train.csv", hash=f"sha256:{H64}"),
        File(BASE + "images/cat%201.jpg", "images/cat 1.jpg", hash=f"sha256:{H64}"),
        File(BASE + "labels/all.json", "./labels/all.json", hash=f"sha256:{H64.upper()}"),
        File(BASE + "old.bin", "old.bin", hash=f"md5:{H32}"),
        File(BASE + "x.bin", "x.bin", hash=f"sha512:{H128}"),
    ]


@pytest.mark.parametrize(
    ("name", "digest", "algorithm"),
    [
        ("sha512sums", H128, "sha512"),
        ("MD5SUMS", H32, "md5"),
        ("SHA1SUMS", "12" * 20, "sha1"),
        ("checksums.txt", H32, "md5"),  # the name says nothing: the length does
        ("checksums.txt", H128, "sha512"),
        ("model.bin.sha256", H64, "sha256"),
    ],
)
def test_sums_algorithm_from_the_name_else_the_length(
    tmp_path: Path, name: str, digest: str, algorithm: str
) -> None:
    files = read_manifest(write(tmp_path, name, f"{digest}  a.bin\n"), base_url=BASE, format="sums")
    assert [f.hash for f in files] == [f"{algorithm}:{digest}"]


def test_a_digest_alone_names_the_file_beside_it(tmp_path: Path) -> None:
    files = read_manifest(write(tmp_path, "model.tar.gz.sha256", H64 + "\n"), base_url=BASE)
    assert files == [File(BASE + "model.tar.gz", "model.tar.gz", hash=f"sha256:{H64}")]


def test_escaped_names_are_unescaped(tmp_path: Path) -> None:
    files = read_manifest(write(tmp_path, "SHA256SUMS", f"\\{H64}  back\\\\slash\n"), base_url=BASE)
    assert files[0].path == "back\\slash"


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("SHA256SUMS", f"ok\n{H64}  a.bin\n", "line 1: not a checksum line"),
        ("SHA256SUMS", f"{H64}  a.bin\n{H32}  b.bin\n", "line 2: malformed sha256 digest"),
        ("sha384sums", f"{'1' * 96}  a.bin\n", "line 1: unsupported hash algorithm 'sha384'"),
        ("B2SUMS", f"{H128}  a.bin\n", "line 1: unsupported hash algorithm 'blake2b'"),
        ("SUMS.txt", f"{'1' * 56}  a.bin\n", "unsupported hash algorithm"),
        ("SHA256SUMS", f"{H64}  ../../etc/passwd\n", "line 1: .*outside dest"),
        ("SHA256SUMS", f"{H64}  /etc/passwd\n", "line 1: .*absolute"),
        ("SHA256SUMS", f"{H64}\n", "line 1: a digest without a file name"),
        ("SHA256SUMS", "SHA384 (a.bin) = " + "1" * 96 + "\n", "unsupported hash algorithm"),
    ],
)
def test_bad_sums_lines_name_the_file_and_line(
    tmp_path: Path, name: str, text: str, words: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ManifestError, match=words) as info:
        read_manifest(path, base_url=BASE, format="sums")
    assert str(info.value).startswith(f"{path}, line ")


def test_names_without_base_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"line 1: 'a\.bin' is not a URL and no base_url"):
        read_manifest(write(tmp_path, "SHA256SUMS", f"{H64}  a.bin\n"))


# --- registries and aria2 input files ------------------------------------------------------------


def test_registry_with_comments_bare_hashes_and_urls(tmp_path: Path) -> None:
    text = (
        "# pooch registry\n"
        f"data/train.csv {H64}\n"
        f"test.csv md5:{H32} https://mirror.example/test.csv\n"
        f'"with space.txt" sha512:{H128}\n'
    )
    files = read_manifest(write(tmp_path, "registry.txt", text), base_url=BASE)
    assert files == [
        File(BASE + "data/train.csv", "data/train.csv", hash=H64),
        File("https://mirror.example/test.csv", "test.csv", hash=f"md5:{H32}"),
        File(BASE + "with%20space.txt", "with space.txt", hash=f"sha512:{H128}"),
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (f"a.csv {H32}\n", "line 1: malformed sha256 digest"),  # bare hex is sha256
        ("a.csv\n", "expected 'name hash \\[url\\]', found 1"),
        (f"a.csv {H64} u v\n", "found 4 fields"),
        (f'"a.csv {H64}\n', "cannot split"),
        (f"a.csv xxh128:{H32}\n", "unsupported hash algorithm"),
    ],
)
def test_bad_registry_lines(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        read_manifest(write(tmp_path, "reg", text), base_url=BASE, format="registry")


def test_aria2_mirrors_out_dir_checksum_and_one_warning(tmp_path: Path) -> None:
    text = (
        "# aria2c -i\n"
        "https://a.example/f.iso\thttps://b.example/f.iso\t https://c.example/f.iso\n"
        "  dir=isos\n"
        "  out=debian.iso\n"
        f"  checksum=sha-256={H64}\n"
        "  split=4\n"
        "\theader=Authorization: Bearer s3cret\n"
        "https://a.example/plain.bin\n"
        "https://a.example/named\n"
        " out=sub/named.bin\n"
        "https://a.example/in-dir.bin\n"
        "  dir=d\n"
        "  max-connection-per-server=2\n"
    )
    with pytest.warns(UserWarning, match=r"ignored .*: header, max-connection-per-server, split$"):
        files = read_manifest(write(tmp_path, "input.txt", text))
    assert files == [
        File(
            "https://a.example/f.iso",
            "isos/debian.iso",
            hash=f"sha256:{H64}",
            mirrors=("https://b.example/f.iso", "https://c.example/f.iso"),
        ),
        File("https://a.example/plain.bin"),
        File("https://a.example/named", "sub/named.bin"),
        File("https://a.example/in-dir.bin", "d/in-dir.bin"),
    ]


def test_a_plain_url_list_reads_as_aria2_without_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "urls.txt", "https://a.example/1.jpg\nhttps://a.example/2.jpg\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert urls(read_manifest(path)) == ["https://a.example/1.jpg", "https://a.example/2.jpg"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("  out=x\nhttps://a.example/x\n", "line 1: an option line before any URL"),
        ("https://a.example/x\n  out\n", "line 2: option line without '='"),
        ("https://a.example/x\n  dir=/etc\n", "line 1: dir=/etc is absolute"),
        ("https://a.example/x\n  checksum=sha-384=" + "1" * 96, "unsupported hash algorithm"),
        ("https://a.example/x\n  out=../x\n", "outside dest"),
        ("https://a.example/x\tftp://m.example/x\n", "line 1: unsupported URL scheme ftp:"),
    ],
)
def test_bad_aria2_entries(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        read_manifest(write(tmp_path, "in", text), format="aria2")


# --- tables --------------------------------------------------------------------------------------


def test_csv_with_mapped_columns_and_pipe_mirrors(tmp_path: Path) -> None:
    text = (
        "\ufeffkey,image_url,caption,sha\n"
        f'img/1.jpg,https://a.example/1.jpg,"a cat, sitting",{H64}\n'
        ",https://a.example/2.jpg,,\n"
        "\n"
    )
    files = read_manifest(
        write(tmp_path, "images.csv", text),
        columns={"url": "image_url", "path": "key", "hash": "sha"},
    )
    assert files == [
        File("https://a.example/1.jpg", "img/1.jpg", hash=H64),
        File("https://a.example/2.jpg"),
    ]


def test_tsv_and_jsonl_with_mirrors(tmp_path: Path) -> None:
    tsv = (
        "url\tpath\tmirrors\nhttps://a.example/x\tx.bin\thttps://m.example/x|https://n.example/x\n"
    )
    jsonl = (
        '{"url": "https://a.example/x", "path": "x.bin", '
        '"mirrors": ["https://m.example/x", "https://n.example/x"]}\n\n'
        '{"url": "rel/y.bin", "mirrors": "https://m.example/y"}\n'
    )
    expected = File(
        "https://a.example/x", "x.bin", mirrors=("https://m.example/x", "https://n.example/x")
    )
    assert read_manifest(write(tmp_path, "list.tsv", tsv)) == [expected]
    assert read_manifest(write(tmp_path, "list.jsonl", jsonl), base_url=BASE) == [
        expected,
        File(BASE + "rel/y.bin", mirrors=("https://m.example/y",)),
    ]


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        (
            "a.csv",
            "link,path\nhttps://a.example/x,x\n",
            "no 'url' column \\(columns: 'link', 'path'",
        ),
        ("a.csv", "url,path\nhttps://a.example/x,x\n,y\n", "a.csv, line 3: no URL"),
        ("a.csv", 'url\n"https://a.example/x\n', "line 2"),
        ("a.csv", "url\nhttps://a.example/x\x00\n", "line 2"),
        ("a.jsonl", '{"url": "https://a.example/x"}\n{"url": 3}\n', "line 2: the URL is not text"),
        ("a.jsonl", '{"url": "https://a.example/x"}\n[1]\n', "line 2: not a JSON object"),
        ("a.jsonl", '{"url": "https://a.example/x", "path": 1}', "line 1: path must be text"),
        ("a.jsonl", '{"url": "https://a.example/x", "mirrors": 1}', "mirrors must be a list"),
        ("a.jsonl", "{nope\n", "line 1: not JSON"),
        ("a.jsonl", '{"url": "https://a.example/x", "hash": "sha256:1"}', "malformed sha256"),
    ],
)
def test_bad_table_rows(tmp_path: Path, name: str, text: str, words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        read_manifest(write(tmp_path, name, text))


def parquet(path: Path, rows: int, row_group_size: int = BATCH_ROWS, **extra: Any) -> Path:
    table = pa.table(
        {
            "image_url": [f"https://img.example/{i:07d}.jpg" for i in range(rows)],
            "key": [f"images/{i % 100:02d}/{i:07d}.jpg" for i in range(rows)],
            **extra,
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_parquet_is_a_lazy_sequence(tmp_path: Path) -> None:
    path = parquet(tmp_path / "images.parquet", 1000, row_group_size=300)
    files = read_manifest(path, columns={"url": "image_url", "path": "key"})
    assert isinstance(files, ParquetManifest)
    assert len(files) == 1000
    assert files[0] == File("https://img.example/0000000.jpg", "images/00/0000000.jpg")
    assert (
        files[-1] == files[999] == File("https://img.example/0000999.jpg", "images/99/0000999.jpg")
    )
    assert files[650].url.endswith("0000650.jpg")  # in the third row group
    assert urls(files[10:13]) == [f"https://img.example/{i:07d}.jpg" for i in (10, 11, 12)]
    assert len(list(files)) == 1000
    assert repr(files) == f"<ParquetManifest {str(path)!r}: 1,000 rows>"
    with pytest.raises(IndexError):
        files[1000]


def test_parquet_lists_binary_and_nulls(tmp_path: Path) -> None:
    table = pa.table(
        {
            "url": pa.array([b"https://a.example/x", b"https://a.example/y"], pa.binary()),
            "mirrors": [["https://m.example/x"], None],
            "hash": [f"md5:{H32}", None],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    assert list(read_manifest(tmp_path / "t.parquet")) == [
        File("https://a.example/x", hash=f"md5:{H32}", mirrors=("https://m.example/x",)),
        File("https://a.example/y"),
    ]


def test_a_bad_parquet_row_is_found_before_anything_is_returned(tmp_path: Path) -> None:
    rows = 40_000
    urls_ = [f"https://a.example/{i}" for i in range(rows)]
    urls_[33_333] = None  # type: ignore[call-overload]
    pq.write_table(pa.table({"url": urls_}), tmp_path / "t.parquet")
    with pytest.raises(ManifestError, match=r"t\.parquet, row 33334: no URL"):
        read_manifest(tmp_path / "t.parquet")
    skipped = read_manifest(tmp_path / "t.parquet", errors="skip")
    bad = [f for f in skipped if isinstance(f, BadRow)]
    assert len(bad) == 1
    assert "row 33334: no URL" in bad[0].error


def test_a_parquet_table_changed_after_reading_is_checked_again(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"url": ["https://a.example/1", "https://a.example/2"]}), path)
    files = read_manifest(path)
    assert urls(files) == ["https://a.example/1", "https://a.example/2"]
    pq.write_table(pa.table({"url": ["https://a.example/1", "ftp://a.example/3"]}), path)
    with pytest.raises(ManifestError, match="row 2: unsupported URL scheme ftp:"):
        list(files)


def test_a_parquet_without_the_url_column(tmp_path: Path) -> None:
    path = parquet(tmp_path / "t.parquet", 3)
    with pytest.raises(ManifestError, match="no 'url' column \\(columns: 'image_url', 'key'\\)"):
        read_manifest(path)


def test_parquet_is_read_in_batches_with_flat_memory(tmp_path: Path) -> None:
    path = parquet(tmp_path / "big.parquet", 100_000)
    tracemalloc.start()
    try:
        files = read_manifest(path, columns={"url": "image_url", "path": "key"})
        count = sum(1 for _ in files)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 100_000
    sample = files[:1000]
    as_list = 100 * sum(
        sys.getsizeof(f) + sys.getsizeof(f.url) + sys.getsizeof(f.path) for f in sample
    )
    # The Files alone, held in a list, would take `as_list` bytes. The peak (about a sixth
    # of it alone) is mostly pathlib's table of interned names, which earlier tests grow.
    assert peak < as_list / 2


# --- compression and detection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "pack"),
    [
        (".gz", lambda b: gzip.compress(b)),
        (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("", lambda b: gzip.compress(b)),  # found by its magic bytes
    ],
)
def test_compressed_text_manifests(
    tmp_path: Path, suffix: str, pack: Callable[[bytes], bytes]
) -> None:
    data = pack(f"{H64}  a.bin\n{H64}  b.bin\n".encode())
    files = read_manifest(write(tmp_path, "SHA256SUMS" + suffix, data), base_url=BASE)
    assert urls(files) == [BASE + "a.bin", BASE + "b.bin"]


def test_zstd_without_the_package_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "list.csv.zst", zstandard.ZstdCompressor().compress(b"url\n"))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ManifestError, match=r"pip install 'rheo_nb\[zstd\]'"):
        read_manifest(path)


def test_parquet_without_pyarrow_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = parquet(tmp_path / "t.parquet", 3)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ManifestError, match=r"pip install 'rheo_nb\[parquet\]'"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("name", "text", "count"),
    [
        ("SHA256SUMS", f"{H64}  a\n", 1),  # by name
        ("list", f"{H64}  a\n{H64}  b\n", 2),  # by content: GNU sums
        ("list", f"# made by hand\nSHA256 (a) = {H64}\n", 1),  # BSD tags
        ("list", f"a.csv sha256:{H64}\n", 1),  # registry
        ("list", "https://a.example/1\thttps://b.example/1\n", 1),  # aria2
        ("list", '{"url": "https://a.example/1"}\n', 1),  # jsonl
        ("list", "url,path\nhttps://a.example/1,x\n", 1),  # csv
        ("list", "url\tpath\nhttps://a.example/1\tx\n", 1),  # tsv
        ("registry.txt", "https://a.example/1 " + H64 + "\n", 1),  # name wins over content
    ],
)
def test_auto_detection_by_name_then_content(
    tmp_path: Path, name: str, text: str, count: int
) -> None:
    assert len(read_manifest(write(tmp_path, name, text), base_url=BASE)) == count


def test_parquet_is_found_by_its_magic_whatever_the_name(tmp_path: Path) -> None:
    path = parquet(tmp_path / "download", 2)
    assert len(read_manifest(path, columns={"url": "image_url"})) == 2


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "it is empty"),
        ("# only a comment\n", "it is empty"),
        ("hello world how are you\n", "cannot tell its format"),
    ],
)
def test_undetectable_manifests(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        read_manifest(write(tmp_path, "notes", text))


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "list.csv", b"url\n" + b"https://a.example/x\n" * 5000 + b"\xff\xfe\n")
    with pytest.raises(ManifestError, match="line 5002: not UTF-8"):
        read_manifest(path)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read it \\(No such file"):
        read_manifest(tmp_path / "SHA256SUMS")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"format": "xml"}, "format must be 'auto' or one of"),
        ({"errors": "ignore"}, "errors must be 'raise' or 'skip'"),
        ({"columns": {"link": "u"}}, "unknown field\\(s\\) link"),
        ({"columns": {"url": 3}}, "columns must map"),
        ({"columns": {"url": "u"}, "format": "sums"}, "columns= applies to csv"),
        ({"base_url": "ftp://x.example/"}, "base_url: unsupported URL scheme"),
        ({"retires": 3}, "unknown option\\(s\\): retires"),
    ],
)
def test_bad_arguments_are_option_errors(
    tmp_path: Path, kwargs: dict[str, Any], words: str
) -> None:
    path = write(tmp_path, "SHA256SUMS", f"{H64}  a.bin\n")
    with pytest.raises(OptionError, match=words):
        read_manifest(path, **kwargs)


def test_other_url_schemes_are_refused() -> None:
    with pytest.raises(OptionError, match="give a path or an http\\(s\\) URL"):
        read_manifest("s3://bucket/SHA256SUMS")


def test_errors_skip_keeps_bad_rows_as_failing_items(tmp_path: Path) -> None:
    text = f"{H64}  a.bin\nnot a line\n{H32}  c.bin\n{H64}  d.bin\n"
    files = read_manifest(write(tmp_path, "SHA256SUMS", text), base_url=BASE, errors="skip")
    assert [type(f).__name__ for f in files] == ["File", "BadRow", "BadRow", "File"]
    assert isinstance(files[1], BadRow)
    assert files[1].error.endswith(
        "SHA256SUMS, line 2: not a checksum line ('<hex>  name' or 'ALG (name) = <hex>')"
    )


# --- from a real server --------------------------------------------------------------------------


def serve(server: Server, name: str, body: bytes, *, token: str | None = None) -> str:
    """Mount ``body`` at a URL of this test's own (behind a bearer token when given)."""

    async def handler(request: web.Request, spec: Spec) -> web.StreamResponse:
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            return web.Response(status=401, text="who are you?\n")
        return web.Response(body=body, content_type="application/octet-stream")

    return server.handle(name, handler)


def gen_folder(server: Server) -> str:
    """The folder whose names are the server's generated files (of the default size)."""
    return f"{server.base_url}/gen/{server.tag}/"


def test_a_sums_dataset_end_to_end_with_plain_fetch(server: Server, dest: Path) -> None:
    names = ["train.csv", "test.csv", "images/0001.jpg", "images/0002.jpg"]
    text = "".join(f"{server.hash(n).split(':')[1]}  {n}\n" for n in names)
    manifest = serve(server, "SHA256SUMS", text.encode())
    files = read_manifest(manifest, base_url=gen_folder(server))
    results = rheo_nb.fetch_sync(files, dest, **FAST)
    assert [o.status for o in results] == [Status.COMPLETED] * 4
    for n in names:
        assert (dest / n).read_bytes() == server.content(n)
    again = rheo_nb.fetch_sync(read_manifest(manifest, base_url=gen_folder(server)), dest, **FAST)
    assert [o.status for o in again] == [Status.SKIPPED] * 4  # verified against the sums


def test_base_url_defaults_to_the_manifest_folder(server: Server, dest: Path) -> None:
    a = serve(server, "a.bin", b"alpha")
    serve(server, "b.bin", b"beta")
    sums = "".join(
        f"{hashlib.sha256(b).hexdigest()}  {n}\n"
        for n, b in [("a.bin", b"alpha"), ("b.bin", b"beta")]
    )
    manifest = serve(server, "SHA256SUMS", sums.encode())
    files = read_manifest(manifest + "?v=2")
    assert urls(files) == [a, a.replace("a.bin", "b.bin")]
    results = rheo_nb.fetch_sync(files, dest, **FAST)
    assert [o.status for o in results] == [Status.COMPLETED] * 2
    assert (dest / "b.bin").read_bytes() == b"beta"


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("registry.txt", lambda names, h, at: "".join(f"{n} {h(n)}\n" for n in names)),
        (
            "input.txt",
            lambda names, h, at: "".join(f"{at}{n}\n  checksum=sha-256={h(n)}\n" for n in names),
        ),
        ("list.csv", lambda names, h, at: "url,hash\n" + "".join(f"{n},{h(n)}\n" for n in names)),
        (
            "list.jsonl",
            lambda names, h, at: "".join(
                json.dumps({"url": n, "hash": h(n)}) + "\n" for n in names
            ),
        ),
    ],
)
def test_text_manifests_from_a_url_point_at_real_files(
    server: Server, dest: Path, name: str, render: Callable[..., str]
) -> None:
    names = ["x.bin", "sub/y.bin"]
    text = render(names, lambda n: server.hash(n).split(":")[1], gen_folder(server))
    files = read_manifest(serve(server, name, text.encode()), base_url=gen_folder(server))
    assert len(files) == 2
    assert all(f.hash for f in files)
    results = rheo_nb.fetch_sync(files, dest, **FAST)
    assert [o.status for o in results] == [Status.COMPLETED] * 2


def downloaded_manifests() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("rheo_nb-manifest-")}


def served_parquet(server: Server, rows: int = 30) -> tuple[str, list[str]]:
    names = [f"p{i}.bin" for i in range(rows)]
    table = pa.table(
        {"url": [gen_folder(server) + n for n in names], "hash": [server.hash(n) for n in names]}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=7)
    return serve(server, "images.parquet", buf.getvalue()), names


@pytest.mark.allow_blocking  # fetch_sync from a test; the facade's read is the xfail below
def test_a_parquet_manifest_from_a_url_feeds_fetch(server: Server, dest: Path) -> None:
    url, names = served_parquet(server)
    before = downloaded_manifests()
    files = read_manifest(url)
    assert isinstance(files, ParquetManifest)
    assert len(downloaded_manifests() - before) == 1  # read lazily: its copy is kept…
    results = rheo_nb.fetch_sync(files, dest, **FAST)
    assert len(results.ok) == 30
    assert sorted(os.listdir(dest)) == sorted(names)
    del files
    gc.collect()
    assert downloaded_manifests() - before == set()  # …until the sequence is gone


async def test_the_manager_reads_a_parquet_manifest_off_the_loop(
    server: Server, dest: Path
) -> None:
    """blockbuster (autouse) fails this test if a row is read on the event loop."""
    url, _ = served_parquet(server, rows=3000)
    files = await asyncio.to_thread(read_manifest, url)
    async with rheo_nb.DownloadManager(dest, concurrency=8) as m:
        assert m.stats.files == 0
        assert await m.add(files) == []  # a lazy source: read as the downloads go
        assert m.stats.files == 3000  # its length counts from the start
        results = await m.wait()
    assert len(results.ok) == 3000


async def test_fetch_reads_a_parquet_manifest_off_the_loop(server: Server, dest: Path) -> None:
    """blockbuster (autouse) fails this test if fetch reads a row on the event loop."""
    url, _ = served_parquet(server, rows=50)
    files = await asyncio.to_thread(read_manifest, url)
    results = await rheo_nb.fetch(files, dest, **FAST)
    assert len(results.ok) == 50


def test_start_takes_a_lazy_manifest_and_counts_it_once_queued(server: Server, dest: Path) -> None:
    url, _ = served_parquet(server, rows=20)
    files = read_manifest(url)
    job = rheo_nb.start(files, dest, **FAST)
    assert repr(job).startswith(("<Job starting: 20 files queued>", "<Job running", "<Job done"))
    assert len(job.result(30).ok) == 20
    lazy = (f for f in files)  # a generator: its length is not known before it is read
    job = rheo_nb.start(lazy, dest, **FAST)
    assert len(job.result(30)) == 20
    assert repr(job) == "<Job done: 20/20 files done · 1.9 MiB of 1.9 MiB>"


def test_a_private_manifest_takes_the_fetch_options(server: Server) -> None:
    url = serve(server, "SHA256SUMS", f"{H64}  a.bin\n".encode(), token="s3cret-t0ken")
    files = read_manifest(url, auth=rheo_nb.BearerToken("s3cret-t0ken"), retries=0)
    assert urls(files) == [url.replace("SHA256SUMS", "a.bin")]
    with pytest.raises(ManifestError, match="HTTP 401") as info:
        read_manifest(url, retries=0)
    assert "s3cret" not in str(info.value)


def test_a_manifest_that_cannot_be_downloaded_leaves_no_temp_folder(server: Server) -> None:
    before = downloaded_manifests()
    url = server.url("SHA256SUMS", status=404) + "&api_key=hunter2"
    with pytest.raises(ManifestError, match=r"cannot download it .*HTTP 404") as info:
        read_manifest(url, retries=0)
    assert "hunter2" not in str(info.value)
    assert downloaded_manifests() <= before


def test_a_served_manifest_with_a_bad_line_leaves_no_temp_folder(server: Server) -> None:
    before = downloaded_manifests()
    url = serve(server, "SHA256SUMS", f"{H64}  a.bin\n{H64}  ../b.bin\n".encode())
    with pytest.raises(ManifestError, match=r"SHA256SUMS, line 2: .*outside dest"):
        read_manifest(url)
    assert downloaded_manifests() <= before


def test_bad_rows_of_a_served_manifest_fail_alone_in_fetch(server: Server, dest: Path) -> None:
    good = ["g1.bin", "g2.bin"]
    text = "url\n" + "".join(f"{n}\n" for n in good[:1]) + "ftp://nope.example/x\n" + f"{good[1]}\n"
    files = read_manifest(
        serve(server, "list.csv", text.encode()), base_url=gen_folder(server), errors="skip"
    )
    results = rheo_nb.fetch_sync(files, dest, **FAST)
    assert [o.status for o in results] == [Status.COMPLETED, Status.FAILED, Status.COMPLETED]
    assert "list.csv, line 3: unsupported URL scheme ftp:" in (results[1].error or "")


@pytest.mark.parametrize("kind", ["aria2", "csv", "jsonl"])
def test_manifest_mirrors_take_over_and_bad_rows_fail_alone(
    server: Server, dest: Path, kind: str
) -> None:
    """A manifest's mirrors (aria2's TAB-separated URLs, a ``mirrors`` column) serve the
    files whose URL is gone; with errors="skip" a bad row fails on its own."""
    gone = [server.url(n, status=404) for n in ("m1.bin", "m3.bin")]
    good = [server.url(n, mirror=1) for n in ("m1.bin", "m3.bin")]
    h = [server.hash(n) for n in ("m1.bin", "m3.bin")]
    if kind == "aria2":
        text = (
            f"{gone[0]}\t{good[0]}\n  checksum=sha-256={h[0].split(':')[1]}\n"
            f"{server.url('m2.bin')}\n  checksum=sha-256=not-hex\n"
            f"{gone[1]}\t{good[1]}\n"
        )
        name = "input.txt"
    elif kind == "csv":
        text = (
            "url,hash,mirrors\n"
            f"{gone[0]},{h[0]},{good[0]}|{server.url('m1.bin', status=410)}\n"
            f"{server.url('m2.bin')},md5:xyz,\n"
            f"{gone[1]},,{good[1]}\n"
        )
        name = "list.csv"
    else:
        rows: list[dict[str, object]] = [
            {"url": gone[0], "hash": h[0], "mirrors": [good[0]]},
            {"url": server.url("m2.bin"), "mirrors": 7},
            {"url": gone[1], "mirrors": [good[1]]},
        ]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        name = "list.jsonl"
    files = read_manifest(serve(server, name, text.encode()), errors="skip")
    results = rheo_nb.fetch_sync(files, dest, **FAST)
    assert [o.status for o in results] == [Status.COMPLETED, Status.FAILED, Status.COMPLETED], [
        o.error for o in results
    ]
    assert [o.source_url for o in results.ok] == good
    assert [o.path.name for o in results.ok] == ["m1.bin", "m3.bin"]  # named after the URL
    assert (dest / "m1.bin").read_bytes() == server.content("m1.bin")
    assert f"{name}, line {2 if kind == 'jsonl' else 3}: " in (results[1].error or "")
    assert server.count("m2.bin") == 0  # the bad row was never requested


def test_a_folder_published_by_local_server_is_a_dataset_with_ranges(
    tmp_path: Path, dest: Path
) -> None:
    published = tmp_path / "published"
    (published / "sub").mkdir(parents=True)
    data = {"a.csv": b"x,y\n1,2\n", "sub/b.bin": os.urandom(300_000)}
    for name, body in data.items():
        (published / name).write_bytes(body)
    sums = "".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in data.items())
    (published / "SHA256SUMS").write_text(sums)
    (tmp_path / "secret.txt").write_text("not published")
    with rheo_nb.testing.LocalServer(folder=published) as local:
        files = read_manifest(local.folder_url("SHA256SUMS"))
        assert [f.url for f in files] == [local.folder_url(n) for n in data]
        results = rheo_nb.fetch_sync(files, dest, progress=False)
        assert [o.status for o in results] == [Status.COMPLETED] * 2
        assert (dest / "sub" / "b.bin").read_bytes() == data["sub/b.bin"]
        # Ranges, as a resume asks them, and nothing from outside the folder.
        asked = urllib.request.Request(
            local.folder_url("sub/b.bin"), headers={"Range": "bytes=10-19"}
        )
        with urllib.request.urlopen(asked) as resp:
            assert resp.status == 206
            assert resp.read() == data["sub/b.bin"][10:20]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{local.base_url}/folder/..%2Fsecret.txt")


# --- properties: any text parses or raises ManifestError -----------------------------------------

_lines = st.lists(
    st.one_of(
        st.text(max_size=80),
        st.sampled_from(
            [
                f"{H64}  a.bin",
                f"SHA256 (a/b) = {H64}",
                "https://a.example/x\thttps://b.example/x",
                "  out=../x",
                "  checksum=sha-256=zz",
                f"x.bin {H64} https://m.example/x",
                '{"url": "https://a.example/x", "mirrors": [1]}',
                "url,path,hash,mirrors",
                'https://a.example/x,"a\nb",,',
                "\\" + H64 + "  a\\nb",
            ]
        ),
    ),
    max_size=8,
)


@given(
    lines=_lines,
    fmt=st.sampled_from(["auto", "sums", "registry", "aria2", "csv", "tsv", "jsonl"]),
    skip=st.booleans(),
)
def test_manifest_parsers_never_crash_on_arbitrary_text(
    lines: list[str], fmt: Format, skip: bool
) -> None:
    errors: Literal["raise", "skip"] = "skip" if skip else "raise"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "manifest")
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                files = read_manifest(path, format=fmt, base_url=BASE, errors=errors)
        except ManifestError as exc:
            error = str(exc)
        else:
            error = ""
        if error:
            assert error.startswith(str(path))
            return
        for f in files:
            assert isinstance(f, File)
            assert skip or not isinstance(f, BadRow)


@given(data=st.binary(max_size=300), pack=st.sampled_from(["", "gz", "bz2"]))
def test_arbitrary_bytes_parse_or_raise_manifest_error(data: bytes, pack: str) -> None:
    if pack == "gz":
        data = gzip.compress(data)
    elif pack == "bz2":
        data = bz2.compress(data)  # not a manifest compression: read as (binary) text
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "manifest")
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                read_manifest(path, base_url=BASE)
        except ManifestError:
            pass
