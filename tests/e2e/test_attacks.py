"""Attacks that broke other authorization servers, tried against this one."""

from __future__ import annotations

import base64
import json
import secrets
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.config import load_settings
from sidecar.keys import load_keyset
from sidecar.oauth.errors import InvalidToken
from sidecar.oauth.grants import Grants
from sidecar.oauth.tokens import Tokens
from sidecar.store import open_store
from tests.e2e.conftest import Stack, start_stack
from tools import fixtures
from tools.oauth import Browser, OAuthClient, pkce_pair, query_of

# -- redirect URI tricks ----------------------------------------------------------

REGISTERED = "https://app.client.test/cb"


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://APP.client.test/cb",  # case change
        "https://app.client.test/CB",
        "https://app.client.test/cb/",  # trailing slash
        "https://app.client.test@evil.test/cb",  # userinfo
        "https://evil.test@app.client.test/cb",
        "https://app.client.test/c%62",  # percent-encoding
        "https://app.client.test/cb/..;/admin",  # path parameter traversal
        "https://app.client.test/cb/../cb",
        "https://\u0430pp.client.test/cb",  # IDN look-alike (Cyrillic a)
        "https://xn--pp-8cd.client.test/cb",
        "https://app.client.test/cb?extra=1",  # extra query
        "https://app.client.test/cb#frag",  # fragment
        "https://app.client.test:8443/cb",  # another port, not loopback
        "https://app.client.test.evil.test/cb",
        "http://app.client.test/cb",  # scheme downgrade
    ],
)
def test_redirect_uri_tricks_are_refused_and_never_redirected(
    oauth_stack: Stack, browser: Browser, redirect_uri: str
) -> None:
    c = OAuthClient(oauth_stack.sidecar.url, redirect_uri=REGISTERED)
    c.register()
    r = browser.get(c.authorize_url(redirect_uri=redirect_uri))
    assert r.status_code == 400
    assert "location" not in r.headers


# -- Host and X-Forwarded-Host injection ---------------------------------------------


def test_host_and_forwarded_host_cannot_change_the_issuer_or_links(
    oauth_stack: Stack, client: OAuthClient
) -> None:
    base = oauth_stack.sidecar.url
    evil = {
        "Host": "evil.test",
        "X-Forwarded-Host": "evil.test",
        "X-Forwarded-Proto": "https",
        "Forwarded": "host=evil.test",
    }
    meta = httpx.get(base + "/.well-known/oauth-authorization-server/oauth", headers=evil)
    assert "evil" not in meta.text
    assert meta.json()["issuer"] == f"{base}/oauth"
    prm = httpx.get(base + "/.well-known/oauth-protected-resource/api/mcp", headers=evil)
    assert "evil" not in prm.text
    login = httpx.get(base + client.authorize_url(), headers=evil)
    assert login.status_code == 303
    assert "evil" not in login.headers["location"]
    challenge = httpx.get(base + "/api/mcp", headers=evil)
    assert "evil" not in challenge.headers["www-authenticate"]


def test_the_consent_form_posts_to_the_public_url_whatever_the_host(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    page = browser.get(client.authorize_url(), headers={"X-Forwarded-Host": "evil.test"})
    assert page.status_code == 200
    assert f'action="{oauth_stack.sidecar.url}/oauth/consent"' in page.text
    assert "evil" not in page.text


# -- escaping ------------------------------------------------------------------------


def test_script_in_client_name_and_uri_is_shown_escaped(
    oauth_stack: Stack, browser: Browser
) -> None:
    c = OAuthClient(oauth_stack.sidecar.url)
    c.register(
        client_name='<script>alert("n")</script>',
        client_uri='https://x.test/"><img src=x onerror=alert(1)>',
    )
    page = browser.get(c.authorize_url())
    assert page.status_code == 200
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;" in page.text
    assert "<img src=x" not in page.text


def test_script_in_error_descriptions_and_state_never_reaches_a_page_unescaped(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    r = browser.get("/oauth/authorize?client_id=%3Cscript%3Ealert(1)%3C/script%3E")
    assert "<script>alert(1)" not in r.text
    bad = browser.get(client.authorize_url(scope="<script>", state="<script>x</script>"))
    assert bad.status_code == 302  # back to the client, URL-encoded
    assert "<script>" not in bad.headers["location"]
    assert query_of(bad.headers["location"])["state"] == "<script>x</script>"


# -- tokens that must never verify ----------------------------------------------------


@pytest.fixture
def grants() -> Tokens:
    settings = load_settings(
        env={
            "JWKS": fixtures.text("static-jwks.json"),
            "BETTER_AUTH_SECRET": fixtures.SECRET,
            "SIDECAR_RESOURCES": "/api/mcp",
        }
    )
    return Tokens(Grants(settings, open_store("memory://")), load_keyset(settings))


def claims_for(grants: Tokens) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": grants.issuer,
        "sub": "u",
        "aud": grants.settings.default_resource.url,
        "client_id": "c",
        "scope": "openid",
        "jti": secrets.token_hex(8),
        "iat": now,
        "exp": now + 600,
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_genuine_token_verifies(grants: Tokens) -> None:
    token = grants.keys.sign(claims_for(grants), typ="at+jwt")
    assert grants.decode_access_token(token)["sub"] == "u"


def test_alg_none_is_refused(grants: Tokens) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": grants.keys.signing.kid}
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_for(grants)).encode())}."
    with pytest.raises(InvalidToken):
        grants.decode_access_token(token)


def test_hs256_signed_with_the_public_key_is_refused(grants: Tokens) -> None:
    _, public = grants.keys.verifying[grants.keys.signing.kid]
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib
    import hmac

    header = {"alg": "HS256", "typ": "at+jwt", "kid": grants.keys.signing.kid}
    signing_input = (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims_for(grants)).encode())}"
    )
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken):
        grants.decode_access_token(f"{signing_input}.{b64(signature)}")


def test_an_unknown_kid_is_refused(grants: Tokens) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        claims_for(grants),
        other,
        algorithm="RS256",
        headers={"kid": "someone-else", "typ": "at+jwt"},
    )
    with pytest.raises(InvalidToken):
        grants.decode_access_token(token)
    # Nor does our own kid with another key's signature pass.
    forged = jwt.encode(
        claims_for(grants),
        other,
        algorithm="RS256",
        headers={"kid": grants.keys.signing.kid, "typ": "at+jwt"},
    )
    with pytest.raises(InvalidToken):
        grants.decode_access_token(forged)


def test_a_token_from_a_retired_key_is_refused(tmp_path: object) -> None:
    from sidecar.keys.keyset import rotate_managed_keys

    env = {"SIDECAR_DATA_DIR": str(tmp_path), "SIDECAR_ACCESS_TOKEN_TTL": "60"}
    settings = load_settings(env=env)
    old = load_keyset(settings)
    grants_old = Tokens(Grants(settings, open_store("memory://")), old)
    token = old.sign(claims_for(grants_old), typ="at+jwt")
    rotate_managed_keys(settings)
    still = Tokens(Grants(settings, open_store("memory://")), load_keyset(settings))
    assert still.decode_access_token(token)["sub"] == "u"  # published until it expires
    rotate_managed_keys(settings, now=time.time() + 3600)  # the old key is retired
    retired = Tokens(Grants(settings, open_store("memory://")), load_keyset(settings))
    with pytest.raises(InvalidToken):
        retired.decode_access_token(token)


# -- PKCE downgrade --------------------------------------------------------------------


def test_a_verifier_for_a_plain_challenge_is_refused(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    verifier, _ = pkce_pair()
    # The "plain" method would use the verifier itself as the challenge.
    r = browser.get(
        client.authorize_url(code_challenge=verifier[:43], code_challenge_method="plain")
    )
    assert query_of(r.headers["location"])["error"] == "invalid_request"


# -- nothing secret in logs ------------------------------------------------------------


def test_no_secret_appears_in_any_log_line_at_any_level() -> None:
    shared = {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": "{app}",
    }
    stack = start_stack(
        {**shared}, {"SIDECAR_RESOURCES": "/api/mcp", "SIDECAR_LOG_LEVEL": "debug", **shared}
    )
    try:
        base = stack.sidecar.url
        browser = Browser(base).sign_up()
        confidential = OAuthClient(base)
        confidential.register(token_endpoint_auth_method="client_secret_post")
        code = confidential.login(browser)["code"]
        verifier = confidential.verifier
        tokens = confidential.exchange(code).json()
        refreshed = confidential.refresh(tokens["refresh_token"]).json()
        mcp = httpx.get(
            base + "/api/mcp/echo", headers={"Authorization": f"Bearer {refreshed['access_token']}"}
        )
        assert mcp.status_code == 200
        httpx.post(
            base + "/oauth/revoke",
            data={
                "token": refreshed["refresh_token"],
                "client_id": confidential.client_id,
                "client_secret": confidential.client_secret or "",
            },
        )
        session_cookie = browser.client.cookies.get("better-auth.session_token")
        convex_jwt = browser.client.cookies.get("better-auth.convex_jwt")
        log = stack.sidecar.log_text()
        assert {"debug", "info"} & {r.get("level") for r in stack.sidecar.log_records()}
        secrets_ = {
            "access token": tokens["access_token"],
            "refreshed access token": refreshed["access_token"],
            "refresh token": tokens["refresh_token"],
            "rotated refresh token": refreshed["refresh_token"],
            "id token": tokens["id_token"],
            "code": code,
            "client secret": confidential.client_secret,
            "PKCE verifier": verifier,
            "session cookie": session_cookie,
            "convex session JWT": convex_jwt,
            "Better Auth secret": fixtures.SECRET,
        }
        for name, value in secrets_.items():
            assert value, name
            assert value not in log, f"{name} appears in the log"
            # Nor a recognisable part of it.
            assert value[:24] not in log, f"part of the {name} appears in the log"
        browser.client.close()
    finally:
        stack.sidecar.stop()
        stack.app.stop()
