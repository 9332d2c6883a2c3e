"""(g) The passthrough beside nginx (`make bench`): the same trivial upstream,
the same load, the same run; nginx-light with one worker and keepalive to the
upstream, the sidecar as configured by default (access line and metrics on).
Reported per load: req/s, p50/p99 and CPU time per request of the serving
processes (/proc/<pid>/stat of the process and its children, divided by the
requests served): the figure to steer by on a shared, noisy machine. With
``--baseline REV`` the sidecar as it was at REV is measured in the same run,
each of its lines beside the same nginx."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.run import signed_in_cookie
from bench.tokens import Result, parse
from tools.checkout import checkout
from tools.processes import (
    Process,
    free_port,
    node_available,
    start_better_auth,
    start_nginx,
    start_sidecar,
    start_upstream,
)

TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its direct children (nginx's worker, the
    sidecar's workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


@dataclass
class Measured:
    result: Result
    cpu_us: float


def measure(
    url: str,
    process: Process,
    concurrency: int,
    seconds: int,
    extra: Sequence[str] = (),
    *,
    after: Sequence[str] = (),
    threads: int | None = None,
) -> Measured:
    """wrk against ``url`` (``extra``: wrk options; ``after``: a script's
    arguments), with the CPU time ``process`` and its children spent per
    request."""
    threads = threads or min(concurrency, 2)
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--latency"]
    before = tree_cpu(process.popen.pid)
    command = [*argv, *extra, url, *(["--", *after] if after else [])]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = parse(out)
    used = tree_cpu(process.popen.pid) - before
    served = result.rps * seconds
    return Measured(result, used / served * 1e6 if served else 0.0)


LOADS = [
    ("small JSON", "/small", [1, 16, 64]),
    ("1 MiB body", "/download?size=1048576", [16]),
    ("SSE, 200 events", "/events?n=200", [16]),
]


def run(seconds: int, baseline: str | None = None) -> None:
    if not shutil.which("nginx"):
        print("\n(g) skipped: nginx is not installed (apt-get install nginx-light)")
        return
    print("\n(g) the passthrough beside nginx (one worker each), same upstream, same run")
    with checkout(baseline) as tree:
        upstream = start_upstream()
        nginx = start_nginx(upstream.port, ready_path="/health")
        sidecar = start_sidecar(upstream.url, SIDECAR_LOG_LEVEL="info")
        before = start_sidecar(upstream.url, cwd=tree, SIDECAR_LOG_LEVEL="info") if tree else None
        try:
            for label, path, levels in LOADS:
                for c in levels:
                    compare(label, path, c, nginx, sidecar, seconds)
                    if before is not None and baseline:
                        compare(f"  at {baseline[:10]}", path, c, nginx, before, seconds)
        finally:
            if before is not None:
                before.stop()
            sidecar.stop()
            nginx.stop()
            upstream.stop()
    if not node_available():
        print("  Better Auth get-session skipped: Node or the fixture is missing (run make test)")
        return
    # The real Better Auth + convex() server behind each, signed in.
    port = free_port()
    app = start_better_auth(TRUSTED_ORIGINS=f"http://127.0.0.1:{port}")
    nginx = start_nginx(app.port, ready_path="/api/auth/ok")
    sidecar = start_sidecar(app.url, port=port, SIDECAR_LOG_LEVEL="info")
    try:
        cookie = ["-H", f"Cookie: {signed_in_cookie(app.url, app.url)}"]
        for c in (1, 16):
            compare("get-session", "/api/auth/get-session", c, nginx, sidecar, seconds, cookie)
    finally:
        sidecar.stop()
        nginx.stop()
        app.stop()


def compare(
    label: str,
    path: str,
    c: int,
    nginx: Process,
    sidecar: Process,
    seconds: int,
    extra: Sequence[str] = (),
) -> None:
    n = measure(nginx.url + path, nginx, c, seconds, extra)
    s = measure(sidecar.url + path, sidecar, c, seconds, extra)
    ratio = s.cpu_us / n.cpu_us if n.cpu_us else 0.0
    print(
        f"  {label:<16} c={c:<3} nginx {n.result.rps:>8.0f} req/s p50 "
        f"{n.result.p50_ms:>6.2f} p99 {n.result.p99_ms:>7.2f} CPU {n.cpu_us:>6.0f} µs"
        f" | sidecar {s.result.rps:>7.0f} req/s p50 {s.result.p50_ms:>6.2f} p99 "
        f"{s.result.p99_ms:>7.2f} CPU {s.cpu_us:>6.0f} µs | CPU ratio {ratio:>4.1f}",
        flush=True,
    )
