"""Real processes for the tests, the demo and the benchmarks: the sidecar, a
local upstream, Node, redis-server.

Every process is started on a free loopback port, waited for until it answers,
and stopped (then killed) at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The Better Auth fixture; `make test-compat` points this at another version's.
NODE_DIR = Path(os.environ.get("SIDECAR_NODE_DIR") or ROOT / "tests" / "e2e" / "node").resolve()
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "better-auth"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(condition: bool, reason: str) -> None:
    """Skip when a real component is missing on a user's machine; in CI the
    same absence is a failure, never a skip."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra: dict[str, object] = field(default_factory=dict)
    scheme: str = "http"
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records

    def rss_kib(self) -> int:
        return _status_field(self.popen.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_field(self.popen.pid, "VmHWM")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise LookupError(name)


def start(
    name: str,
    argv: list[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/",
    cwd: Path | None = None,
    timeout: float = 30.0,
    scheme: str = "http",
    verify: str | bool = True,
    host: str = "127.0.0.1",
) -> Process:
    """``scheme``/``verify``: an https server, checked against this CA file."""
    log_dir = Path(tempfile.mkdtemp(prefix=f"sidecar-test-{name}-"))
    log_path = log_dir / "output.log"
    full_env = {**os.environ, **(env or {})}
    log_file = log_path.open("wb")
    popen = subprocess.Popen(
        argv, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or ROOT
    )
    log_file.close()
    process = Process(name, popen, port, log_path, scheme=scheme, host=host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode}:\n{process.log_text()}")
        try:
            checked = (
                ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
            )
            httpx.get(process.url + ready_path, timeout=1.0, verify=checked)
            return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.stop(signal.SIGKILL)
    raise RuntimeError(f"{name} did not answer within {timeout}s:\n{process.log_text()}")


def sidecar_env(upstream_url: str, port: int, **extra: str) -> dict[str, str]:
    data_dir = tempfile.mkdtemp(prefix="sidecar-data-")
    env = {
        "SIDECAR_UPSTREAM_URL": upstream_url,
        "SIDECAR_PORT": str(port),
        "SIDECAR_HOST": "127.0.0.1",
        "SIDECAR_METRICS_PORT": str(free_port()),
        "SIDECAR_DATA_DIR": data_dir,
        "SIDECAR_STORE_URL": f"sqlite:///{data_dir}/sidecar.db",
        "SIDECAR_LOG_FORMAT": "json",
        "SIDECAR_SHUTDOWN_TIMEOUT": "10",
        # Every test request comes from 127.0.0.1; the rate-limit tests set
        # their own limits.
        "SIDECAR_RATE_LIMIT_PER_IP": "0",
        "SIDECAR_RATE_LIMIT_PER_CLIENT": "0",
    }
    env.update(extra)
    return env


def signing_key_file() -> str:
    """A PEM signing key in a fresh directory: what replicas on one shared
    store sign with (a key generated per replica is refused at start)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = Path(tempfile.mkdtemp(prefix="sidecar-key-")) / "signing-key.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    return str(path)


def start_sidecar(
    upstream_url: str, port: int | None = None, cwd: Path | None = None, **extra: str
) -> Process:
    """``cwd``: another checkout's sidecar (the benchmark's baseline). With
    ``SIDECAR_TLS_CERTFILE`` it serves https, checked against ``TEST_CA_FILE``."""
    port = port or free_port()
    env = sidecar_env(upstream_url, port, **extra)
    tls = bool(env.get("SIDECAR_TLS_CERTFILE"))
    process = start(
        "sidecar",
        [sys.executable, "-m", "sidecar", "serve"],
        port=port,
        env=env,
        ready_path="/oauth/healthz",
        cwd=cwd,
        scheme="https" if tls else "http",
        verify=env.get("TEST_CA_FILE", True) if tls else True,
    )
    process.extra["env"] = env
    return process


def start_upstream(app: str = "tools.upstream_app:app") -> Process:
    port = free_port()
    return start(
        "upstream",
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "websockets-sansio",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        port=port,
        ready_path="/health",
    )


def node_available() -> bool:
    return shutil.which("node") is not None and (NODE_DIR / "node_modules" / "better-auth").is_dir()


def start_better_auth(port: int | None = None, **extra: str) -> Process:
    require(
        node_available(),
        "Node or the Better Auth fixture is missing (run `make test`, which installs it with npm)",
    )
    port = port or free_port()
    env = {"PORT": str(port), **extra}
    tls = bool(env.get("TLS_CERT"))
    return start(
        "better-auth",
        ["node", "server.mjs"],
        port=port,
        env=env,
        ready_path="/healthz",
        cwd=NODE_DIR,
        scheme="https" if tls else "http",
        verify=env.get("TEST_CA_FILE", True) if tls else True,
        # Served over TLS under a host name of its own (its certificate's).
        host="localhost" if tls else "127.0.0.1",
    )


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.stop()


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def start_redis(port: int | None = None, *extra: str, data_dir: str | None = None) -> Process:
    """A private redis-server on a free loopback port (never the shared one)."""
    require(redis_available(), "redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    data_dir = data_dir or tempfile.mkdtemp(prefix="sidecar-redis-")
    log_dir = Path(tempfile.mkdtemp(prefix="sidecar-test-redis-"))
    log_path = log_dir / "output.log"
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        data_dir,
        "--protected-mode",
        "no",
        *extra,
    ]
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    process = Process("redis", popen, port, log_path, {"data_dir": data_dir, "argv": argv})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            time.sleep(0.05)
    process.stop(signal.SIGKILL)
    raise RuntimeError(f"redis-server did not start:\n{process.log_text()}")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis cluster node")


def start_redis_cluster(nodes: int = 3) -> list[Process]:
    """A real Redis Cluster of ``nodes`` primaries on free loopback ports."""
    servers = []
    try:
        for _ in range(nodes):
            data_dir = tempfile.mkdtemp(prefix="sidecar-redis-cluster-")
            servers.append(
                start_redis(
                    free_cluster_port(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"{data_dir}/nodes.conf",
                    data_dir=data_dir,
                )
            )
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            info = subprocess.run(
                ["redis-cli", "-p", str(servers[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            if "cluster_state:ok" in info:
                return servers
            time.sleep(0.1)
        raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
    except Exception:
        for s in servers:
            s.stop()
        raise


def start_redis_sentinel(master: Process, service: str = "sidecar") -> Process:
    """One Sentinel watching ``master`` under ``service``."""
    port = free_port()
    conf_dir = Path(tempfile.mkdtemp(prefix="sidecar-sentinel-"))
    conf = conf_dir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {conf_dir}\n"
        f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {service} 1000\n"
    )
    log_path = conf_dir / "output.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"], stdout=log_file, stderr=subprocess.STDOUT
        )
    process = Process("sentinel", popen, port, log_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            out = subprocess.run(
                ["redis-cli", "-p", str(port), "sentinel", "get-master-addr-by-name", service],
                capture_output=True,
                text=True,
                timeout=2,
            ).stdout
            if str(master.port) in out:
                return process
        except (OSError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.1)
    process.stop(signal.SIGKILL)
    raise RuntimeError(f"sentinel did not start:\n{process.log_text()}")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (no openssl CLI)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def start_redis_tls() -> Process:
    """redis-server speaking only TLS; ``extra["ca"]`` is the CA file for clients."""
    require(redis_available(), "redis-server is not installed (apt-get install redis-server)")
    directory = Path(tempfile.mkdtemp(prefix="sidecar-redis-tls-"))
    cert, key = self_signed_certificate(directory)
    port = free_port()
    log_path = directory / "output.log"
    argv = [
        "redis-server",
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT)
    process = Process("redis-tls", popen, port, log_path, {"ca": str(cert)})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if b"Ready to accept connections" in log_path.read_bytes():
            return process
        if popen.poll() is not None:
            break
        time.sleep(0.05)
    process.stop(signal.SIGKILL)
    raise RuntimeError(f"redis-server with TLS did not start:\n{process.log_text()}")


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


def start_nginx(
    upstream_port: int,
    *,
    tls: tuple[Path, Path, Path] | None = None,
    ready_path: str = "/oauth/healthz",
) -> Process:
    """nginx with one worker proxying to ``upstream_port`` with keepalive and
    no buffering (the benchmark's yardstick). ``tls``: (cert, key, CA) to
    terminate TLS as an ingress would, sending X-Forwarded-Proto https and
    the client's address to a sidecar that trusts it."""
    require(nginx_available(), "nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="sidecar-nginx-"))
    listen = f"127.0.0.1:{port}"
    server_tls = ""
    forwarded = ""
    if tls is not None:
        cert, key, _ca = tls
        listen += " ssl"
        server_tls = f"ssl_certificate {cert}; ssl_certificate_key {key};"
        forwarded = (
            "proxy_set_header Host $http_host; "
            "proxy_set_header X-Forwarded-Proto https; "
            "proxy_set_header X-Forwarded-Host $http_host; "
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
        )
    (directory / "nginx.conf").write_text(
        f"""
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen {listen};
    {server_tls}
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      {forwarded}
      proxy_buffering off;
    }}
  }}
}}
"""
    )
    return start(
        "nginx",
        ["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf")],
        port=port,
        ready_path=ready_path,
        scheme="https" if tls else "http",
        verify=str(tls[2]) if tls else True,
    )
