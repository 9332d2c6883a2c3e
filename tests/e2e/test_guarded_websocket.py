"""A WebSocket upgrade on a guarded path needs the same token as any other
request to it: without one the handshake is answered 401 with the challenge
and the app never sees it; with one the app gets the person's identity and
never the client's own token."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.prefix_router import RouterStack, raw_request, start_router_stack


@pytest.fixture(scope="module")
def router() -> Iterator[RouterStack]:
    yield from start_router_stack()


def ws_url(stack: RouterStack, path: str) -> str:
    return stack.sidecar.url.replace("http://", "ws://") + path


def upgrade_headers(**extra: str) -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode(),
        **extra,
    }


@pytest.mark.parametrize("path", ["/api/mcp", "/api/mcp/ws", "/API/MCP/ws", "/api/mcp-admin"])
def test_an_upgrade_without_a_token_is_challenged_and_never_reaches_the_app(
    router: RouterStack, path: str
) -> None:
    probe = secrets.token_hex(6)
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(ws_url(router, path), additional_headers={"X-Probe": probe}),
    ):
        pass
    response = refused.value.response
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer resource_metadata="{router.sidecar.url}/.well-known/')
    assert router.seen_probe(probe) == []


def test_an_upgrade_with_a_forged_token_is_refused_and_never_reaches_the_app(
    router: RouterStack,
) -> None:
    probe = secrets.token_hex(6)
    headers = {"X-Probe": probe, "Authorization": "Bearer not-a-token"}
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(ws_url(router, "/api/mcp/ws"), additional_headers=headers),
    ):
        pass
    assert refused.value.response.status_code == 401
    assert 'error="invalid_token"' in refused.value.response.headers["WWW-Authenticate"]
    assert router.seen_probe(probe) == []


def test_an_upgrade_without_the_required_scope_is_refused_with_403(router: RouterStack) -> None:
    probe = secrets.token_hex(6)
    token = router.token("/api/mcp-admin")
    headers = {"X-Probe": probe, "Authorization": f"Bearer {token}"}
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(ws_url(router, "/api/mcp-admin"), additional_headers=headers),
    ):
        pass
    assert refused.value.response.status_code == 403
    assert 'error="insufficient_scope"' in refused.value.response.headers["WWW-Authenticate"]
    assert router.seen_probe(probe) == []


@pytest.mark.parametrize("target", ["/api/mcp/../ws", "/api/mcp/..%2fws", "/ws/../api/mcp"])
def test_an_upgrade_through_dot_segments_near_a_guarded_path_is_refused(
    router: RouterStack, target: str
) -> None:
    probe = secrets.token_hex(6)
    r = raw_request(router.sidecar, target, headers=upgrade_headers(**{"X-Probe": probe}))
    assert r.status == 400, (target, r.status, r.body[:200])
    assert router.seen_probe(probe) == []


def test_an_upgrade_with_a_valid_token_reaches_the_app_as_the_person_without_the_token(
    router: RouterStack,
) -> None:
    probe = secrets.token_hex(6)
    headers = {
        "X-Probe": probe,
        "Authorization": f"Bearer {router.token()}",
        "X-Sidecar-User-Id": "spoofed",
    }
    with connect(ws_url(router, "/api/mcp/ws"), additional_headers=headers) as ws:
        seen = json.loads(ws.recv(timeout=5))
    assert seen["upgrade"] is True
    assert seen["handler"] == "mcp"
    # No token passthrough: the client's own token stays at the gateway.
    assert seen["authorization"] is None
    assert (seen["userId"], seen["clientId"], seen["scopes"]) == ("user-1", "client-1", "openid")
    assert seen["convexToken"] is True
    assert [e["probe"] for e in router.seen_probe(probe)] == [probe]


def test_an_upgrade_on_an_unguarded_path_passes_as_it_came(router: RouterStack) -> None:
    headers = {"Authorization": "Bearer app-session", "X-Sidecar-User-Id": "spoofed"}
    with connect(ws_url(router, "/ws"), additional_headers=headers) as ws:
        seen = json.loads(ws.recv(timeout=5))
    assert seen["handler"] == "ws"
    assert seen["authorization"] == "Bearer app-session"
    assert seen["userId"] is None  # identity look-alikes are stripped on every path
