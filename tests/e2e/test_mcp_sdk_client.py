"""The real MCP Python SDK client (`mcp` on PyPI), driven headlessly, goes
from the bare MCP URL to a tool call through the sidecar's gateway, in front
of the real Better Auth + convex() server and its TypeScript MCP endpoint;
then it refreshes its token and calls again."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientMetadata,
)

from tests.e2e.conftest import Stack
from tools.mcp_tokens import MemoryTokens
from tools.oauth import Browser

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def headless_provider(
    mcp_url: str, browser: Browser, seen: dict[str, str], storage: MemoryTokens
) -> OAuthClientProvider:
    async def redirect_handler(url: str) -> None:
        seen["authorize"] = url

    async def callback_handler() -> AuthorizationCodeResult:
        # The signed-in user's browser follows the authorization URL, sees the
        # consent page and approves; the redirect carries the code.
        def follow() -> str:
            page = browser.get(seen["authorize"])
            assert page.status_code == 200, page.text
            done = browser.consent(page)
            assert done.status_code == 303
            return done.headers["location"]

        location = await anyio.to_thread.run_sync(follow)
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        seen["iss"] = params["iss"]
        return AuthorizationCodeResult(
            code=params["code"], state=params.get("state"), iss=params.get("iss")
        )

    return OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="MCP SDK test client",
            redirect_uris=["http://127.0.0.1:33418/callback"],
            grant_types=["authorization_code", "refresh_token"],
            scope="openid profile email offline_access",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )


async def whoami(http: httpx2.AsyncClient, mcp_url: str, tool: str = "whoami") -> dict[str, Any]:
    async with (
        streamable_http_client(mcp_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        assert [t.name for t in tools.tools] == ["whoami", "convex_whoami"]
        result = await session.call_tool(tool, {})
        return json.loads(result.content[0].text)  # type: ignore[union-attr]


async def test_the_mcp_sdk_client_goes_from_the_bare_url_to_a_tool_call_and_refreshes(
    oauth_stack: Stack,
) -> None:
    base = oauth_stack.sidecar.url
    mcp_url = f"{base}/api/mcp"
    browser = Browser(base).sign_up("Grace Hopper")
    user_id = browser.get("/api/auth/get-session").json()["user"]["id"]
    seen: dict[str, str] = {}
    storage = MemoryTokens()
    provider = headless_provider(mcp_url, browser, seen, storage)

    async with httpx2.AsyncClient(auth=provider, timeout=20) as http:
        me = await whoami(http, mcp_url)
        # The tool sees the signed-in user, as the gateway verified them.
        assert me["userId"] == user_id
        assert me["email"] == browser.email
        assert storage.client is not None
        assert me["clientId"] == storage.client.client_id
        assert seen["iss"] == f"{base}/oauth"
        assert "resource=" in seen["authorize"]
        # The resource needs no scope, so its metadata names none; the server
        # does not list offline_access (the SDK would add it, and with it
        # prompt=consent), so the SDK asks for no scope and no prompt, not for
        # the server's whole list; the refresh token follows the
        # refresh_token grant it registered.
        query = parse_qs(urlsplit(seen["authorize"]).query)
        assert "scope" not in query
        assert "prompt" not in query
        first = storage.tokens
        assert first is not None
        assert first.refresh_token

        # The app's own Convex login keeps working throughout.
        assert browser.get("/api/auth/convex/token").status_code == 200

        # Expire the access token on the client side: the SDK refreshes.
        provider.context.token_expiry_time = time.time() - 1
        again = await whoami(http, mcp_url)
        assert again["userId"] == user_id
        assert storage.tokens is not None
        assert storage.tokens.access_token != first.access_token
        assert storage.tokens.refresh_token != first.refresh_token

    userinfo = httpx.get(
        f"{base}/oauth/userinfo", headers={"Authorization": f"Bearer {storage.tokens.access_token}"}
    )
    # No scope was asked for, so the default scopes apply (openid profile email).
    assert userinfo.json() == {"sub": user_id, "email": browser.email, "name": "Grace Hopper"}
    assert browser.get("/api/auth/convex/token").status_code == 200


async def test_the_readme_resources_example_reaches_both_resources_with_step_up() -> None:
    """SIDECAR_RESOURCES exactly as the README shows it, from the bare MCP
    URLs to tool calls with the SDK client. The 403 step-up is produced the
    way it happens in production: an operator starts requiring a scope the
    client's token lacks; the client re-authorizes under its first
    registration with the union of its scopes, and the person is asked only
    for what is new."""
    from tests.e2e.conftest import start_stack
    from tests.e2e.test_mcp_authorization_rules import README_RESOURCES
    from tools.processes import start_sidecar

    stack = start_stack(
        {"PUBLIC_URL": "{sidecar}"}, {"SIDECAR_RESOURCES": "/api/mcp, /api/admin-mcp"}
    )
    sidecar = stack.sidecar
    try:
        base = sidecar.url
        browser = Browser(base).sign_up("Katherine Johnson")
        user_id = browser.get("/api/auth/get-session").json()["user"]["id"]
        admin_url = f"{base}/api/admin-mcp"
        seen: dict[str, str] = {}
        storage = MemoryTokens()
        provider = headless_provider(admin_url, browser, seen, storage)
        async with httpx2.AsyncClient(auth=provider, timeout=20) as http:
            me = await whoami(http, admin_url)
        assert me["userId"] == user_id
        assert "mcp:admin" not in (me["scopes"] or "")
        assert storage.client is not None
        registered = storage.client.client_id

        # The operator applies the README's example: /api/admin-mcp now
        # requires mcp:admin. Same port, store and key.
        env = dict(sidecar.extra["env"])  # type: ignore[arg-type]
        sidecar.stop()
        env["SIDECAR_RESOURCES"] = README_RESOURCES
        env.pop("SIDECAR_UPSTREAM_URL")
        port = int(env.pop("SIDECAR_PORT"))
        sidecar = start_sidecar(stack.app.url, port=port, **env)

        seen.clear()
        async with httpx2.AsyncClient(auth=provider, timeout=20) as http:
            me = await whoami(http, admin_url)
        asked = parse_qs(urlsplit(seen["authorize"]).query)["scope"][0].split()
        assert "mcp:admin" in asked  # the union: old scopes and the challenged one
        assert "offline_access" not in asked  # not listed by the server, so not added
        assert storage.client.client_id == registered  # no new registration
        assert me["userId"] == user_id
        assert "mcp:admin" in me["scopes"].split()
        refusals = [
            r
            for r in sidecar.log_records()
            if r.get("path") == "/api/admin-mcp" and r.get("status") == 403
        ]
        assert refusals, "the stored token should have met 403 insufficient_scope first"

        # The other resource of the example, from its bare URL.
        mcp_url = f"{base}/api/mcp"
        other = headless_provider(mcp_url, browser, {}, MemoryTokens())
        async with httpx2.AsyncClient(auth=other, timeout=20) as http:
            assert (await whoami(http, mcp_url))["userId"] == user_id
        assert browser.get("/api/auth/convex/token").status_code == 200
    finally:
        sidecar.stop()
        stack.app.stop()
