"""(i) The image (`make bench`, after `make image`): its size, and the time
from `podman run` to the first healthy answer of /oauth/healthz."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import httpx

from tools.processes import ROOT, free_port

IMAGE = os.environ.get("SIDECAR_IMAGE", "localhost/convex-oauth-sidecar:dev")


def run(runs: int = 5) -> None:
    conf = ROOT / ".build" / "image" / "containers.conf"
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    if not shutil.which("podman") or not conf.is_file():
        print("\n(i) skipped: needs podman and `make image`")
        return
    inspect = subprocess.run(
        ["podman", "image", "inspect", IMAGE, "--format", "{{.Size}}"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if inspect.returncode != 0:
        print(f"\n(i) skipped: {IMAGE} is not built (make image)")
        return
    size_mb = int(inspect.stdout.strip()) / 1e6
    times = []
    for _ in range(runs):
        name, port = f"bench-{uuid.uuid4().hex[:8]}", free_port()
        started = time.monotonic()
        subprocess.run(
            [
                *("podman", "run", "-d", "--name", name, "--network", "host"),
                *("--read-only", "--tmpfs", "/var/lib/sidecar:rw,U", "--tmpfs", "/tmp:rw"),
                *("--health-interval", "disable", "-e", "SIDECAR_HOST=127.0.0.1"),
                *("-e", f"SIDECAR_PORT={port}", "-e", "SIDECAR_METRICS_PORT=0", IMAGE),
            ],
            capture_output=True, env=env, check=True,
        )  # fmt: skip
        while True:
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/oauth/healthz", timeout=0.5).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
        times.append(time.monotonic() - started)
        subprocess.run(
            ["podman", "rm", "-f", "-t", "2", name], capture_output=True, env=env, check=False
        )
    times.sort()
    print(
        f"\n(i) image {IMAGE}: {size_mb:.0f} MB; podman run to healthy, {runs} runs: "
        f"median {times[len(times) // 2]:.2f} s, slowest {times[-1]:.2f} s"
    )
