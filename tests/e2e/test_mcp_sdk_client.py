"""The real MCP Python SDK client (`mcp` on PyPI), driven headlessly, gets from
the bare MCP URL to a working bearer token through the sidecar, in front of
the real Better Auth + convex() server, and refreshes it."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import jwt
import pytest
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from tests.e2e.conftest import Stack
from tests.support.oauth import Browser

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class MemoryTokens(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def test_the_mcp_sdk_client_discovers_registers_authorizes_and_refreshes(
    oauth_stack: Stack,
) -> None:
    base = oauth_stack.sidecar.url
    mcp_url = f"{base}/api/mcp"
    browser = Browser(base).sign_up("Grace Hopper")
    seen: dict[str, str] = {}

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

    storage = MemoryTokens()
    provider = OAuthClientProvider(
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
    async with httpx2.AsyncClient(auth=provider, timeout=20) as client:
        response = await client.get(mcp_url)
        assert response.status_code == 200, response.text
        first = storage.tokens
        assert first is not None
        assert first.refresh_token
        # The app saw the sidecar's token, for the MCP resource, for this user.
        bearer = response.json()["authorization"].split(" ", 1)[1]
        claims = jwt.decode(bearer, options={"verify_signature": False})
        assert claims["aud"] == mcp_url
        assert claims["iss"] == f"{base}/oauth" == seen["iss"]
        assert storage.client is not None
        assert claims["client_id"] == storage.client.client_id
        assert "prompt=consent" in seen["authorize"]
        assert "resource=" in seen["authorize"]

        # The app's own Convex login keeps working throughout.
        assert browser.get("/api/auth/convex/token").status_code == 200

        # Expire the access token on the client side: the SDK refreshes.
        provider.context.token_expiry_time = time.time() - 1
        again = await client.get(mcp_url)
        assert again.status_code == 200
        assert storage.tokens is not None
        assert storage.tokens.access_token != first.access_token
        assert storage.tokens.refresh_token != first.refresh_token

    userinfo = httpx.get(
        f"{base}/oauth/userinfo", headers={"Authorization": f"Bearer {storage.tokens.access_token}"}
    )
    assert userinfo.json()["email"] == browser.email
    assert browser.get("/api/auth/convex/token").status_code == 200
