#!/usr/bin/env python3
"""One process against a Dask cluster on the same machine: many small files from nginx.

    python benchmarks/cluster.py                 # 20,000 x 16 KiB, one run of each
    python benchmarks/cluster.py --files 2000    # a quick look

Runs the command a user would (``rheo-nb get -i urls.txt -o DIR -q``), every byte checked
afterwards (size and sha256), three ways:

* one process: no cluster;
* ``--cluster local``: the command starts a LocalCluster (one worker process per core),
  downloads, and closes it: what a user pays end to end;
* ``--cluster tcp://…``: a LocalCluster already running (started here, as a notebook's
  ``Client()`` would be): the steady state, without the cluster's start-up.

For each: wall time, files per second, and CPU seconds by process (the command, the
scheduler, the workers, nginx), from which the per-file cost of each path follows. Then
what the cluster path adds per file, measured piece by piece in this process (planning a
file where the call is made, pickling it to a worker and its outcome back), and the cost
of a ``distributed.Semaphore`` lease, the other way to hold a per-host limit cluster-wide.

Needs Debian's nginx (and the echo module that ``bench.py`` loads) and ``rheo_nb[cluster]``.
The machine is shared and noisy: compare figures within one run.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import make_data, sha256, start_nginx  # noqa: E402

KiB = 1 << 10
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> float:
    """User + system CPU seconds of live processes so far (from /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` alive now."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            for child in (task / "children").read_text().split():
                out.append(int(child))
                todo.append(int(child))
    return out


@dataclass
class Run:
    name: str
    wall: float
    cpu: dict[str, float]
    ok: str


def run(name: str, cmd: list[str], out: Path, expected: dict[str, str],
        watched: dict[str, list[int]]) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    usage = out.parent / "usage.txt"
    before = {k: cpu_of(p) for k, p in watched.items()}
    here = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-o", str(usage), "-f", "%U %S", *cmd],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    now = resource.getrusage(resource.RUSAGE_SELF)
    user, system = usage.read_text().split()[-2:]
    cpu = {"command": float(user) + float(system)}
    cpu |= {k: cpu_of(p) - before[k] for k, p in watched.items()}
    if "scheduler" in watched:  # the scheduler runs in this process (a LocalCluster here)
        cpu["scheduler"] = (now.ru_utime + now.ru_stime) - (here.ru_utime + here.ru_stime)
    ok = "ok"
    if proc.returncode != 0:
        ok = f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}"
    else:
        bad = [n for n, d in expected.items() if not (out / n).is_file() or sha256(out / n) != d]
        if bad:
            ok = f"{len(bad)} files bad or missing, e.g. {bad[0]}"
    return Run(name, wall, cpu, ok)


def pieces(files: int, url: str) -> dict[str, float]:
    """Microseconds per file of what only the cluster path does, measured here."""
    from rheo_nb import File, Options, Status
    from rheo_nb.cluster import Shard, ShardResult
    from rheo_nb.items import Claims, Outcome, plan
    from rheo_nb.tracker import Stats

    items = [File(f"{url}/f{i:05d}.bin") for i in range(files)]
    t0 = time.perf_counter()
    claims = Claims()
    planned = [plan(f, Path("/dest"), {}, frozenset()) for f in items]
    for p in planned:
        claims.take(p)
    t_plan = time.perf_counter() - t0
    shard = Shard("c", 0, tuple(items), "/dest", Options(), {})
    t0 = time.perf_counter()
    pickle.loads(pickle.dumps(shard))
    t_shard = time.perf_counter() - t0
    outcomes = [
        Outcome(p.display_url, p.final, Status.COMPLETED, 16 * KiB, 0.01, None, p.download_id, p.file)
        for p in planned
    ]
    stats = Stats(files, 0, 0, files, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0)
    t0 = time.perf_counter()
    sent = pickle.dumps(ShardResult.of(outcomes, stats))  # on the worker
    pickle.loads(sent).outcomes(planned)  # where the call is made
    t_result = time.perf_counter() - t0
    size = len(sent)
    return {
        "plan + claim, where the call is made": t_plan / files * 1e6,
        "shard pickled to a worker and read": t_shard / files * 1e6,
        "outcome sent back as a row, and made an Outcome again": t_result / files * 1e6,
        "outcome bytes": size / files,
    }


def semaphore_cost(client: object, n: int = 300) -> float:
    """Milliseconds per acquire + release of a distributed.Semaphore, from a worker."""
    def leases(n: int) -> float:
        from distributed import Semaphore

        sem = Semaphore(max_leases=4, name="rheo_nb-bench")
        t0 = time.perf_counter()
        for _ in range(n):
            sem.acquire()
            sem.release()
        return (time.perf_counter() - t0) / n * 1e3

    return float(client.submit(leases, n, pure=False).result())  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=16 * KiB)
    parser.add_argument("-j", "--concurrency", type=int, default=16)
    parser.add_argument("--tmp", default=os.environ.get("RHEO_BENCH_TMP", "/dev/shm/rheo_nb-cluster-bench"))
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    tmp = Path(args.tmp)
    data, state = tmp / "data", Path(tempfile.mkdtemp(prefix="rheo_nb-cluster-bench-"))
    wanted = [(f"S/f{i:05d}.bin", args.size) for i in range(args.files)]
    print(f"preparing {len(wanted)} files in {data} …", file=sys.stderr)
    digests = make_data(data, wanted)
    expected = {Path(rel).name: d for rel, d in digests.items()}
    nginx, ports = start_nginx(state, data)
    base = f"http://127.0.0.1:{ports['plain']}"
    urls = state / "urls.txt"
    urls.write_text("".join(f"{base}/{rel}\n" for rel, _ in wanted))
    rheo = shutil.which("rheo-nb") or str(Path(sys.executable).with_name("rheo-nb"))
    get = [rheo, "get", "-q", "-j", str(args.concurrency), "-i", str(urls)]
    nginx_pids = [nginx.pid, *children_of(nginx.pid)]
    runs: list[Run] = []
    try:
        out = tmp / "out"
        runs.append(run("one process", [*get, "-o", str(out)], out, expected, {"nginx": nginx_pids}))
        runs.append(run("--cluster local (starts and closes it)", [*get, "-o", str(out), "--cluster", "local"],
                        out, expected, {"nginx": nginx_pids}))
        n = os.cpu_count() or 1
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            workers = list(client.run(os.getpid).values())
            runs.append(run(f"--cluster tcp://… ({n} workers running)",
                            [*get, "-o", str(out), "--cluster", cluster.scheduler_address], out, expected,
                            {"workers": workers, "nginx": nginx_pids, "scheduler": []}))
            lease = semaphore_cost(client)
        parts = pieces(args.files, base)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        shutil.rmtree(tmp / "out", ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)

    one = runs[0]
    print(f"\n## rheo_nb on a LocalCluster, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}; {args.files} files of {args.size // KiB} KiB "
          f"from nginx on 127.0.0.1; -j {args.concurrency}; one run each\n")
    print("| run | ok | wall (s) | files/s | × one process | CPU s: command | workers | scheduler, nannies | nginx | CPU ms per file |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        total = sum(r.cpu.values())
        cells = [f"{r.cpu.get(k, 0):.2f}" if k in r.cpu else "–" for k in ("command", "workers", "scheduler", "nginx")]
        print(f"| {r.name} | {r.ok} | {r.wall:.2f} | {args.files / r.wall:.0f} | {one.wall / r.wall:.2f} | "
              + " | ".join(cells) + f" | {total / args.files * 1e3:.3f} |")
    print("\nWhat the cluster path adds per file, measured in this process:\n")
    for name, value in parts.items():
        unit = "B" if name.endswith("bytes") else "µs"
        print(f"- {name}: {value:.1f} {unit}")
    print(f"- a distributed.Semaphore lease (acquire + release) from a worker: {lease:.2f} ms")
    return 0 if all(r.ok == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
