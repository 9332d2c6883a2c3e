"""Convex functions run as the person behind an MCP call, with a token the
gateway minted for Convex, and the client's own token never passed on.

No Convex backend runs here: the Node app checks the Convex token exactly by
Convex's customJwt rules against the provider entry `sidecar convex-auth-config`
printed, and finds the person with the real `@convex-dev/better-auth`
`createClient(...)` code against its real Better Auth database."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import httpx2
import jwt
import pytest

from sidecar.config import load_settings
from sidecar.keys import load_keyset
from tests.e2e.conftest import Stack
from tests.e2e.test_mcp_sdk_client import headless_provider, whoami
from tools import fixtures
from tools.mcp_tokens import MemoryTokens
from tools.oauth import Browser, OAuthClient
from tools.processes import running, start_sidecar, start_upstream

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def token_for(stack: Stack, browser: Browser, client: OAuthClient) -> dict[str, Any]:
    code = client.login(browser, resource=f"{stack.sidecar.url}/api/mcp", scope="openid email")
    return client.exchange(code["code"]).json()  # type: ignore[no-any-return]


def echo(stack: Stack, token: str, **headers: str) -> httpx.Response:
    return httpx.get(
        f"{stack.sidecar.url}/api/mcp/echo", headers={"Authorization": f"Bearer {token}", **headers}
    )


def convex_accepts(stack: Stack, token: str) -> dict[str, Any]:
    return httpx.post(f"{stack.app.url}/convex-check", content=token).json()  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_an_mcp_tool_call_runs_in_convex_as_the_person(oauth_stack: Stack) -> None:
    base = oauth_stack.sidecar.url
    browser = Browser(base).sign_up("Gladys West")
    user_id = browser.get("/api/auth/get-session").json()["user"]["id"]
    storage = MemoryTokens()
    provider = headless_provider(f"{base}/api/mcp", browser, {}, storage)
    async with httpx2.AsyncClient(auth=provider, timeout=20) as http:
        seen = await whoami(http, f"{base}/api/mcp", tool="convex_whoami")
    assert "error" not in seen, seen
    # What ctx.auth.getUserIdentity() answers in Convex, and who the
    # README's lookup (getAnyUserById after checking the issuer) finds.
    assert seen["subject"] == user_id
    assert seen["issuer"] == f"{base}/oauth"
    assert seen["tokenIdentifier"] == f"{base}/oauth|{user_id}"
    assert storage.client is not None
    assert seen["clientId"] == storage.client.client_id
    assert seen["resource"] == f"{base}/api/mcp"
    assert seen["user"] == {"id": user_id, "email": browser.email}
    # getAuthUser needs a live Better Auth session id; an MCP token has none.
    assert seen["sessionUser"] is None


def test_the_app_receives_a_convex_token_and_never_the_clients_own(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    tokens = token_for(oauth_stack, browser, client)
    seen = echo(oauth_stack, tokens["access_token"]).json()
    assert "authorization" not in seen["headers"]
    minted = seen["headers"]["x-sidecar-convex-token"]
    claims = jwt.decode(minted, options={"verify_signature": False})
    access = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "convex-mcp"
    assert claims["iss"] == access["iss"]
    assert claims["sub"] == access["sub"]
    assert claims["exp"] - claims["iat"] <= 120
    assert claims["exp"] <= access["exp"]
    assert jwt.get_unverified_header(minted)["kid"] in {
        k["kid"] for k in httpx.get(f"{oauth_stack.sidecar.url}/oauth/jwks").json()["keys"]
    }
    # Reused for the same access token, so a proxied call costs no signing.
    assert echo(oauth_stack, tokens["access_token"]).json()["headers"][
        "x-sidecar-convex-token"
    ] == (minted)
    assert convex_accepts(oauth_stack, minted)["accepted"] is True


def test_the_clients_access_token_is_refused_by_convex(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    tokens = token_for(oauth_stack, browser, client)
    verdict = convex_accepts(oauth_stack, tokens["access_token"])
    assert verdict["accepted"] is False  # its audience is the resource, not convex-mcp


def test_the_convex_token_is_refused_by_the_gateway_as_an_access_token(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    tokens = token_for(oauth_stack, browser, client)
    minted = echo(oauth_stack, tokens["access_token"]).json()["headers"]["x-sidecar-convex-token"]
    refused = echo(oauth_stack, minted)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


def test_a_convex_token_sent_from_outside_is_dropped_on_every_path(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    forged = {"X-Sidecar-Convex-Token": "forged.token.value"}
    plain = httpx.get(f"{oauth_stack.sidecar.url}/echo-headers", headers=forged).json()
    assert "x-sidecar-convex-token" not in plain
    tokens = token_for(oauth_stack, browser, client)
    guarded = echo(oauth_stack, tokens["access_token"], **forged).json()
    assert guarded["headers"]["x-sidecar-convex-token"] != "forged.token.value"


def test_after_a_revocation_no_convex_token_is_minted_and_none_outlives_its_ttl(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    tokens = token_for(oauth_stack, browser, client)
    minted = echo(oauth_stack, tokens["access_token"]).json()["headers"]["x-sidecar-convex-token"]
    httpx.post(
        f"{oauth_stack.sidecar.url}/oauth/revoke",
        data={"client_id": client.client_id, "token": tokens["refresh_token"]},
    ).raise_for_status()
    deadline = time.monotonic() + 3
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = echo(oauth_stack, tokens["access_token"]).status_code
        time.sleep(0.1)
    assert status == 401  # within revocation_cache_seconds: no more Convex tokens
    claims = jwt.decode(minted, options={"verify_signature": False})
    assert claims["exp"] - time.time() <= 120  # the last one ends within the TTL


# -- token exchange (RFC 8693) ----------------------------------------------------------


def add_client(stack: Stack, *flags: str) -> tuple[str, str]:
    env = dict(stack.sidecar.extra["env"])  # type: ignore[arg-type]
    out = subprocess.run(
        [
            *(sys.executable, "-m", "sidecar", "clients", "add", "--name", "Self-checking app"),
            *("--redirect-uri", "https://app.example/cb", "--confidential", *flags),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    client_id = out.split("client_id: ")[1].split()[0]
    secret = out.split("client_secret: ")[1].split()[0]
    return client_id, secret


def exchange(stack: Stack, auth: tuple[str, str] | None, **form: str) -> httpx.Response:
    data = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token_type": ACCESS_TOKEN,
        "audience": "convex-mcp",
        **form,
    }
    return httpx.post(f"{stack.sidecar.url}/oauth/token", data=data, auth=auth)


def test_an_allowed_confidential_client_exchanges_an_access_token_for_a_convex_token(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    tokens = token_for(oauth_stack, browser, client)
    app = add_client(oauth_stack, "--token-exchange")
    r = exchange(oauth_stack, app, subject_token=tokens["access_token"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert r.headers["cache-control"] == "no-store"
    assert convex_accepts(oauth_stack, body["access_token"])["accepted"] is True
    meta = httpx.get(f"{oauth_stack.sidecar.url}/.well-known/oauth-authorization-server/oauth")
    assert TOKEN_EXCHANGE in meta.json()["grant_types_supported"]


def test_token_exchange_refusals(oauth_stack: Stack, browser: Browser, client: OAuthClient) -> None:
    tokens = token_for(oauth_stack, browser, client)
    subject = tokens["access_token"]
    allowed = add_client(oauth_stack, "--token-exchange")
    not_allowed = add_client(oauth_stack)

    def error(r: httpx.Response) -> tuple[int, str]:
        return r.status_code, r.json()["error"]

    assert error(exchange(oauth_stack, allowed, subject_token=subject, audience="convex")) == (
        400,
        "invalid_target",
    )
    assert error(
        exchange(oauth_stack, allowed, subject_token=subject, subject_token_type="urn:x")
    ) == (400, "invalid_request")
    assert error(exchange(oauth_stack, not_allowed, subject_token=subject)) == (
        400,
        "unauthorized_client",
    )
    public = exchange(oauth_stack, None, subject_token=subject, client_id=client.client_id)
    assert error(public) == (401, "invalid_client")
    wrong_secret = exchange(oauth_stack, (allowed[0], "wrong"), subject_token=subject)
    assert error(wrong_secret) == (401, "invalid_client")
    session_jwt = browser.get("/api/auth/convex/token").json()["token"]
    assert error(exchange(oauth_stack, allowed, subject_token=session_jwt)) == (
        400,
        "invalid_request",
    )
    httpx.post(
        f"{oauth_stack.sidecar.url}/oauth/revoke",
        data={"client_id": client.client_id, "token": tokens["refresh_token"]},
    ).raise_for_status()
    assert error(exchange(oauth_stack, allowed, subject_token=subject)) == (400, "invalid_request")


# -- the passthrough opt-in --------------------------------------------------------------


def test_forward_access_token_is_the_opt_in_it_says_with_a_warning() -> None:
    keys = {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": "http://127.0.0.1:9",
    }
    with running(start_upstream()) as upstream:
        sidecar = start_sidecar(
            upstream.url,
            SIDECAR_RESOURCES="/echo/mcp",
            SIDECAR_FORWARD_ACCESS_TOKEN="true",
            **keys,
        )
        with running(sidecar):
            keyset = load_keyset(load_settings(env=keys))
            now = int(time.time())
            token = keyset.sign(
                {
                    "iss": f"{sidecar.url}/oauth",
                    "sub": "u",
                    "aud": f"{sidecar.url}/echo/mcp",
                    "client_id": "c",
                    "scope": "",
                    "jti": "fw",
                    "iat": now,
                    "exp": now + 600,
                },
                typ="at+jwt",
            )
            seen = httpx.get(
                f"{sidecar.url}/echo/mcp", headers={"Authorization": f"Bearer {token}"}
            ).json()
            headers = dict(seen["headers"])
            assert headers["authorization"] == f"Bearer {token}"
            assert "x-sidecar-convex-token" in headers
            warnings = [r for r in sidecar.log_records() if "passthrough" in str(r.get("event"))]
            assert len(warnings) == 1
