"""Path confusion: no spelling of a guarded path that an app could route gets
past the gateway. Every target is sent byte for byte, against the real
Better Auth app (whose MCP handler is mounted with a raw prefix match) and
against a stock prefix router that also matches decoded and normalised
spellings. A spelling that resolves differently from what was sent and
touches a guarded path is refused with 400; any other spelling of a guarded
path needs a token."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.test_gateway import token_for
from tests.support.prefix_router import RawResponse, RouterStack, raw_request, start_router_stack
from tools.oauth import Browser, OAuthClient

# Spellings whose resolution differs from what was sent, each touching a
# guarded path: refused, never guessed at.
AMBIGUOUS = [
    "/api/mcp/../x",
    "/api/mcp/..;/x",
    "/api/mcp/..%2fx",
    "/api/mcp/..%2Fx",
    "/api/mcp/%2e%2e/x",
    "/api/mcp/%2E%2E/x",
    "/api/mcp//..",
    "/api/mcp/.%2e/x",
    "/api/mcp/..",
    "/api/mcp/./x",
    "/api/mcp/x/..",
    "/api/mcp\\..\\x",
    "/api/mcp%5c..%5cx",
    "/api/mcp%2f..%2fx",
    "/api/mcp/%252e%252e/x",
    "/API/MCP/../x",
    "/x/..%2fapi/mcp",
    "/x/../api/mcp",
    "/x/%2e%2e/api/mcp",
    "/x/..;/api/mcp",
    "/x/..\\api/mcp",
    "/api/mcp-admin/../mcp",
    "/api/mcp-admin/..%2fmcp",
    "/api/x/..%2f..%2fapi/mcp-admin",
]

# Other spellings an app routes to a guarded path: they need a token.
GUARDED = [
    "/api/mcp",
    "/API/MCP/x",
    "/api/mcp;x",
    "/Api/Mcp;jsessionid=1/x",
    "//api//mcp",
    "/api/%6dcp",
    "/api/mcp-admin",
    "/api/MCP-ADMIN/x",
]

MCP_CALL = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "whoami", "arguments": {}},
    }
).encode()
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def router() -> Iterator[RouterStack]:
    yield from start_router_stack()


def probe_headers(**extra: str) -> tuple[str, dict[str, str]]:
    probe = secrets.token_hex(6)
    return probe, {"X-Probe": probe, **extra}


def assert_refused_by_the_sidecar(r: RawResponse, target: str) -> None:
    assert r.status == 400, (target, r.status, r.body[:300])
    assert r.json()["error"] == "invalid_request", target


def assert_challenged_by_the_sidecar(r: RawResponse, target: str, error: str | None) -> None:
    assert r.status == 401, (target, r.status, r.body[:300])
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer resource_metadata="'), target
    if error:
        assert f'error="{error}"' in challenge, target
    # The sidecar's own body: the app's challenge carries no description.
    assert "error_description" in r.json(), target


# -- a stock prefix router -------------------------------------------------


@pytest.mark.parametrize("target", AMBIGUOUS)
def test_a_dot_segment_or_encoded_separator_near_a_guarded_path_is_refused_before_the_app(
    router: RouterStack, target: str
) -> None:
    for authorization in (None, "Bearer not-a-token"):
        probe, headers = probe_headers()
        if authorization:
            headers["Authorization"] = authorization
        r = raw_request(router.sidecar, target, headers=headers)
        assert_refused_by_the_sidecar(r, target)
        assert router.seen_probe(probe) == [], target


@pytest.mark.parametrize("target", GUARDED)
def test_every_other_spelling_of_a_guarded_path_needs_a_token_before_the_app(
    router: RouterStack, target: str
) -> None:
    probe, headers = probe_headers()
    assert_challenged_by_the_sidecar(
        raw_request(router.sidecar, target, headers=headers), target, None
    )
    probe_bad, headers = probe_headers(Authorization="Bearer not-a-token")
    r = raw_request(router.sidecar, target, headers=headers)
    assert_challenged_by_the_sidecar(r, target, "invalid_token")
    assert router.seen_probe(probe) == router.seen_probe(probe_bad) == []


@pytest.mark.parametrize(
    "target", ["/api/mcp-admin/../mcp", "/api/mcp-admin/..%2fmcp", "/api/mcp/../mcp-admin"]
)
def test_a_valid_token_cannot_step_up_to_another_resource_through_dot_segments(
    router: RouterStack, target: str
) -> None:
    # Valid for /api/mcp, without mcp:admin: the admin handler must never run.
    for resource in ("/api/mcp", "/api/mcp-admin"):
        probe, headers = probe_headers(Authorization=f"Bearer {router.token(resource)}")
        r = raw_request(router.sidecar, target, headers=headers)
        assert_refused_by_the_sidecar(r, target)
        assert router.seen_probe(probe) == []


def test_a_valid_token_still_reaches_the_mcp_handler_as_the_person_without_its_token(
    router: RouterStack,
) -> None:
    probe, headers = probe_headers(Authorization=f"Bearer {router.token()}")
    r = raw_request(router.sidecar, "/api/mcp", headers=headers)
    assert r.status == 200, r.body
    seen = r.json()
    assert seen["handler"] == "mcp"
    assert seen["authorization"] is None
    assert (seen["userId"], seen["clientId"], seen["scopes"]) == ("user-1", "client-1", "openid")
    assert router.seen_probe(probe) == [seen]


def test_an_admin_token_reaches_the_admin_handler(router: RouterStack) -> None:
    token = router.token("/api/mcp-admin", scope="openid mcp:admin")
    r = raw_request(
        router.sidecar, "/api/mcp-admin/tools", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status == 200, r.body
    assert r.json()["handler"] == "mcp-admin"


@pytest.mark.parametrize(
    ("target", "handler"),
    [
        ("/api/auth/get-session", "auth"),
        ("/static/a..b.js", "static"),
        ("/static/./a.js", "static"),
        ("/static/../static/a.js", "static"),
        ("/static/a%20b.js", "static"),
    ],
)
def test_unguarded_paths_pass_through_as_sent(
    router: RouterStack, target: str, handler: str
) -> None:
    probe, headers = probe_headers(Authorization="Bearer app-session")
    r = raw_request(router.sidecar, target, headers=headers)
    assert r.status == 200, (target, r.status, r.body[:300])
    seen = r.json()
    assert (seen["url"], seen["handler"]) == (target, handler)
    assert seen["authorization"] == "Bearer app-session"
    assert router.seen_probe(probe) == [seen]


# -- the real Better Auth app ----------------------------------------------


@pytest.mark.parametrize("target", AMBIGUOUS)
def test_no_mcp_tool_runs_in_the_app_through_a_dot_segment_spelling(
    oauth_stack: Stack, target: str
) -> None:
    headers = {**MCP_HEADERS, "Authorization": "Bearer not-a-token"}
    r = raw_request(oauth_stack.sidecar, target, method="POST", headers=headers, body=MCP_CALL)
    assert_refused_by_the_sidecar(r, target)


@pytest.mark.parametrize("target", GUARDED)
def test_no_mcp_tool_runs_in_the_app_through_another_spelling_without_a_valid_token(
    oauth_stack: Stack, target: str
) -> None:
    headers = {**MCP_HEADERS, "Authorization": "Bearer not-a-token"}
    r = raw_request(oauth_stack.sidecar, target, method="POST", headers=headers, body=MCP_CALL)
    assert_challenged_by_the_sidecar(r, target, "invalid_token")


def test_a_real_token_without_mcp_admin_cannot_reach_the_admin_path_through_dot_segments(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    token = token_for(client, browser, f"{oauth_stack.sidecar.url}/api/mcp")
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    for target in ("/api/mcp-admin/../mcp", "/api/mcp-admin/..;/mcp", "/api/mcp-admin/%2e%2e/mcp"):
        r = raw_request(oauth_stack.sidecar, target, method="POST", headers=headers, body=MCP_CALL)
        assert_refused_by_the_sidecar(r, target)
    # The same token on the plain path runs the tool as the person.
    r = raw_request(oauth_stack.sidecar, "/api/mcp", method="POST", headers=headers, body=MCP_CALL)
    assert r.status == 200, r.body[:300]
    assert b'\\"clientId\\":\\"' + client.client_id.encode() in r.body


@pytest.mark.parametrize("target", ["/api/auth/get-session", "/static/a..b.js", "/static/./a.js"])
def test_the_apps_own_paths_still_pass_through_as_sent(oauth_stack: Stack, target: str) -> None:
    r = raw_request(oauth_stack.sidecar, target)
    if target.startswith("/api/auth"):
        assert r.status == 200
        assert r.json() is None  # nobody signed in
    else:
        assert r.status == 404
        assert r.json() == {"error": "not_found", "path": target}
