"""Fail closed: no spelling of the public URL or of a guarded path lets a
request past the gateway, and a configuration the sidecar could not serve as
written stops start-up with one line naming the key."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tools.processes import Process, free_port, sidecar_env, start_sidecar, start_upstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[Process]:
    process = start_upstream()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def mixed_case(upstream: Process) -> Iterator[Process]:
    """The issue's own reproduction: one capital letter in the public host."""
    port = free_port()
    sidecar = start_sidecar(
        upstream.url,
        port=port,
        SIDECAR_PUBLIC_URL=f"http://LocalHost:{port}",
        SIDECAR_RESOURCES="/api/mcp, /echo/guarded",
    )
    yield sidecar
    sidecar.stop()


def raw_get(process: Process, target: str) -> tuple[int, dict[str, str]]:
    """A request whose target is sent exactly as written (httpx would resolve
    dot segments before sending)."""
    conn = http.client.HTTPConnection("127.0.0.1", process.port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_a_capital_letter_in_the_public_url_leaves_the_mcp_endpoint_guarded(
    mixed_case: Process,
) -> None:
    r = httpx.get(f"{mixed_case.url}/api/mcp")
    assert r.status_code == 401
    prm = f"http://localhost:{mixed_case.port}/.well-known/oauth-protected-resource/api/mcp"
    assert r.headers["www-authenticate"].startswith(f'Bearer resource_metadata="{prm}"')


def test_a_capital_letter_in_the_public_url_still_serves_the_resource_metadata(
    mixed_case: Process,
) -> None:
    r = httpx.get(f"{mixed_case.url}/.well-known/oauth-protected-resource/api/mcp")
    assert r.status_code == 200
    assert r.json()["resource"] == f"http://localhost:{mixed_case.port}/api/mcp"
    assert r.json()["authorization_servers"] == [f"http://localhost:{mixed_case.port}/oauth"]


@pytest.mark.parametrize(
    "target",
    [
        "/echo/guarded",
        "/ECHO/Guarded",
        "//echo//guarded",
        "/echo/guarded;x=1",
        "/echo/guarded/deeper?q=1",
        "/echo/%67uarded",
    ],
)
def test_every_spelling_an_app_could_route_to_a_guarded_path_is_guarded(
    mixed_case: Process, target: str
) -> None:
    # The upstream test app answers every /echo... path with 200: anything
    # but 401 here would be a request that got past the gateway.
    status, headers = raw_get(mixed_case, target)
    assert status == 401, target
    assert "resource_metadata=" in headers["www-authenticate"]


@pytest.mark.parametrize(
    "target",
    [
        "/echo/x/../guarded",
        "/echo/./guarded/",
        "/echo/guarded/../../x",
        "/echo/guarded/%2e%2e/x",
        "/echo/x/..%2fguarded",
    ],
)
def test_a_dot_segment_spelling_of_a_guarded_path_is_refused_not_guessed_at(
    mixed_case: Process, target: str
) -> None:
    status, headers = raw_get(mixed_case, target)
    assert status == 400, target
    assert "www-authenticate" not in headers


def test_a_dot_segment_on_an_unguarded_path_is_the_apps_to_resolve(mixed_case: Process) -> None:
    status, _ = raw_get(mixed_case, "/echo/x/../y")
    assert status == 200


def test_a_path_that_only_looks_like_a_guarded_one_passes_to_the_app(
    mixed_case: Process,
) -> None:
    status, _ = raw_get(mixed_case, "/echo/guarded-not")
    assert status == 200


def serve_exit(upstream: Process, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**sidecar_env(upstream.url, free_port()), **env}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "serve"],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "key", "says"),
    [
        ({"SIDECAR_RESOURCES": "/oauth/mcp"}, "resources", "unguarded"),
        ({"SIDECAR_RESOURCES": "https://other.example/mcp"}, "resources", "metadata-only"),
        ({"SIDECAR_PUBLIC_URL": "http://app.example.com"}, "public_url", "allow_insecure_http"),
        ({"SIDECAR_SCOPE_INCLUDES": "mcp:admin=mcp:read"}, "scope_includes", "offers"),
        ({"SIDECAR_RESOURCES": "/api/x/../mcp"}, "resources", "differently"),
        ({"SIDECAR_RESOURCES": "/api/mcp%2fx"}, "resources", "differently"),
        ({"SIDECAR_PUBLIC_URL": "http://127.0.0.1\t:8080"}, "public_url", "character"),
    ],
)
def test_a_configuration_that_could_not_be_served_as_written_stops_start_up(
    upstream: Process, env: dict[str, str], key: str, says: str
) -> None:
    done = serve_exit(upstream, **env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"configuration error: {key} " in lines[0]
    assert says in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
