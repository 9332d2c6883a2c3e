"""(h) One worker beside two (`make bench`): the proxy and the token endpoint,
the same load, the same run, on SQLite. On this 2-core machine the upstream
and wrk share the cores with the workers, so the gain is bounded by them."""

from __future__ import annotations

import asyncio
import tempfile

from bench.nginx import measure
from bench.tokens import mint, register, shared_key, wrk
from tools.processes import Process, free_port, start_sidecar, start_upstream


def run(seconds: int) -> None:
    print("\n(h) workers: 1 beside 2, same run (SQLite)")
    upstream = start_upstream()
    processes: list[Process] = [upstream]
    try:
        for workers in (1, 2):
            data = tempfile.mkdtemp(prefix="bench-workers-")
            env = {
                "SIDECAR_LOG_LEVEL": "warning",
                "SIDECAR_WORKERS": str(workers),
                "SIDECAR_PUBLIC_URL": f"http://127.0.0.1:{free_port()}",
                "SIDECAR_SIGNING_KEY_FILE": shared_key(data),
                "SIDECAR_DATA_DIR": data,
                "SIDECAR_STORE_URL": f"sqlite:///{data}/sidecar.db",
            }
            sidecar = start_sidecar(upstream.url, **env)
            processes.append(sidecar)
            proxied = measure(sidecar.url + "/small", sidecar, 64, seconds)
            client = register(sidecar.url)
            _, refresh = asyncio.run(mint({**env}, client, 1500 * seconds))
            tokens = wrk(sidecar.url + "/oauth/token", 16, seconds, refresh)
            print(
                f"  {workers} worker{'s' if workers > 1 else ' '}  small JSON c=64 "
                f"{proxied.result.rps:>7.0f} req/s CPU {proxied.cpu_us:>5.0f} µs | "
                f"refresh c=16 {tokens}",
                flush=True,
            )
            sidecar.stop()
    finally:
        for p in reversed(processes):
            p.stop()
