"""Network faults: refused, closed, cut short, stalled, trickling, dropped while idle.

Each fault fails (or retries) the one file it hits, with its cause in the message, leaves
nothing at the final path, and never stops the rest of the batch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faults import RawRequest, closed_port, head, leftovers, raw_server
from server import FAST, Server, of_type, run_manager

import rheo_nb
from rheo_nb import Status
from rheo_nb.events import Retrying


async def fetch(items: Any, dest: Path, **options: Any) -> rheo_nb.Results:
    return await rheo_nb.fetch(items, dest, **{**FAST, **options})


# --- no connection, no bytes ----------------------------------------------------------------------


async def test_connection_refused_is_retried_then_reported_and_the_batch_goes_on(
    server: Server, dest: Path
) -> None:
    refused = f"http://127.0.0.1:{closed_port()}/gone.bin"
    res, events = await run_manager(dest, [refused, server.url("ok.bin")], retries=2)
    bad, good = res
    assert bad.status is Status.FAILED
    assert bad.error is not None
    assert bad.error.startswith(refused)
    assert "cannot connect" in bad.error
    assert "(after 3 attempts)" in bad.error
    assert [e.attempt for e in of_type(events, Retrying)] == [1, 2]
    assert good.status is Status.COMPLETED
    assert leftovers(dest) == ["ok.bin"]


async def test_a_connection_closed_before_any_byte_is_a_transient_failure(dest: Path) -> None:
    async def hang_up(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        return False  # close without a byte

    with raw_server(hang_up) as raw:
        res = await fetch([raw.url("/silent.bin")], dest, retries=1)
    (o,) = res
    assert o.status is Status.FAILED
    assert o.error is not None
    assert "connection lost after 0 bytes" in o.error
    assert "(after 2 attempts)" in o.error
    # Our two attempts; aiohttp may also retry a request that met a closed connection once.
    assert 2 <= len(raw.requests) <= 4
    assert leftovers(dest) == []


# --- bodies cut short -----------------------------------------------------------------------------


async def test_a_body_shorter_than_its_content_length_is_never_final(dest: Path) -> None:
    async def short(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head(200, {"Content-Length": "10000"}) + b"x" * 4000)
        await writer.drain()
        return False

    with raw_server(short) as raw:
        res = await fetch([raw.url("/short.bin")], dest, retries=1)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "connection lost" in res[0].error
    assert len(raw.requests) == 2
    assert not (dest / "short.bin").exists()
    assert leftovers(dest) == []


async def test_a_chunked_body_without_its_last_chunk_is_never_final(dest: Path) -> None:
    async def unfinished(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head(200, {"Transfer-Encoding": "chunked"}))
        writer.write(b"1000\r\n" + b"y" * 0x1000 + b"\r\n")  # and never "0\r\n\r\n"
        await writer.drain()
        return False

    with raw_server(unfinished) as raw:
        res = await fetch([raw.url("/chunks.bin")], dest, retries=0)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "connection lost" in res[0].error
    assert leftovers(dest) == []


async def test_a_body_without_length_cut_short_is_caught_by_its_hash(dest: Path) -> None:
    # Without Content-Length, a close ends the body: only a hash can tell it was cut.
    async def close_delimited(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head(200, {"Connection": "close"}) + b"z" * 3000)
        await writer.drain()
        return False

    import hashlib

    whole = "sha256:" + hashlib.sha256(b"z" * 5000).hexdigest()
    with raw_server(close_delimited) as raw:
        res = await fetch([rheo_nb.File(raw.url("/nolen.bin"), hash=whole)], dest)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "sha256 mismatch" in res[0].error
    assert leftovers(dest) == []


async def test_a_dropped_body_is_resumed_on_the_next_attempt(server: Server, dest: Path) -> None:
    url = server.route_url("truncate", "drop.bin", 300_000, cut=120_000, times=1)
    res = await fetch([url], dest, chunk_size=4096)
    assert res[0].status is Status.COMPLETED
    _, second = server.requests("drop.bin")
    assert second.headers["Range"].startswith("bytes=")
    assert second.headers["Range"] != "bytes=0-"
    assert (dest / "drop.bin").read_bytes() == server.content("drop.bin", 300_000)


# --- stalls and trickles --------------------------------------------------------------------------


async def test_a_stalled_body_times_out_while_the_batch_goes_on(server: Server, dest: Path) -> None:
    stalled = server.route_url("stall", "stuck.bin", cut=5_000, stall=5)
    res = await asyncio.wait_for(
        fetch([stalled, server.url("fine.bin")], dest, timeout=0.3, retries=0), 10
    )
    stuck, fine = res
    assert stuck.status is Status.FAILED
    assert stuck.error is not None
    assert "no data for 0.3 s" in stuck.error
    assert fine.status is Status.COMPLETED
    assert not (dest / "stuck.bin").exists()


async def test_headers_then_silence_times_out(dest: Path) -> None:
    async def silent(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head(200, {"Content-Length": "1000"}))
        await writer.drain()
        await asyncio.sleep(10)
        return False

    with raw_server(silent) as raw:
        res = await asyncio.wait_for(fetch([raw.url()], dest, timeout=0.3, retries=0), 10)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "no data for 0.3 s after 0 bytes" in res[0].error


async def test_a_trickle_below_the_low_speed_limit_ends_the_attempt(
    server: Server, dest: Path
) -> None:
    # 100 bytes every 0.1 s: 1 000 B/s, under the default 1 KiB/s.
    url = server.route_url("trickle", "slow.bin", 100_000, step=100, every=0.1)
    res = await asyncio.wait_for(fetch([url], dest, retries=0, low_speed_time=0.5), 10)
    assert res[0].status is Status.FAILED
    assert res[0].error is not None
    assert "slower than 1.0 KiB/s for 0.5 s" in res[0].error
    assert "low_speed_limit" in res[0].error
    assert not (dest / "slow.bin").exists()


async def test_a_slow_but_useful_speed_is_not_ended(server: Server, dest: Path) -> None:
    # 1 000 B every 0.05 s: 20 kB/s, well above the limit.
    url = server.route_url("trickle", "steady.bin", 20_000, step=1000, every=0.05)
    res = await fetch([url], dest, retries=0, low_speed_time=0.3)
    assert res[0].status is Status.COMPLETED
    assert (dest / "steady.bin").read_bytes() == server.content("steady.bin", 20_000)


async def test_the_low_speed_limit_can_be_turned_off(server: Server, dest: Path) -> None:
    url = server.route_url("trickle", "patient.bin", 1_000, step=100, every=0.1)
    res = await fetch([url], dest, retries=0, low_speed_limit=0, low_speed_time=0.2)
    assert res[0].status is Status.COMPLETED


def test_the_default_low_speed_limit_is_1_kib_per_s_for_30_s() -> None:
    options = rheo_nb.Options()
    assert (options.low_speed_limit, options.low_speed_time) == (1024, 30.0)


# --- keep-alive -----------------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_dropped_by_the_server_is_retried_silently(
    dest: Path,
) -> None:
    # The first request on each connection is answered and the connection kept; a second
    # request on it finds the server gone, as when an idle timeout fires just then.
    async def once_per_connection(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if request.number > 1:
            return False
        body = request.target.encode() * 10
        writer.write(head(200, {"Content-Length": str(len(body))}) + body)
        await writer.drain()
        return True

    with raw_server(once_per_connection) as raw:
        res, events = await run_manager(
            dest, [raw.url(f"/k{i}.bin") for i in range(4)], concurrency=1, retries=0
        )
    assert [o.status for o in res] == [Status.COMPLETED] * 4
    assert of_type(events, Retrying) == []
    for i in range(4):
        assert (dest / f"k{i}.bin").read_bytes() == f"/k{i}.bin".encode() * 10
    assert any(r.number > 1 for r in raw.requests)  # a kept connection was met closed
    assert raw.connections >= 4
