"""The progress widget with a bucket as the destination, in a real ipykernel: the state it
ends in, what it names each object, the Cancel button (a real comm message, as the
browser sends it) keeping the uploads for a rerun, and no secret in any message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter import Kernel, isolated_env
from s3 import keys, pending
from test_notebooks import bar_comm, button_comm, click, partly_filled
from test_objstore_fetch import stored_parts

from rheo_nb.objstore import PART_SIZE
from rheo_nb.testing import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

SETUP = """
import asyncio
import rheo_nb
from rheo_nb.testing import LocalServer

server = LocalServer().start()
MiB = 1 << 20
opts = json.loads({options!r})

def urls(tag, n, size=2 * MiB, rate=2 * MiB):
    return [server.url(f"{{tag}}-{{i}}.bin", size, rate=rate) for i in range(n)]
"""


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket("notebook-rheo")


@pytest.fixture(scope="module")
def kernel(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server, bucket: str
) -> Iterator[Kernel]:
    root = tmp_path_factory.mktemp("jupyter-s3")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in isolated_env(root).items():
            mp.setenv(name, value)
        work = root / "work"
        work.mkdir()
        with Kernel(work) as k:
            options = json.dumps(s3_server.storage_options)
            run = k.run("import json\n" + SETUP.format(options=options))
            assert run.status == "ok", run.errors
            yield k


def final_summary(messages: list[Any]) -> dict[str, Any]:
    updates = [m for m in messages if m.msg_type == "update_display_data"]
    assert updates, "the final summary was not published"
    data: dict[str, Any] = updates[-1].content["data"]
    return data


def shown(messages: list[Any]) -> str:
    """Everything the frontend was sent, as text."""
    return "\n".join(json.dumps(m.content, ensure_ascii=False) for m in messages)


def test_the_widget_ends_full_and_names_objects_by_their_key(
    kernel: Kernel, s3_server: S3Server, bucket: str, s3: Any
) -> None:
    run = kernel.run(
        f"r = await rheo_nb.fetch(urls('w', 3), 's3://{bucket}/nb/w', storage_options=opts)\n"
        "print(r.summary(), list(r.paths))"
    )
    assert run.status == "ok", run.errors
    assert run.text.startswith("3 files: 3 completed")
    assert f"'s3://{bucket}/nb/w/w-0.bin'" in run.text
    bar = bar_comm(run)
    values = [
        m.state["value"]
        for m in run.messages
        if m.msg_type == "comm_msg" and m.comm_id == bar and "value" in m.state
    ]
    assert values[-1:] == [1000]
    assert any(0 < v < 1000 for v in values), values  # live while it ran
    data = final_summary(run.messages)
    assert data["text/plain"].startswith("rheo_nb: ✔ done · 3 files: 3 completed")
    assert "100% · 3 / 3 files" in data["text/html"]
    text = shown(run.messages)
    assert "w-0.bin" in text
    assert "s3:/n" not in text  # no object URL mangled into a local path
    assert s3_server.secret_key not in text
    assert sorted(k for k in keys(s3, bucket) if k.startswith("nb/w/")) == [
        f"nb/w/w-{i}.bin" for i in range(3)
    ]


def test_the_cancel_button_keeps_the_uploads_and_a_rerun_resumes_them(
    kernel: Kernel, s3_server: S3Server, bucket: str, s3: Any
) -> None:
    dest = f"s3://{bucket}/nb/c"
    msg_id = kernel.submit(
        f"c = await rheo_nb.fetch(urls('c', 2, size=24 * MiB, rate=8 * MiB), '{dest}', "
        "storage_options=opts, segments=1)\nprint(c.summary())"
    )

    def a_part_each() -> bool:  # stored, so that the rerun has something to resume
        return all(stored_parts(s3, bucket, f"nb/c/c-{i}.bin") >= PART_SIZE for i in range(2))

    assert kernel.pump(lambda: partly_filled(kernel.runs[msg_id]) and a_part_each(), 60)
    click(kernel, button_comm(kernel.runs[msg_id]))
    assert kernel.pump(lambda: kernel.done(msg_id), 30)
    run = kernel.runs[msg_id]
    assert run.status == "ok", run.errors
    assert "2 cancelled" in run.text
    data = final_summary(run.messages)
    assert "cancelled" in data["text/plain"]
    assert [k for k in pending(s3, bucket) if k.startswith("nb/c/")] == [
        "nb/c/c-0.bin",
        "nb/c/c-1.bin",
    ]
    again = kernel.run(
        f"starts = []\n"
        f"async with rheo_nb.DownloadManager('{dest}', storage_options=opts) as m:\n"
        "    m.on('started', lambda e: starts.append(e.resumed_from))\n"
        "    await m.add(urls('c', 2, size=24 * MiB, rate=8 * MiB))\n"
        "    res = await m.wait()\n"
        "print(len(res.ok), all(s > 0 for s in starts), len(starts))",
        timeout=90,
    )
    assert again.status == "ok", again.errors
    # The test server's own log may precede it: the last line is the cell's answer.
    assert again.text.strip().splitlines()[-1] == "2 True 2"  # both completed, both resumed
    assert [k for k in pending(s3, bucket) if k.startswith("nb/c/")] == []
    assert s3_server.secret_key not in shown(run.messages) + shown(again.messages)
