"""`make demo`: an MCP client connects to an app's MCP endpoint through the
sidecar, from nothing but the MCP URL, and calls a tool as the signed-in user.

It starts the real Better Auth + convex() server (Node, with a TypeScript MCP
endpoint at /api/mcp) and the sidecar in front of it, signs a demo user in,
runs the MCP Python SDK client, prints each step, and stops what it started.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcp.client.auth import OAuthClientProvider  # noqa: E402
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata  # noqa: E402

from tools.mcp_tokens import MemoryTokens  # noqa: E402
from tools.oauth import Browser  # noqa: E402
from tools.processes import (  # noqa: E402
    free_port,
    node_available,
    start_better_auth,
    start_sidecar,
)

STEP = [0]


def say(text: str) -> None:
    STEP[0] += 1
    print(f"{STEP[0]:>2}. {text}", flush=True)


def narrate(response: httpx2.Response) -> None:
    """What each HTTP exchange of the client means, in plain words."""
    path = response.request.url.path
    status = response.status_code
    if path == "/api/mcp" and status == 401:
        header = response.headers.get("www-authenticate", "")
        say(f"The MCP endpoint answered 401 Unauthorized: {header}")
    elif path.startswith("/.well-known/oauth-protected-resource"):
        body = response.json()
        say(f"Read the resource's metadata: authorization server {body['authorization_servers']}")
    elif path.startswith("/.well-known/") and status == 200:
        say(f"Read the authorization server's metadata at {path}")
    elif path == "/oauth/register":
        say(f"Registered as an OAuth client (DCR): client_id {response.json()['client_id']}")
    elif path == "/oauth/token" and status == 200:
        say("Exchanged the code (with its PKCE verifier) for an access and a refresh token")


async def run_client(mcp_url: str, browser: Browser) -> None:
    pending: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:
        pending["url"] = url
        say("Sent the user's browser to the sidecar's /oauth/authorize")

    async def callback_handler() -> AuthorizationCodeResult:
        def browse() -> str:
            page = browser.get(pending["url"])
            say(
                f"The sidecar recognised the signed-in user ({browser.email}) through Better "
                "Auth and showed its consent page"
            )
            done = browser.consent(page)
            say("The user clicked Allow; the browser was redirected back with a code")
            return str(done.headers["location"])

        location = await anyio.to_thread.run_sync(browse)
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        return AuthorizationCodeResult(
            code=params["code"], state=params.get("state"), iss=params.get("iss")
        )

    provider = OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name="Demo MCP client",
            redirect_uris=["http://127.0.0.1:33418/callback"],
            grant_types=["authorization_code", "refresh_token"],
            scope="openid profile email offline_access",
        ),
        storage=MemoryTokens(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )

    async def hook(response: httpx2.Response) -> None:
        await response.aread()
        narrate(response)

    async with (
        httpx2.AsyncClient(auth=provider, timeout=20, event_hooks={"response": [hook]}) as http,
        streamable_http_client(mcp_url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        info = await session.initialize()
        say(f"Connected to the MCP server '{info.server_info.name}' with the bearer token")
        tools = await session.list_tools()
        say(f"It offers tools: {', '.join(t.name for t in tools.tools)}")
        result = await session.call_tool("whoami", {})
        me = json.loads(result.content[0].text)  # type: ignore[union-attr]
        say(
            f"Called whoami: the app sees user {me['email']} (id {me['userId']}), "
            f"client {me['clientId']}, scopes '{me['scopes']}'"
        )


def main() -> int:
    if not node_available():
        print("The demo needs Node and the Better Auth fixture: run `make demo` (it installs it).")
        return 1
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    print(
        "Starting the app (Better Auth + convex() in Node, MCP endpoint at /api/mcp) "
        "and the sidecar in front of it ..."
    )
    app = start_better_auth(TRUSTED_ORIGINS=public, PUBLIC_URL=public)
    try:
        sidecar = start_sidecar(
            app.url, port=port, SIDECAR_RESOURCES="/api/mcp", SIDECAR_LOG_LEVEL="warning"
        )
        try:
            print(
                f"App at {app.url}; sidecar at {public}; the client knows only {public}/api/mcp\n"
            )
            browser = Browser(public).sign_up("Demo User")
            say(f"A user signed up and in to the app through the sidecar: {browser.email}")
            anyio.run(run_client, f"{public}/api/mcp", browser)
            ok = browser.get("/api/auth/convex/token").status_code == 200
            say("The app's own Convex token route still answers: " + ("200 OK" if ok else "NOT OK"))
            print("\nDone: the MCP client went from the bare URL to a tool call as the user.")
            browser.client.close()
            return 0 if ok else 1
        finally:
            sidecar.stop()
    finally:
        app.stop()


if __name__ == "__main__":
    sys.exit(main())
