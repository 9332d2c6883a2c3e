"""`make bench`: the sidecar measured beside the direct upstream, same run,
same load generator, so the printed ratios compare like with like.

(a) a trivial local upstream: small JSON and 1 MiB bodies, concurrency 1/16/64;
(b) the real Node Better Auth server's GET /api/auth/get-session, signed in.
(j) one person's grants read beside a million unrelated Redis keys
    (bench/store_scale.py), empty and filled, same run.

Uses wrk when installed (Debian package `wrk`), else a small aiohttp load
generator in a separate process (slower itself; the ratios are still fair).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.processes import (  # noqa: E402
    Process,
    free_port,
    node_available,
    start_better_auth,
    start_sidecar,
    start_upstream,
)


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, concurrency: int, seconds: int, headers: dict[str, str]) -> Result:
    threads = min(concurrency, 2)
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--latency"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return Result(rps, p50, p99, errors)


def python_load(url: str, concurrency: int, seconds: int, headers: dict[str, str]) -> Result:
    code = ROOT / "bench" / "pyload.py"
    out = subprocess.run(
        [sys.executable, str(code), url, str(concurrency), str(seconds), repr(headers)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps, p50, p99, errors = out.split()
    return Result(float(rps), float(p50), float(p99), int(errors))


def measure(url: str, concurrency: int, seconds: int, headers: dict[str, str]) -> Result:
    if shutil.which("wrk"):
        return wrk(url, concurrency, seconds, headers)
    return python_load(url, concurrency, seconds, headers)


def row(label: str, c: int, direct: Result, proxied: Result) -> str:
    ratio = proxied.rps / direct.rps if direct.rps else 0.0
    return (
        f"{label:<28} c={c:<3} direct {direct.rps:>8.0f} req/s p50 {direct.p50_ms:>6.2f} ms "
        f"p99 {direct.p99_ms:>7.2f} ms | sidecar {proxied.rps:>8.0f} req/s "
        f"p50 {proxied.p50_ms:>6.2f} ms p99 {proxied.p99_ms:>7.2f} ms | "
        f"ratio {ratio:>5.2f} added p50 {proxied.p50_ms - direct.p50_ms:>+6.2f} ms"
        + (f" errors {direct.errors}/{proxied.errors}" if direct.errors or proxied.errors else "")
    )


def bench_pair(
    label: str,
    upstream: str,
    sidecar: str,
    path: str,
    levels: list[int],
    seconds: int,
    headers: dict[str, str] | None = None,
) -> None:
    for c in levels:
        direct = measure(upstream + path, c, seconds, headers or {})
        proxied = measure(sidecar + path, c, seconds, headers or {})
        print(row(label, c, direct, proxied), flush=True)


def signed_in_cookie(stack_url: str, origin: str) -> str:
    with httpx.Client(base_url=stack_url, headers={"Origin": origin}) as c:
        c.post(
            "/api/auth/sign-up/email",
            json={
                "email": "bench@example.com",
                "password": "bench password 123",
                "name": "Bench",
            },
        ).raise_for_status()
        return "; ".join(f"{k}={v}" for k, v in c.cookies.items())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "5")))
    parser.add_argument(
        "--only",
        choices=[
            "proxy",
            "better-auth",
            "tokens",
            "consent",
            "gateway",
            "nginx",
            "workers",
            "image",
            "client-auth",
            "store-scale",
        ],
        default=None,
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="(e, f, g, i) also measure the sidecar as it was at this rev",
    )
    args = parser.parse_args()
    levels = [1, 16, 64]
    tool = "wrk" if shutil.which("wrk") else "python load generator (install wrk: better figures)"
    print(f"load generator: {tool}; {args.seconds}s per run; {os.cpu_count()} cores")

    processes: list[Process] = []
    try:
        if args.only in (None, "proxy"):
            upstream = start_upstream()
            processes.append(upstream)
            sidecar = start_sidecar(upstream.url, SIDECAR_LOG_LEVEL="warning")
            processes.append(sidecar)
            print("\n(a) trivial local upstream (uvicorn + uvloop + httptools)")
            bench_pair("small JSON", upstream.url, sidecar.url, "/small", levels, args.seconds)
            bench_pair(
                "1 MiB body",
                upstream.url,
                sidecar.url,
                "/download?size=1048576",
                levels,
                args.seconds,
            )
        if args.only in (None, "better-auth"):
            if not node_available():
                print("\n(b) skipped: Node or the Better Auth fixture is missing (run make test)")
            else:
                port = free_port()
                app = start_better_auth(TRUSTED_ORIGINS=f"http://127.0.0.1:{port}")
                processes.append(app)
                ba_sidecar = start_sidecar(app.url, port=port, SIDECAR_LOG_LEVEL="warning")
                processes.append(ba_sidecar)
                cookie = signed_in_cookie(app.url, app.url)
                print("\n(b) real Better Auth + convex() server (Node), signed in")
                bench_pair(
                    "GET /api/auth/get-session",
                    app.url,
                    ba_sidecar.url,
                    "/api/auth/get-session",
                    levels,
                    args.seconds,
                    {"Cookie": cookie},
                )
        if args.only in (None, "tokens"):
            if shutil.which("wrk"):
                from bench.tokens import run as run_tokens

                run_tokens(args.seconds)
            else:
                print("\n(c) skipped: the token benchmark needs wrk (apt-get install wrk)")
        if args.only in (None, "consent"):
            if shutil.which("wrk") and node_available():
                from bench.consent import run as run_consent

                run_consent(args.seconds, args.baseline)
            else:
                print("\n(e) skipped: needs wrk and the Node fixture")
        if args.only in (None, "gateway"):
            if shutil.which("wrk"):
                from bench.gateway import run as run_gateway

                run_gateway(args.seconds, args.baseline)
            else:
                print("\n(f) skipped: needs wrk")
        if args.only in (None, "nginx"):
            if shutil.which("wrk"):
                from bench.nginx import run as run_nginx

                run_nginx(args.seconds, args.baseline)
            else:
                print("\n(g) skipped: needs wrk")
        if args.only in (None, "workers"):
            if shutil.which("wrk"):
                from bench.workers import run as run_workers

                run_workers(args.seconds)
            else:
                print("\n(h) skipped: needs wrk")
        if args.only in (None, "client-auth"):
            if shutil.which("wrk"):
                from bench.client_auth import run as run_client_auth

                run_client_auth(args.seconds, args.baseline)
            else:
                print("\n(i) skipped: needs wrk")
        if args.only in (None, "store-scale"):
            from bench.store_scale import run as run_store_scale

            run_store_scale(args.seconds)
        if args.only in (None, "image"):
            from bench.image import run as run_image

            run_image()
    finally:
        for p in reversed(processes):
            p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
