"""Seams of writer locks with filesystems without ``flock`` and killed processes.

Where ``flock`` fails (network mounts without a lock manager, common on HPC clusters), a
download writes to a part file of its own. The documented promise still holds: "a killed
process leaves a partial the next run resumes or discards". A part file that no run will
ever resume or remove is disk lost for good, one file's worth per killed run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from faults import leftovers, wait_for, working_files
from server import Server

MiB = 1 << 20

#: A download in another process on a filesystem whose flock() fails with ENOLCK (only
#: that syscall wrapper is replaced): URL argv[1] into argv[2]; prints the status.
CHILD = """
import errno, fcntl, os, sys

def no_locks(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

fcntl.flock = no_locks
import rheo_nb

res = rheo_nb.fetch_sync(
    [sys.argv[1]], sys.argv[2], progress=False, backoff=0.01, backoff_max=0.05, chunk_size=65536
)
print(res[0].status.value, flush=True)
"""


def without_flock(url: str, dest: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(dest)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_run_killed_where_flock_fails_leaves_nothing_the_next_run_keeps_forever(
    server: Server, dest: Path
) -> None:
    url = server.url("k.bin", 3 * MiB, rate=1.5 * MiB)
    killed = without_flock(url, dest)
    try:
        wait_for(lambda: any(p.suffix == ".part" for p in working_files(dest)), 20)
        wait_for(lambda: sum(p.stat().st_size for p in working_files(dest)) > MiB // 2, 20)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=10)
    rerun = without_flock(url, dest)
    out, err = rerun.communicate(timeout=50)
    assert out.strip() == "completed", err[-2000:]
    assert (dest / "k.bin").read_bytes() == server.content("k.bin", 3 * MiB)
    assert leftovers(dest) == ["k.bin"], "the killed run's part file stays for good"
