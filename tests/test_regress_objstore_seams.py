"""Seams of object storage with cancel and retries.

An upload kept by a cancelled run is that run's resumable partial: a later run that
cannot reach the source (retries spent on a 503) fails, and leaves the upload for the
run after it, as a local partial is left. Only what a run started itself and cannot
continue is aborted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from faults import stream, wait_for
from s3 import pending
from server import FAST, Server, Spec, requested_range

import rheo_nb
from rheo_nb import Status
from rheo_nb.objstore import PART_SIZE
from rheo_nb.testing import S3Server

MiB = 1 << 20
BIG = 2 * PART_SIZE + 12345  # three parts of a multipart upload
KEY = "data/kept.bin"


def stored_bytes(s3: Any, bucket: str, key: str) -> int:
    """Bytes in the parts of the open uploads of ``key``."""
    total = 0
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        if upload["Key"] == key:
            listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            total += sum(p["Size"] for p in listed.get("Parts", []))
    return total


@pytest.mark.allow_blocking
def test_a_rerun_that_cannot_reach_the_source_keeps_the_upload_a_cancel_left(
    s3_server: S3Server, s3_bucket: str, s3: Any, server: Server
) -> None:
    down = {"down": False}

    async def source(request: web.Request, spec: Spec) -> web.StreamResponse:
        if down["down"]:
            return web.Response(status=503, text="down for maintenance\n")
        headers = {"ETag": '"kept"', "Accept-Ranges": "bytes"}
        rng = requested_range(request, BIG)
        if rng is None:
            return await stream(request, spec.key, BIG, headers=headers, rate=6 * MiB)
        start, end = rng
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{BIG}"
        return await stream(
            request, spec.key, BIG, start=start, end=end, status=206, headers=headers
        )

    url = server.handle("kept.bin", source)
    options = {**FAST, "storage_options": s3_server.storage_options, "segments": 1}
    dest = f"s3://{s3_bucket}/data"
    job = rheo_nb.start([url], dest, **options)
    try:
        wait_for(lambda: stored_bytes(s3, s3_bucket, KEY) >= PART_SIZE, 30)
    finally:
        job.cancel()
    with pytest.raises(asyncio.CancelledError):
        job.result(timeout=30)
    kept = stored_bytes(s3, s3_bucket, KEY)
    assert kept >= PART_SIZE
    down["down"] = True
    res = rheo_nb.fetch_sync([url], dest, **{**options, "retries": 1})
    assert res[0].status is Status.FAILED
    assert pending(s3, s3_bucket) == [KEY], "the upload the cancelled run kept was aborted"
    assert stored_bytes(s3, s3_bucket, KEY) == kept
