"""The gateway in front of the app's MCP endpoints: every refusal tried."""

from __future__ import annotations

import time

import httpx
import pytest

from sidecar.config import load_settings
from sidecar.gateway.guard import _quoted
from sidecar.keys import load_keyset
from tests.e2e.conftest import Stack
from tools import fixtures
from tools.oauth import Browser, OAuthClient
from tools.processes import running, start_sidecar


def token_for(client: OAuthClient, browser: Browser, resource: str, scope: str = "openid") -> str:
    code = client.login(browser, resource=resource, scope=scope)["code"]
    body = client.exchange(code).json()
    return str(body["access_token"])


def echo(
    stack: Stack, token: str | None, path: str = "/api/mcp/echo", **headers: str
) -> httpx.Response:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(stack.sidecar.url + path, headers=headers)


def test_no_token_gets_the_mcp_challenge(oauth_stack: Stack) -> None:
    r = echo(oauth_stack, None, "/api/mcp")
    assert r.status_code == 401
    prm = f"{oauth_stack.sidecar.url}/.well-known/oauth-protected-resource/api/mcp"
    assert r.headers["www-authenticate"] == f'Bearer resource_metadata="{prm}"'
    assert httpx.get(prm).json()["resource"] == f"{oauth_stack.sidecar.url}/api/mcp"


def test_required_scopes_are_named_in_the_challenge(oauth_stack: Stack) -> None:
    r = echo(oauth_stack, None, "/api/mcp-admin")
    assert 'scope="mcp:admin"' in r.headers["www-authenticate"]


def test_a_valid_token_passes_with_identity_headers_and_never_reaches_the_app(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    token = token_for(client, browser, f"{oauth_stack.sidecar.url}/api/mcp")
    r = echo(oauth_stack, token, X_Sidecar_User_Id="spoofed")
    assert r.status_code == 200
    seen = r.json()
    # No token passthrough: the client's own token stays at the gateway.
    assert seen["authorization"] == ""
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["x-sidecar-convex-token"].count(".") == 2
    user_id = browser.get("/api/auth/get-session").json()["user"]["id"]
    assert seen["headers"]["x-sidecar-user-id"] == user_id
    assert seen["headers"]["x-sidecar-client-id"] == client.client_id
    assert seen["headers"]["x-sidecar-scopes"] == "openid"


def test_identity_headers_from_outside_are_stripped_on_every_path(oauth_stack: Stack) -> None:
    spoof = {
        "X-Sidecar-User-Id": "admin",
        "x-sidecar-scopes": "everything",
        "X-SIDECAR-CLIENT-ID": "evil",
    }
    seen = httpx.get(oauth_stack.sidecar.url + "/echo-headers", headers=spoof).json()
    assert not [k for k in seen if k.startswith("x-sidecar-")]


def test_a_token_for_another_resource_is_refused(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    token = token_for(client, browser, f"{oauth_stack.sidecar.url}/api/mcp-self")
    r = echo(oauth_stack, token)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_a_convex_session_jwt_is_refused(oauth_stack: Stack, browser: Browser) -> None:
    session_jwt = browser.get("/api/auth/convex/token").json()["token"]
    r = echo(oauth_stack, session_jwt)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_an_expired_token_is_refused(oauth_stack: Stack) -> None:
    base = oauth_stack.sidecar.url
    keyset = load_keyset(
        load_settings(
            env={"JWKS": fixtures.text("static-jwks.json"), "BETTER_AUTH_SECRET": fixtures.SECRET}
        )
    )
    now = int(time.time())
    claims = {
        "iss": f"{base}/oauth",
        "sub": "u",
        "aud": f"{base}/api/mcp",
        "client_id": "c",
        "scope": "openid",
        "jti": "expired-1",
        "iat": now - 7200,
        "exp": now - 3600,
    }
    r = echo(oauth_stack, keyset.sign(claims, typ="at+jwt"))
    assert r.status_code == 401
    assert "expired" in r.headers["www-authenticate"]
    # The same token, unexpired, passes: the refusal is the expiry.
    claims.update(exp=now + 600, jti="fresh-1")
    assert echo(oauth_stack, keyset.sign(claims, typ="at+jwt")).status_code == 200


def test_a_missing_scope_gets_403_insufficient_scope(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    admin = f"{oauth_stack.sidecar.url}/api/mcp-admin"
    without = token_for(client, browser, admin)
    r = echo(oauth_stack, without, "/api/mcp-admin/echo")
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert 'scope="mcp:admin"' in r.headers["www-authenticate"]
    with_scope = token_for(client, browser, admin, scope="openid mcp:admin")
    assert echo(oauth_stack, with_scope, "/api/mcp-admin/echo").status_code == 200


def test_a_revocation_on_another_process_is_honored_within_seconds(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    token = token_for(client, browser, f"{oauth_stack.sidecar.url}/api/mcp")
    assert echo(oauth_stack, token).status_code == 200  # now cached as not revoked
    env = dict(oauth_stack.sidecar.extra["env"])  # type: ignore[arg-type]
    env.pop("SIDECAR_PORT")
    env.pop("SIDECAR_UPSTREAM_URL")
    env.pop("SIDECAR_METRICS_PORT")
    env["SIDECAR_PUBLIC_URL"] = oauth_stack.sidecar.url  # replicas share one public URL
    # A second replica sharing the store revokes the token.
    with running(start_sidecar(oauth_stack.app.url, **env)) as other:
        r = httpx.post(
            other.url + "/oauth/revoke", data={"client_id": client.client_id, "token": token}
        )
        assert r.status_code == 200
    deadline = time.monotonic() + 5
    status = 200
    while time.monotonic() < deadline and status == 200:
        status = echo(oauth_stack, token).status_code
        time.sleep(0.1)
    assert status == 401


def test_preflights_are_answered_without_a_token(oauth_stack: Stack) -> None:
    r = httpx.options(
        oauth_stack.sidecar.url + "/api/mcp",
        headers={"Origin": "https://x.test", "Access-Control-Request-Method": "POST"},
    )
    # The gateway's own answer (a preflight carries no token by design), so
    # that the request whose 401 starts discovery can be sent at all.
    assert r.status_code == 204
    assert "www-authenticate" not in r.headers
    assert r.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in r.headers["access-control-allow-headers"]


def test_metadata_only_resources_pass_untouched_and_the_app_verifies_with_the_jwks(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    r = echo(oauth_stack, None, "/api/mcp-self")
    # The app's own challenge, not the sidecar's: it checks tokens itself.
    assert r.status_code == 401
    assert r.json() == {"error": "unauthorized"}
    forged = echo(oauth_stack, "anything-at-all", "/api/mcp-self")
    assert forged.status_code == 401
    assert forged.json()["error"] == "invalid_token"
    # A real token for this resource passes the app's own check (jose and the
    # sidecar's JWKS, as the README shows); one for another resource fails it.
    token = token_for(client, browser, f"{oauth_stack.sidecar.url}/api/mcp-self")
    ok = echo(oauth_stack, token, "/api/mcp-self")
    assert ok.status_code == 200
    assert ok.json()["verifiedBy"] == "app"
    assert ok.json()["claims"]["client_id"] == client.client_id
    other = token_for(client, browser, f"{oauth_stack.sidecar.url}/api/mcp")
    assert echo(oauth_stack, other, "/api/mcp-self").status_code == 401


def signed(stack: Stack, **claims: object) -> str:
    """An access token for /api/mcp signed with the deployment's key, as the
    sidecar signs them, with ``claims`` over the usual ones."""
    base = stack.sidecar.url
    keyset = load_keyset(
        load_settings(
            env={"JWKS": fixtures.text("static-jwks.json"), "BETTER_AUTH_SECRET": fixtures.SECRET}
        )
    )
    now = int(time.time())
    body: dict[str, object] = {
        "iss": f"{base}/oauth",
        "sub": "u",
        "aud": f"{base}/api/mcp",
        "client_id": "c",
        "scope": "openid",
        "jti": f"claims-{time.monotonic_ns()}",
        "iat": now,
        "exp": now + 600,
    }
    body.update(claims)
    return keyset.sign(body, typ="at+jwt")


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "u\r\nX-Sidecar-Scopes: mcp:admin"},
        {"sub": "u\nx"},
        {"sub": "u\x00"},
        {"sub": "Zo\u00eb"},
        {"sub": "u v"},
        {"sub": 42},
        {"client_id": "https://client.example/\r\nHost: evil"},
        {"client_id": "c\t"},
        {"scope": "openid\r\nX-Evil: 1"},
        {"scope": "openid caf\u00e9"},
        {"scope": ["openid"]},
    ],
)
def test_a_token_whose_identity_would_break_a_header_line_is_refused(
    oauth_stack: Stack, claims: dict[str, object]
) -> None:
    r = echo(oauth_stack, signed(oauth_stack, **claims))
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    # The same token with ordinary claims passes: the refusal is the claim.
    assert echo(oauth_stack, signed(oauth_stack)).status_code == 200


def test_challenge_parameters_are_quoted_strings_with_quotes_and_backslashes_escaped() -> None:
    # RFC 9110 section 5.6.4; CR and LF never reach the field (section 5.5).
    assert _quoted('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
    assert _quoted("line\r\nX-Evil: 1") == '"line  X-Evil: 1"'
    assert _quoted("caf\u00e9\x00") == '"caf  "'


def test_every_challenge_is_one_field_of_visible_ascii(oauth_stack: Stack) -> None:
    for token in (None, "not-a-token", signed(oauth_stack, sub="u\r\nx")):
        r = echo(oauth_stack, token)
        assert r.status_code == 401
        raw = r.headers["www-authenticate"]
        assert all(0x20 <= ord(c) < 0x7F for c in raw), raw
