"""The container image, built by `make image` and run here with podman as
`deploy/kubernetes/deployment.yaml` runs it: health and readiness, its own
HEALTHCHECK, metrics, uid and gid 10001, a read-only root with the data
directory and /tmp on tmpfs, no capabilities, no new privileges, its memory
limit, a clean SIGTERM, the whole OAuth flow against the real Better Auth
server, and two containers sharing a real Redis."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.certs import ThrowawayCA
from tools import fixtures
from tools.processes import (
    ROOT,
    Process,
    free_port,
    require,
    running,
    start_better_auth,
    start_redis,
)

IMAGE = os.environ.get("SIDECAR_IMAGE", "localhost/convex-oauth-sidecar:dev")
CONF = ROOT / ".build" / "image" / "containers.conf"
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"

pytestmark = pytest.mark.slow


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CONF)}
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def image() -> str:
    require(shutil.which("podman") is not None, "podman is not installed (apt-get install podman)")
    require(os.geteuid() == 0, "the image tests run podman as root")
    require(CONF.is_file(), "no .build/image/containers.conf: run `make image` first")
    built = podman("image", "exists", IMAGE, check=False).returncode == 0
    require(built, f"the image {IMAGE} is not built: run `make image` first")
    return IMAGE


def what_is_missing(stderr: str) -> str:
    """podman's refusal, said as what to change rather than as its stack."""
    if "cgroup" in stderr and ("hybrid" in stderr or "crun" in stderr):
        return (
            "podman's runtime refuses this host's cgroup layout (crun): the image tests need "
            f'runtime = "runc" in {CONF} (make image writes it) and runc installed; podman said: '
            + stderr.strip().splitlines()[-1]
        )
    if "ulimit" in stderr or "RLIMIT" in stderr:
        return (
            f"podman's default ulimits are above what this host allows: set default_ulimits in "
            f"{CONF} (make image writes it); podman said: " + stderr.strip().splitlines()[-1]
        )
    return "podman could not start the container: " + (stderr.strip().splitlines() or ["?"])[-1]


def k8s_container() -> dict[str, Any]:
    doc = yaml.safe_load(DEPLOYMENT.read_text())
    return doc["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def memory_limit() -> str:
    limit = str(k8s_container()["resources"]["limits"]["memory"])
    assert limit.endswith("Mi")
    return limit[:-2] + "m"


class Container:
    def __init__(
        self,
        image: str,
        env: dict[str, str],
        port: int | None = None,
        *,
        mounts: tuple[str, ...] = (),
        health_interval: str = "disable",
        ca: Path | None = None,
    ) -> None:
        """``ca``: the container serves https (SIDECAR_TLS_CERTFILE) with a
        certificate that CA signed; waited for over https, verified."""
        self.name = f"sidecar-test-{uuid.uuid4().hex[:8]}"
        self.port = port or free_port()
        self.metrics_port = free_port()
        full = {
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": str(self.port),
            "SIDECAR_METRICS_HOST": "127.0.0.1",
            "SIDECAR_METRICS_PORT": str(self.metrics_port),
            "SIDECAR_SHUTDOWN_TIMEOUT": "10",
            **env,
        }
        args = [
            *("run", "-d", "--name", self.name, "--network", "host"),
            # As deploy/kubernetes/deployment.yaml runs it.
            *("--read-only", "--tmpfs", "/var/lib/sidecar:rw,U", "--tmpfs", "/tmp:rw"),
            *("--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
            *("--memory", memory_limit(), "--health-interval", health_interval),
        ]
        for mount in mounts:
            args += ["-v", mount]
        for k, v in full.items():
            args += ["-e", f"{k}={v}"]
        started = podman(*args, image, check=False)
        if started.returncode != 0:
            raise RuntimeError(what_is_missing(started.stderr))
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(self.url + "/oauth/healthz", timeout=1, verify=verify)
                if answer.status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        logs = podman("logs", self.name, check=False).stdout
        self.remove()
        raise RuntimeError(f"the container did not become healthy:\n{logs}")

    def inspect(self, template: str) -> str:
        return podman("inspect", self.name, "--format", template).stdout.strip()

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-t", "2", self.name, check=False)


@pytest.fixture
def containers(image: str) -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.remove()


def start(image: str, made: list[Container], **env: str) -> Container:
    c = Container(image, env)
    made.append(c)
    return c


def test_the_image_starts_healthy_ready_and_serves_metrics(
    image: str, containers: list[Container]
) -> None:
    c = start(image, containers)
    assert httpx.get(c.url + "/oauth/readyz").json()["status"] == "ready"
    assert podman("healthcheck", "run", c.name, check=False).returncode == 0  # its own HEALTHCHECK
    metrics = httpx.get(f"http://127.0.0.1:{c.metrics_port}/metrics").text
    assert "sidecar_requests_total" in metrics


def health_status(c: Container) -> str:
    # podman 4.3 names it .State.Healthcheck (docker's .State.Health is an alias later).
    return c.inspect("{{.State.Healthcheck.Status}}")


def test_serving_tls_itself_the_image_reports_healthy(
    image: str, containers: list[Container], tmp_path: Path
) -> None:
    """SIDECAR_TLS_CERTFILE/KEYFILE set, a throwaway certificate mounted: the
    image's own HEALTHCHECK (deploy/healthcheck.py) asks over https and podman
    reports the container healthy. The plain-http probe it replaced never did:
    the TLS listener drops a request that is not a TLS handshake."""
    certs = tmp_path / "certs"
    ca = ThrowawayCA(certs)
    leaf = ca.issue("server", "127.0.0.1", "localhost")
    certs.chmod(0o755)  # the image's user (uid 10001) reads them through the mount
    for path in (leaf.cert, leaf.key):
        path.chmod(0o644)
    c = Container(
        image,
        {
            "SIDECAR_TLS_CERTFILE": f"/certs/{leaf.cert.name}",
            "SIDECAR_TLS_KEYFILE": f"/certs/{leaf.key.name}",
        },
        mounts=(f"{certs}:/certs:ro",),
        health_interval="1s",
        ca=ca.path,
    )
    containers.append(c)
    assert c.url.startswith("https://")
    # Without systemd podman's timer may not fire: run the check as the timer would.
    status = health_status(c)
    deadline = time.monotonic() + 20
    while status != "healthy" and time.monotonic() < deadline:
        podman("healthcheck", "run", c.name, check=False)
        status = health_status(c)
        if status != "healthy":
            time.sleep(0.5)
    assert status == "healthy", c.inspect("{{json .State.Healthcheck}}")


def test_it_runs_as_uid_and_gid_10001_with_no_capabilities(
    image: str, containers: list[Container]
) -> None:
    c = start(image, containers)
    pid = int(c.inspect("{{.State.Pid}}"))
    status = Path(f"/proc/{pid}/status").read_text()
    fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in status.splitlines()}
    assert fields["Uid"][:2] == ["10001", "10001"]
    assert fields["Gid"][:2] == ["10001", "10001"]
    assert int(fields["CapEff"][0], 16) == 0
    assert fields["NoNewPrivs"] == ["1"]
    assert c.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    limit_mib = int(memory_limit()[:-1])
    assert int(c.inspect("{{.HostConfig.Memory}}")) == limit_mib * 1024 * 1024
    spec = k8s_container()["securityContext"]
    assert spec["readOnlyRootFilesystem"] is True
    assert spec["allowPrivilegeEscalation"] is False
    # The root really is read-only; the data directory is writable.
    probe = podman(
        "exec",
        c.name,
        "sh",
        "-c",
        "touch /opt/x 2>&1; touch /var/lib/sidecar/x && echo ok",
        check=False,
    )
    assert "Read-only file system" in probe.stdout
    assert probe.stdout.strip().endswith("ok")


def test_sigterm_ends_it_with_exit_code_zero_within_the_drain(
    image: str, containers: list[Container]
) -> None:
    c = start(image, containers)
    started = time.monotonic()
    podman("stop", "-t", "15", c.name)
    assert time.monotonic() - started < 15
    assert c.inspect("{{.State.ExitCode}}") == "0"
    assert "sidecar stopped" in c.logs()


def keys(site: str) -> dict[str, str]:
    return {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": site,
    }


def test_the_whole_oauth_flow_runs_through_the_container(
    image: str, containers: list[Container]
) -> None:
    from tests.e2e.test_deployment_shapes import Journey

    port = free_port()
    public = f"http://127.0.0.1:{port}"
    app = start_better_auth(TRUSTED_ORIGINS=public, PUBLIC_URL=public, **keys(public))
    with running(app):
        c = Container(
            image,
            {"SIDECAR_UPSTREAM_URL": app.url, "SIDECAR_RESOURCES": "/api/mcp", **keys(public)},
            port=port,
        )
        containers.append(c)
        journey = Journey(public, True)
        try:
            journey.whole_flow()
        finally:
            journey.close()


def test_two_containers_on_one_redis_redeem_a_code_exactly_once(
    image: str, containers: list[Container]
) -> None:
    from tests.scale.test_replicas import REDIRECT, post_all
    from tools.oauth import mint_code_form

    redis: Process = start_redis()
    with running(redis):
        public = f"http://127.0.0.1:{free_port()}"  # the load balancer's address
        env = {
            "SIDECAR_STORE_URL": f"redis://127.0.0.1:{redis.port}/0",
            "SIDECAR_PUBLIC_URL": public,
            "SIDECAR_UPSTREAM_URL": "http://127.0.0.1:9",
            **keys(public),
        }
        pair = [start(image, containers, **env) for _ in range(2)]
        client_id = httpx.post(
            pair[0].url + "/oauth/register", json={"redirect_uris": [REDIRECT]}
        ).json()["client_id"]
        form = mint_code_form(env, client_id, REDIRECT)
        answers = asyncio.run(
            post_all([(c.url + "/oauth/token", form) for c in pair for _ in range(20)])
        )
        assert Counter(r.status_code for r in answers) == {200: 1, 400: 39}
