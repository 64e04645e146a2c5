"""The S3 destination against a real S3 server on 127.0.0.1, checked through the S3 API."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from faults import wait_for
from s3 import PART, Attempt, S3Proxy, attempt, body, keys, parts, pending
from server import Server, Spec, send

from rheo_nb import objstore
from rheo_nb.errors import DestinationError, IntegrityError, OptionError, TransferError
from rheo_nb.hashing import parse_hash
from rheo_nb.testing import S3Server

MiB = 1 << 20


def bucket(s3_server: S3Server, name: str, **options: Any) -> objstore.Bucket:
    return objstore.Bucket(
        f"s3://{name}/data/", {**s3_server.storage_options, **options}, part_size=PART
    )


async def test_a_download_streams_into_one_object_with_its_hash_in_metadata(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 2 * PART + 12345
    url = server.url("big.bin", size)
    async with bucket(s3_server, s3_bucket) as b:
        assert await attempt(b, "data/big.bin", url, expected=server.hash("big.bin", size)) == size
    assert body(s3, s3_bucket, "data/big.bin") == server.content("big.bin", size)
    head = s3.head_object(Bucket=s3_bucket, Key="data/big.bin")
    assert head["Metadata"]["sha256"] == server.hash("big.bin", size).split(":")[1]
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/big.bin"]  # no resume record left behind


async def test_a_stream_cut_midway_resumes_after_the_parts_uploaded(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 3 * PART + 1000
    url = server.route_url("truncate", "cut.bin", size, cut=2 * PART + 300_000, times=1)
    async with bucket(s3_server, s3_bucket) as b:
        with pytest.raises(TransferError):
            await attempt(b, "data/cut.bin", url)
        # Nothing at the key; the upload is kept with its two whole parts and its record.
        assert pending(s3, s3_bucket) == ["data/cut.bin"]
        assert parts(s3, s3_bucket, "data/cut.bin") == [PART, PART]
        assert "data/cut.bin" not in keys(s3, s3_bucket)
        seen = Attempt()
        assert await attempt(b, "data/cut.bin", url, seen=seen) == size
    assert (seen.range, seen.status) == (f"bytes={2 * PART}-", 206)
    assert body(s3, s3_bucket, "data/cut.bin") == server.content("cut.bin", size)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/cut.bin"]


async def test_a_resume_with_a_hash_rereads_the_prefix_but_does_not_upload_it_again(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 3 * PART + 1000
    url = server.route_url("truncate", "h.bin", size, cut=2 * PART + 300_000, times=1)
    digest = server.hash("h.bin", size)
    with S3Proxy(s3_server.endpoint_url) as proxy:
        async with bucket(s3_server, s3_bucket, endpoint_url=proxy.endpoint_url) as b:
            with pytest.raises(TransferError):
                await attempt(b, "data/h.bin", url, expected=digest)
            proxy.requests.clear()
            seen = Attempt()
            assert await attempt(b, "data/h.bin", url, expected=digest, seen=seen) == size
    # The prefix came again from the source (to hash it), guarded by If-Range…
    assert (seen.range, seen.status) == ("bytes=0-", 206)
    # …and only parts 3 and 4 went to S3: parts 1 and 2 matched their ETags.
    uploaded = sorted(q for m, q in proxy.requests if m == "PUT" and "partNumber=" in q)
    assert [q.split("partNumber=")[1].split("&")[0] for q in uploaded] == ["3", "4"]
    assert body(s3, s3_bucket, "data/h.bin") == server.content("h.bin", size)
    assert pending(s3, s3_bucket) == []


async def test_a_hash_mismatch_aborts_the_upload_and_leaves_nothing(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 2 * PART + 5
    url = server.url("bad.bin", size)
    async with bucket(s3_server, s3_bucket) as b:
        with pytest.raises(IntegrityError, match="sha256 mismatch"):
            await attempt(b, "data/bad.bin", url, expected=server.hash("other.bin", size))
        with pytest.raises(IntegrityError, match="sha256 mismatch"):  # one PutObject size
            await attempt(
                b, "data/small.bin", server.url("small.bin", 1000), expected=server.hash("x", 9)
            )
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == []


async def test_a_cancel_keeps_the_upload_and_a_rerun_resumes_it(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 3 * PART + 77
    url = server.url("slow.bin", size, rate=8_000_000, slowfor=1)
    async with bucket(s3_server, s3_bucket) as b:
        task = asyncio.create_task(attempt(b, "data/slow.bin", url))

        def one_part_stored() -> bool:
            return (
                "data/slow.bin" in pending(s3, s3_bucket)
                and len(parts(s3, s3_bucket, "data/slow.bin")) >= 1
            )

        await asyncio.to_thread(wait_for, one_part_stored, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pending(s3, s3_bucket) == ["data/slow.bin"]
        done = sum(parts(s3, s3_bucket, "data/slow.bin"))
        assert done % PART == 0
        assert 0 < done < size
        [record] = [k for k in keys(s3, s3_bucket) if "/.rheo_nb/" in k]
        assert record.startswith("data/.rheo_nb/slow.bin.")
        seen = Attempt()
        assert await attempt(b, "data/slow.bin", url, seen=seen) == size
    assert seen.range == f"bytes={done}-"
    assert body(s3, s3_bucket, "data/slow.bin") == server.content("slow.bin", size)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/slow.bin"]


async def test_a_rerun_skips_an_object_whose_size_and_hash_match(
    s3_server: S3Server, s3_bucket: str, server: Server
) -> None:
    size = PART + 10
    digest = server.hash("done.bin", size)
    async with bucket(s3_server, s3_bucket) as b:
        await attempt(b, "data/done.bin", server.url("done.bin", size), expected=digest)
        parsed = parse_hash(digest)
        assert await b.existing("data/done.bin", size=size, expected=parsed) == size
        assert await b.existing("data/done.bin") == size  # no hash given: present is enough
        assert await b.existing("data/done.bin", size=size + 1) is None
        assert await b.existing("data/done.bin", expected=parse_hash(server.hash("x", 3))) is None
        assert await b.existing("data/absent.bin") is None


async def test_two_writers_of_one_key_end_with_one_whole_object(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 3 * PART + 99
    same = server.url("same.bin", size, rate=20_000_000)
    async with bucket(s3_server, s3_bucket) as b:
        results = await asyncio.gather(
            attempt(b, "data/same.bin", same),
            attempt(b, "data/same.bin", same),
            return_exceptions=True,
        )
        for r in results:  # each finished the object, or found it finished by the other
            assert r == size or (isinstance(r, objstore.AlreadyComplete) and r.size == size)
        assert body(s3, s3_bucket, "data/same.bin") == server.content("same.bin", size)
        # Two different sources for one key: the last completed wins, whole.
        a, c = server.url("a.bin", size, rate=20_000_000), server.url("c.bin", size)
        both = await asyncio.gather(attempt(b, "data/two.bin", a), attempt(b, "data/two.bin", c))
        assert list(both) == [size, size]
    assert body(s3, s3_bucket, "data/two.bin") in (
        server.content("a.bin", size),
        server.content("c.bin", size),
    )
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/same.bin", "data/two.bin"]


async def test_a_missing_bucket_is_a_clear_error(s3_server: S3Server) -> None:
    with pytest.raises(DestinationError, match="bucket 'no-such-bucket' does not exist"):
        async with bucket(s3_server, "no-such-bucket"):
            pass


async def test_wrong_credentials_fail_after_one_request_and_keep_the_secret(
    s3_server: S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-secret-0f1e2d3c4b5a"
    with S3Proxy(s3_server.endpoint_url) as proxy:
        b = bucket(s3_server, s3_bucket, secret=secret, endpoint_url=proxy.endpoint_url)
        assert secret not in repr(b)
        with pytest.raises(DestinationError, match="S3 refused the credentials") as info:
            async with b:
                pass
    assert len(proxy.requests) == 1
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    assert secret not in caplog.text
    assert info.value.__cause__ is None


async def test_clean_aborts_the_uploads_rheo_nb_left_and_no_others(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 2 * PART + 1
    url = server.route_url("truncate", "left.bin", size, cut=PART + 10)
    async with bucket(s3_server, s3_bucket) as b:
        with pytest.raises(TransferError):
            await attempt(b, "data/left.bin", url)
    s3.create_multipart_upload(Bucket=s3_bucket, Key="data/foreign.bin")
    assert pending(s3, s3_bucket) == ["data/foreign.bin", "data/left.bin"]
    cleaned = await objstore.clean(f"s3://{s3_bucket}/data/", s3_server.storage_options)
    assert cleaned == [f"s3://{s3_bucket}/data/left.bin"]
    assert pending(s3, s3_bucket) == ["data/foreign.bin"]
    assert keys(s3, s3_bucket) == []


async def test_segments_map_onto_parts_and_a_hash_is_checked_without_uploading_twice(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 3 * PART + 4321
    url = server.url("seg.bin", size)
    expected = parse_hash(server.hash("seg.bin", size))
    with S3Proxy(s3_server.endpoint_url) as proxy:
        async with bucket(s3_server, s3_bucket, endpoint_url=proxy.endpoint_url) as b:
            up = await b.upload("data/seg.bin", url=url, expected=expected)
            await up.start(server.etag("seg.bin", size), size, continuing=False)
            # Two segments on a part boundary, the second arriving first.
            await feed_range(up, url, 2 * PART, size)
            await feed_range(up, url, 0, 2 * PART)
            assert up.hashed == 2 * PART  # the second segment was not hashed
            with pytest.raises(IntegrityError, match="hashed in order"):
                await up.verify()
            await feed_range(up, url, up.hashed, size)  # bytes again, for the hash only
            assert await up.commit() == size
    uploads = [q for m, q in proxy.requests if m == "PUT" and "partNumber=" in q]
    assert len(uploads) == 4  # every part sent once
    assert body(s3, s3_bucket, "data/seg.bin") == server.content("seg.bin", size)
    head = s3.head_object(Bucket=s3_bucket, Key="data/seg.bin")
    assert head["Metadata"]["sha256"] == expected.hexdigest


async def feed_range(up: objstore.MultipartUpload, url: str, start: int, end: int) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Range": f"bytes={start}-{end - 1}"}) as resp,
    ):
        assert resp.status == 206
        offset = start
        async for chunk in resp.content.iter_chunked(1 << 20):
            await up.write_at(offset, [chunk])
            offset += len(chunk)


async def test_a_changed_source_starts_over_and_drops_the_old_upload(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    size = 2 * PART + 500

    async def versions(request: web.Request, spec: Spec) -> web.StreamResponse:
        if spec.seen == 1:  # version 1, cut off mid-way
            return await send(request, spec, headers={"ETag": '"v1"'}, cut=PART + 100)
        v2 = Spec(spec.tag, spec.name + "-v2", spec.query, spec.seen)
        return await send(request, v2, headers={"ETag": '"v2"'})  # If-Range fails: 200

    url = server.handle("changing.bin", versions) + f"?size={size}"
    async with bucket(s3_server, s3_bucket) as b:
        with pytest.raises(TransferError):
            await attempt(b, "data/changing.bin", url)
        seen = Attempt()
        assert await attempt(b, "data/changing.bin", url, seen=seen) == size
    assert (seen.range, seen.status) == (f"bytes={PART}-", 200)
    assert body(s3, s3_bucket, "data/changing.bin") == server.content("changing.bin-v2", size)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/changing.bin"]


async def test_without_the_s3_extra_the_error_names_it(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(OptionError, match=r"pip install 'rheo_nb\[s3\]'"):
        async with bucket(s3_server, "any-bucket"):
            pass


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("gs://bucket/x", "not an s3:// destination"),
        ("s3:///x", "not an s3:// destination"),
        ("s3://key:secret@bucket/x", "no query, fragment or credentials"),
    ],
)
def test_a_destination_that_is_not_an_s3_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(OptionError, match=message) as info:
        objstore.Bucket(url)
    assert "secret" not in str(info.value)


def test_part_size_grows_to_stay_within_ten_thousand_parts() -> None:
    assert objstore.part_size_for(None, 8 * MiB) == 8 * MiB
    assert objstore.part_size_for(80_000 * MiB, 8 * MiB) == 8 * MiB
    grown = objstore.part_size_for(200_000 * MiB, 8 * MiB)
    assert grown == 20 * MiB
    assert 200_000 * MiB / grown <= objstore.MAX_PARTS


async def test_completing_aborts_an_older_upload_of_the_same_source(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    # A first run without a hash is cut off; a rerun with one cannot continue it (the
    # record says no hash was checked) and starts afresh: once complete, the old upload
    # of the same source is aborted too, so nothing is left to pay for.
    size = 2 * PART + 3
    url = server.route_url("truncate", "old.bin", size, cut=PART + 10, times=1)
    async with bucket(s3_server, s3_bucket) as b:
        with pytest.raises(TransferError):
            await attempt(b, "data/old.bin", url)
        assert pending(s3, s3_bucket) == ["data/old.bin"]
        seen = Attempt()
        done = await attempt(
            b, "data/old.bin", url, expected=server.hash("old.bin", size), seen=seen
        )
    assert (done, seen.range) == (size, None)
    assert pending(s3, s3_bucket) == []
    assert keys(s3, s3_bucket) == ["data/old.bin"]
