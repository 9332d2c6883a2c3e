"""A stock prefix router (tests/e2e/node/prefix_router.mjs) behind a sidecar,
requests sent byte for byte, and access tokens signed with the deployment's
key the way the sidecar signs them."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from sidecar.config import load_settings
from sidecar.keys import load_keyset
from tools import fixtures
from tools.processes import ROOT, Process, free_port, require, start, start_sidecar

ROUTER_DIR = ROOT / "tests" / "e2e" / "node"
RESOURCES = "/api/mcp,/api/mcp-admin;scopes=mcp:admin"


@dataclass
class RouterStack:
    router: Process
    sidecar: Process

    def seen(self) -> list[dict[str, Any]]:
        """Every request the app's router was handed, read from the router itself."""
        entries: list[dict[str, Any]] = httpx.get(self.router.url + "/__seen").json()
        return entries

    def seen_probe(self, probe: str) -> list[dict[str, Any]]:
        return [e for e in self.seen() if e["probe"] == probe]

    def token(self, resource: str = "/api/mcp", scope: str = "openid", **claims: Any) -> str:
        """An access token as the sidecar issues it, for a resource on it."""
        base = self.sidecar.url
        keyset = load_keyset(
            load_settings(
                env={
                    "JWKS": fixtures.text("static-jwks.json"),
                    "BETTER_AUTH_SECRET": fixtures.SECRET,
                }
            )
        )
        now = int(time.time())
        body = {
            "iss": f"{base}/oauth",
            "sub": "user-1",
            "aud": f"{base}{resource}",
            "client_id": "client-1",
            "scope": scope,
            "jti": secrets.token_hex(8),
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        return keyset.sign(body, typ="at+jwt")


def start_router_stack() -> Iterator[RouterStack]:
    require(shutil.which("node") is not None, "Node is not installed")
    port = free_port()
    router = start(
        "prefix-router",
        ["node", "prefix_router.mjs"],
        port=port,
        env={"PORT": str(port)},
        ready_path="/healthz",
        cwd=ROUTER_DIR,
    )
    try:
        sidecar = start_sidecar(
            router.url,
            JWKS=fixtures.text("static-jwks.json"),
            BETTER_AUTH_SECRET=fixtures.SECRET,
            CONVEX_SITE_URL=router.url,
            SIDECAR_RESOURCES=RESOURCES,
            SIDECAR_SCOPES="openid,profile,email,offline_access,mcp:admin",
        )
    except Exception:
        router.stop()
        raise
    yield RouterStack(router, sidecar)
    sidecar.stop()
    router.stop()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    process: Process,
    target: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> RawResponse:
    """One request whose target goes on the wire exactly as written (httpx
    and most clients resolve dot segments and re-encode before sending). A
    101 answer is returned as soon as its head is read."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{process.port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    if not any(k.lower() == "connection" for k in headers or {}):
        lines.append("Connection: close")
    wire = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", process.port), timeout=timeout) as sock:
        sock.sendall(wire)
        data = b""
        while True:
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0 and data.startswith(b"HTTP/1.1 101"):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    parsed: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    return RawResponse(status, parsed, rest)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out
