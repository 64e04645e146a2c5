#!/usr/bin/env python3
"""rheo_nb on the four loopback scenarios of the peer rig, runnable by anyone.

    python benchmarks/bench.py                 # full sizes (about 3.1 GiB of data in /dev/shm)
    python benchmarks/bench.py --quick         # small sizes, a minute
    python benchmarks/bench.py --scenarios AC --runs 5 --peers curl,aria2c

Starts its own nginx on 127.0.0.1 (Debian's ``nginx`` and ``libnginx-mod-http-echo``)
with three servers: plain; capped at 25 MiB/s per connection; +50 ms before every
response. Runs the ``rheo-nb get`` command a user would (progress display on, on a
pipe), optionally peer tools in the same run, checks every byte (size and sha256) and
prints a markdown table: median wall time, CPU, peak RSS. Compare figures only within
one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"


@dataclass
class Scenario:
    key: str
    title: str
    files: list[tuple[str, int]]
    server: str  # plain | capped | delayed


def scenarios(quick: bool) -> dict[str, Scenario]:
    small = [(f"A/f{i:04d}.bin", 32 * KiB) for i in range(2000)]
    large = [(f"B/f{i}.bin", 256 * MiB) for i in range(8)]
    if quick:
        return {
            "A": Scenario("A", "many small: 500 x 32 KiB", small[:500], "plain"),
            "B": Scenario("B", "few large: 2 x 256 MiB", large[:2], "plain"),
            "C": Scenario("C", "one capped: 1 x 256 MiB at 25 MiB/s per connection", large[:1], "capped"),
            "D": Scenario("D", "latency: 40 x 32 KiB, +50 ms per response", small[:40], "delayed"),
        }
    return {
        "A": Scenario("A", "many small: 2000 x 32 KiB", small, "plain"),
        "B": Scenario("B", "few large: 8 x 256 MiB", large, "plain"),
        "C": Scenario("C", "one capped: 1 x 1 GiB at 25 MiB/s per connection", [("C/big.bin", GiB)], "capped"),
        "D": Scenario("D", "latency: 100 x 32 KiB, +50 ms per response", small[:100], "delayed"),
    }


# --- data ------------------------------------------------------------------------------


def make_data(root: Path, wanted: list[tuple[str, int]]) -> dict[str, str]:
    """Create missing files with random bytes; return their sha256 by relative path."""
    digests = {}
    for rel, size in wanted:
        path = root / rel
        if not path.exists() or path.stat().st_size != size:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f, open("/dev/urandom", "rb") as rnd:
                left = size
                while left:
                    block = rnd.read(min(left, 8 * MiB))
                    f.write(block)
                    left -= len(block)
        digests[rel] = sha256(path)
    return digests


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


# --- server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(state: Path, root: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = {"plain": free_port(), "capped": free_port(), "delayed": free_port()}
    (state / "tmp").mkdir(parents=True, exist_ok=True)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {state}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = f"""load_module {ECHO_MODULE};
daemon off;
worker_processes auto;
pid {state}/nginx.pid;
error_log {state}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000;
{temp_paths}
    server {{ listen 127.0.0.1:{ports["plain"]}; root {root}; }}
    server {{ listen 127.0.0.1:{ports["capped"]}; root {root}; limit_rate 25m; }}
    server {{
        listen 127.0.0.1:{ports["delayed"]}; root {root};
        location / {{ echo_sleep 0.05; echo_exec @file; }}
        location @file {{ }}
    }}
}}
"""
    (state / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(["nginx", "-p", str(state), "-c", str(state / "nginx.conf")])
    deadline = time.monotonic() + 10
    for port in ports.values():
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"nginx did not start; see {state}/error.log") from None
                time.sleep(0.05)
    return proc, ports


# --- runs --------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    cpu: float
    rss_mib: float
    ok: bool
    note: str = ""


def run_once(cmd: list[str], out: Path, expected: dict[str, str], timeout: float) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    usage_file = out.parent / "usage.txt"
    # GNU time measures the client alone (a forked Python parent would inflate its RSS).
    timed = ["/usr/bin/time", "-o", str(usage_file), "-f", "%U %S %M", *cmd]
    t0 = time.perf_counter()
    try:
        # The display writes to a pipe, as in a CI log.
        proc = subprocess.run(timed, cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Run(time.perf_counter() - t0, 0, 0, False, "timeout")
    wall = time.perf_counter() - t0
    user, system, rss_kib = usage_file.read_text().split()[-3:]
    cpu, rss = float(user) + float(system), int(rss_kib) / 1024
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-300:]
        return Run(wall, cpu, rss, False, f"exit {proc.returncode}: {tail}")
    for name, digest in expected.items():
        path = out / name
        if not path.is_file() or sha256(path) != digest:
            return Run(wall, cpu, rss, False, f"bad or missing {name}")
    leftovers = sorted(p.name for p in out.iterdir() if p.name not in expected)
    if leftovers:
        return Run(wall, cpu, rss, False, f"left behind: {leftovers[:3]}")
    return Run(wall, cpu, rss, True)


def commands(client: str, urls_file: Path, out: Path, conc: int, scenario: str) -> list[str]:
    rheo = shutil.which("rheo-nb") or str(Path(sys.executable).with_name("rheo-nb"))
    if client == "rheo_nb":
        return [rheo, "get", "-j", str(conc), "-i", str(urls_file), "-o", str(out)]
    if client == "curl":
        cfg = out.parent / "curl.cfg"
        lines = []
        for url in urls_file.read_text().split():
            lines += [f'url = "{url}"', f'output = "{out}/{url.rsplit("/", 1)[1]}"']
        cfg.write_text("\n".join(lines) + "\n")
        return ["curl", "-sS", "--fail", "--parallel", "--parallel-max", str(conc), "-K", str(cfg)]
    if client == "aria2c":
        split = ["-x16", "-s16"] if scenario == "C" else [f"-j{conc}"]
        return ["aria2c", "-q", *split, "-i", str(urls_file), "-d", str(out),
                "--allow-overwrite=true", "--auto-file-renaming=false", "--file-allocation=none"]
    raise SystemExit(f"unknown client {client!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenarios", default="ABCD")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--peers", default="", help="also run these, e.g. curl,aria2c")
    parser.add_argument("--tmp", default=os.environ.get("RHEO_BENCH_TMP", "/dev/shm/rheo_nb-bench"))
    parser.add_argument("--timeout", type=float, default=150)
    parser.add_argument("--serve", action="store_true", help="only start nginx and wait (for profiling)")
    args = parser.parse_args()
    if not shutil.which("nginx") or not Path(ECHO_MODULE).exists():
        raise SystemExit("needs Debian's nginx and libnginx-mod-http-echo (apt-get install nginx libnginx-mod-http-echo)")

    tmp = Path(args.tmp)
    data, state = tmp / "data", Path(tempfile.mkdtemp(prefix="rheo_nb-bench-"))
    chosen = [s for k, s in scenarios(args.quick).items() if k in args.scenarios.upper()]
    wanted = sorted({f for s in chosen for f in s.files})
    print(f"preparing {len(wanted)} files in {data} …", file=sys.stderr)
    digests = make_data(data, wanted)
    nginx, ports = start_nginx(state, data)
    if args.serve:
        print(f"serving {data}: " + ", ".join(f"{k} http://127.0.0.1:{p}/" for k, p in ports.items()), flush=True)
        try:
            nginx.wait()
        finally:
            nginx.send_signal(signal.SIGQUIT)
        return 0
    clients = ["rheo_nb", *[c for c in args.peers.split(",") if c]]
    rows = []
    try:
        for sc in chosen:
            urls = state / f"urls-{sc.key}.txt"
            urls.write_text("".join(f"http://127.0.0.1:{ports[sc.server]}/{rel}\n" for rel, _ in sc.files))
            expected = {Path(rel).name: digests[rel] for rel, _ in sc.files}
            results: dict[str, list[Run]] = {c: [] for c in clients}
            for i in range(args.runs):
                order = clients[i % len(clients):] + clients[: i % len(clients)]
                for client in order:
                    out = tmp / "out" / client
                    cmd = commands(client, urls, out, args.conc, sc.key)
                    results[client].append(run_once(cmd, out, expected, args.timeout))
            total_bytes = sum(size for _, size in sc.files)
            for client, runs in results.items():
                good = [r for r in runs if r.ok]
                if not good:
                    rows.append(f"| {sc.key} | {client} | FAIL: {runs[0].note} | | | | | |")
                    continue
                wall = statistics.median(r.wall for r in good)
                rows.append(
                    f"| {sc.key} | {client} | {len(good)}/{len(runs)} | {wall:.2f} | "
                    f"{min(r.wall for r in good):.2f}-{max(r.wall for r in good):.2f} | "
                    f"{total_bytes / wall / 1e6:.0f} | {len(sc.files) / wall:.0f} | "
                    f"{statistics.median(r.cpu for r in good):.2f} | {max(r.rss_mib for r in good):.0f} |"
                )
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        shutil.rmtree(tmp / "out", ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)

    load = os.getloadavg()
    print(f"\n## rheo_nb loopback benchmark ({'quick' if args.quick else 'full'}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"\n{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {load[0]:.2f}; concurrency {args.conc}; median of {args.runs} runs\n")
    for sc in chosen:
        print(f"- {sc.key}: {sc.title}")
    print("\n| scen | client | ok | wall med (s) | min-max (s) | MB/s | files/s | CPU (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0 if all("FAIL" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
