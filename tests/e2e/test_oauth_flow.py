"""The OAuth server in front of the real Better Auth + convex() server, in
reuse mode (the deployment's static JWKS), with every rule tried."""

from __future__ import annotations

import httpx
import jwt
import pytest

from tests.e2e.conftest import Stack
from tools import fixtures
from tools.oauth import REDIRECT, Browser, OAuthClient, pkce_pair, query_of


def public_key(kid: str):  # type: ignore[no-untyped-def]
    key = next(k for k in fixtures.load("convex-jwks.json")["keys"] if k["kid"] == kid)
    return jwt.PyJWK(key).key


# -- discovery ------------------------------------------------------------------


def test_metadata_is_served_at_every_discovery_path_with_one_issuer(oauth_stack: Stack) -> None:
    base = oauth_stack.sidecar.url
    docs = [
        httpx.get(base + p)
        for p in (
            "/.well-known/oauth-authorization-server/oauth",
            "/.well-known/openid-configuration/oauth",
            "/oauth/.well-known/openid-configuration",
        )
    ]
    assert all(d.status_code == 200 for d in docs)
    assert docs[0].content == docs[1].content == docs[2].content
    meta = docs[0].json()
    assert meta["issuer"] == f"{base}/oauth"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert docs[0].headers["access-control-allow-origin"] == "*"
    assert "MCP-Protocol-Version" in docs[0].headers["access-control-allow-headers"]
    prm = httpx.get(base + "/.well-known/oauth-protected-resource/api/mcp").json()
    assert prm["resource"] == f"{base}/api/mcp"
    assert prm["authorization_servers"] == [meta["issuer"]]
    # The app's own root document is still the app's, whatever it answers.
    root = httpx.get(base + "/.well-known/openid-configuration")
    direct = httpx.get(oauth_stack.app.url + "/.well-known/openid-configuration")
    assert (root.status_code, root.content) == (direct.status_code, direct.content)


def test_the_authorization_endpoint_sends_no_cors_headers(oauth_stack: Stack) -> None:
    r = httpx.get(oauth_stack.sidecar.url + "/oauth/authorize", headers={"Origin": "https://x"})
    assert "access-control-allow-origin" not in r.headers


def test_jwks_publishes_the_deployments_public_key_only(oauth_stack: Stack) -> None:
    keys = httpx.get(oauth_stack.sidecar.url + "/oauth/jwks").json()["keys"]
    assert [k["kid"] for k in keys] == [fixtures.load("static-jwks.json")[0]["id"]]
    assert not {"d", "p", "q"} & set(keys[0])


# -- the whole flow -----------------------------------------------------------------


def test_code_flow_issues_rfc9068_tokens_for_the_consented_resource(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    base = oauth_stack.sidecar.url
    page = browser.get(client.authorize_url(resource=f"{base}/api/mcp"))
    assert page.status_code == 200
    for header, value in {
        "x-frame-options": "DENY",
        "cache-control": "no-store",
        # Not no-referrer: with it Chromium posts the form with Origin: null,
        # which the consent endpoint refuses; cross-origin still gets none.
        "referrer-policy": "same-origin",
    }.items():
        assert page.headers[header] == value
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "Test client" in page.text
    assert "127.0.0.1:43210" in page.text
    redirect = browser.consent(page)
    assert redirect.status_code == 303
    params = query_of(redirect.headers["location"])
    assert redirect.headers["location"].startswith(REDIRECT + "?")
    assert params["iss"] == f"{base}/oauth"
    assert params["state"].startswith("st-")

    tokens = client.exchange(params["code"])
    assert tokens.status_code == 200, tokens.text
    assert tokens.headers["cache-control"] == "no-store"
    body = tokens.json()
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"
    claims = jwt.decode(
        body["access_token"],
        public_key(header["kid"]),
        algorithms=["RS256"],
        audience=f"{base}/api/mcp",
        issuer=f"{base}/oauth",
    )
    assert {"iss", "sub", "aud", "client_id", "scope", "jti", "iat", "exp"} <= set(claims)
    assert claims["aud"] != "convex"
    assert claims["client_id"] == client.client_id
    id_token = jwt.decode(
        body["id_token"], public_key(header["kid"]), algorithms=["RS256"], audience=client.client_id
    )
    assert id_token["email"] == browser.email
    userinfo = httpx.get(
        base + "/oauth/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert userinfo.json() == {"sub": claims["sub"], "email": browser.email, "name": "Ada Lovelace"}
    # The app's own login kept working all along.
    assert browser.get("/api/auth/convex/token").status_code == 200


def test_a_replayed_code_fails_and_revokes_what_it_issued(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    code = client.login(browser)["code"]
    first = client.exchange(code).json()
    replay = client.exchange(code)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    info = httpx.get(
        oauth_stack.sidecar.url + "/oauth/userinfo",
        headers={"Authorization": f"Bearer {first['access_token']}"},
    )
    assert info.status_code == 401
    assert client.refresh(first["refresh_token"]).json()["error"] == "invalid_grant"


def test_refresh_rotates_and_a_replayed_refresh_token_revokes_the_family(
    browser: Browser, client: OAuthClient
) -> None:
    first = client.exchange(client.login(browser)["code"]).json()
    second = client.refresh(first["refresh_token"])
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    narrowed = client.refresh(rotated["refresh_token"], scope="openid")
    assert narrowed.json()["scope"] == "openid"
    replay = client.refresh(first["refresh_token"])
    assert replay.json()["error"] == "invalid_grant"
    # The whole family is gone, including the newest token.
    assert client.refresh(narrowed.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_wrong_code_verifier_is_refused(browser: Browser, client: OAuthClient) -> None:
    code = client.login(browser)["code"]
    client.verifier = "x" * 50
    r = client.exchange(code)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


def test_a_code_verifier_with_a_trailing_newline_is_refused(
    browser: Browser, client: OAuthClient
) -> None:
    """RFC 7636 section 4.1: the verifier is 43 to 128 unreserved characters
    and nothing else, even when the challenge was made from the same bytes."""
    import base64
    import hashlib

    verifier = "v" * 43 + "\n"
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    page = browser.get(
        client.authorize_url(code_challenge=challenge.rstrip(b"=").decode(), scope="openid")
    )
    done = browser.consent(page)
    client.verifier = verifier
    r = client.exchange(query_of(done.headers["location"])["code"])
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


def test_a_code_challenge_with_a_trailing_newline_is_refused(
    browser: Browser, client: OAuthClient
) -> None:
    """RFC 7636 section 4.2: the S256 challenge is exactly 43 base64url characters."""
    _, challenge = pkce_pair()
    r = browser.get(client.authorize_url(code_challenge=challenge + "\n"))
    assert r.status_code == 302
    back = query_of(r.headers["location"])
    assert back["error"] == "invalid_request"
    assert "code_challenge" in back["error_description"]


def test_a_missing_code_verifier_is_refused(browser: Browser, client: OAuthClient) -> None:
    code = client.login(browser)["code"]
    r = client.token(grant_type="authorization_code", code=code, redirect_uri=client.redirect_uri)
    assert r.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "admin"}, "invalid_scope"),
        ({"resource": "https://elsewhere.test/mcp"}, "invalid_target"),
    ],
)
def test_bad_authorization_requests_go_back_to_the_client_with_iss(
    oauth_stack: Stack, browser: Browser, client: OAuthClient, params: dict, error: str
) -> None:
    r = browser.get(client.authorize_url(**params))
    assert r.status_code == 302
    back = query_of(r.headers["location"])
    assert back["error"] == error
    assert back["iss"] == f"{oauth_stack.sidecar.url}/oauth"
    assert "state" in back


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://attacker.test/callback",
        "http://127.0.0.1:43210/callback/extra",
        "http://127.0.0.1:43210/CALLBACK",
        "http://evil@127.0.0.1:43210/callback",
    ],
)
def test_a_foreign_redirect_uri_is_shown_an_error_and_never_redirected(
    browser: Browser, client: OAuthClient, redirect_uri: str
) -> None:
    r = browser.get(client.authorize_url(redirect_uri=redirect_uri))
    assert r.status_code == 400
    assert "location" not in r.headers
    assert "did not register" in r.text


def test_a_loopback_redirect_may_use_another_port(browser: Browser, client: OAuthClient) -> None:
    client.redirect_uri = "http://127.0.0.1:55555/callback"
    params = client.login(browser)
    assert "code" in params


def test_an_unknown_client_is_shown_an_error_page(browser: Browser, client: OAuthClient) -> None:
    client.client_id = "nobody"
    r = browser.get(client.authorize_url())
    assert r.status_code == 400
    assert "location" not in r.headers


def test_an_unknown_client_at_the_token_endpoint_gets_401_invalid_client(
    client: OAuthClient,
) -> None:
    client.client_id = "forgotten-client"
    r = client.exchange("whatever")
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"


def test_a_code_issued_to_one_client_fails_for_another(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    code = client.login(browser)["code"]
    other = OAuthClient(oauth_stack.sidecar.url)
    other.register()
    other.verifier = client.verifier
    assert other.exchange(code).json()["error"] == "invalid_grant"


# -- users and consent ---------------------------------------------------------------


def test_an_anonymous_user_is_sent_to_login_and_resumes_after_signing_in(
    oauth_stack: Stack, client: OAuthClient
) -> None:
    browser = Browser(oauth_stack.sidecar.url)
    r = browser.get(client.authorize_url())
    assert r.status_code == 303
    login = r.headers["location"]
    assert login.startswith(f"{oauth_stack.sidecar.url}/login?callbackURL=")
    resume = query_of(login)["callbackURL"]
    assert "/oauth/authorize/continue?request=" in resume
    assert "code_challenge" not in resume  # kept server-side
    browser.sign_up()
    page = browser.get(resume)
    assert page.status_code == 200
    assert "wants to access your account" in page.text
    done = browser.consent(page)
    assert "code" in query_of(done.headers["location"])


def test_prompt_none_without_a_session_answers_login_required(
    oauth_stack: Stack, client: OAuthClient
) -> None:
    r = Browser(oauth_stack.sidecar.url).get(client.authorize_url(prompt="none"))
    assert query_of(r.headers["location"])["error"] == "login_required"


def test_a_remembered_consent_skips_the_page_unless_prompt_consent(
    browser: Browser, client: OAuthClient
) -> None:
    client.login(browser)
    again = browser.get(client.authorize_url())
    assert again.status_code == 302
    assert "code" in query_of(again.headers["location"])
    # prompt=consent beside offline_access over what was allowed is
    # satisfied by the remembered consent (OpenID Connect Core section 11):
    # the MCP TypeScript SDK sends both on every connect.
    offline = browser.get(client.authorize_url(prompt="consent"))
    assert offline.status_code == 302
    assert "code" in query_of(offline.headers["location"])
    # Without offline_access it asks again.
    forced = browser.get(client.authorize_url(prompt="consent", scope="openid profile email"))
    assert forced.status_code == 200  # shown once...
    done = browser.consent(forced)
    assert "code" in query_of(done.headers["location"])  # ...and no loop


def test_deny_sends_access_denied(browser: Browser, client: OAuthClient) -> None:
    page = browser.get(client.authorize_url())
    r = browser.consent(page, decision="deny")
    assert r.status_code == 303
    assert query_of(r.headers["location"])["error"] == "access_denied"


def test_consent_without_the_csrf_token_is_refused(browser: Browser, client: OAuthClient) -> None:
    page = browser.get(client.authorize_url())
    assert browser.consent(page, csrf="").status_code == 403
    assert browser.consent(page, csrf="forged").status_code == 403


def test_consent_posted_by_another_user_is_refused(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    page = browser.get(client.authorize_url())
    mallory = Browser(oauth_stack.sidecar.url).sign_up("Mallory")
    r = mallory.consent(page)
    assert r.status_code == 403


def test_a_replayed_consent_post_is_refused(browser: Browser, client: OAuthClient) -> None:
    page = browser.get(client.authorize_url())
    assert browser.consent(page).status_code == 303
    assert browser.consent(page).status_code == 400


# -- tokens that are not ours ----------------------------------------------------------


def test_a_convex_session_jwt_is_never_accepted_as_an_access_token(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    session_jwt = browser.get("/api/auth/convex/token").json()["token"]
    r = httpx.get(
        oauth_stack.sidecar.url + "/oauth/userinfo",
        headers={"Authorization": f"Bearer {session_jwt}"},
    )
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"


def test_revocation_denies_an_access_token_until_it_expires(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    tokens = client.exchange(client.login(browser)["code"]).json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    base = oauth_stack.sidecar.url
    assert httpx.get(base + "/oauth/userinfo", headers=auth).status_code == 200
    r = httpx.post(
        base + "/oauth/revoke",
        data={"client_id": client.client_id, "token": tokens["access_token"]},
    )
    assert r.status_code == 200
    assert httpx.get(base + "/oauth/userinfo", headers=auth).status_code == 401
    # Revoking the refresh token ends the grant.
    httpx.post(
        base + "/oauth/revoke",
        data={"client_id": client.client_id, "token": tokens["refresh_token"]},
    )
    assert client.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("kind", ["access_token", "refresh_token"])
def test_revoking_another_clients_token_leaves_it_working(
    oauth_stack: Stack, browser: Browser, client: OAuthClient, kind: str
) -> None:
    """RFC 7009 section 2.1: the server checks the token was issued to the
    client asking; another client's token is left alone, and the answer is
    still 200 (section 2.2), so it tells the caller nothing."""
    tokens = client.exchange(client.login(browser)["code"]).json()
    base = oauth_stack.sidecar.url
    other = OAuthClient(base)
    other.register(client_name="Someone else")
    for hint in ({}, {"token_type_hint": kind}):
        r = httpx.post(
            base + "/oauth/revoke",
            data={"client_id": other.client_id, "token": tokens[kind], **hint},
        )
        assert r.status_code == 200
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(base + "/oauth/userinfo", headers=auth).status_code == 200
    refreshed = client.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert "access_token" in refreshed.json()


def test_introspection_needs_an_authenticated_caller(oauth_stack: Stack, browser: Browser) -> None:
    base = oauth_stack.sidecar.url
    rs = OAuthClient(base)
    rs.register(token_endpoint_auth_method="client_secret_basic")
    tokens = rs.exchange(rs.login(browser)["code"]).json()
    anonymous = httpx.post(base + "/oauth/introspect", data={"token": tokens["access_token"]})
    assert anonymous.status_code == 401
    r = httpx.post(
        base + "/oauth/introspect",
        data={"token": tokens["access_token"]},
        auth=(rs.client_id, rs.client_secret or ""),
    )
    assert r.json()["active"] is True
    assert r.json()["aud"] == f"{base}/api/mcp"
    bad = httpx.post(
        base + "/oauth/introspect",
        data={"token": tokens["access_token"]},
        auth=(rs.client_id, "wrong"),
    )
    assert bad.status_code == 401


# -- malformed requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"json": {"grant_type": "authorization_code"}}, 400, "invalid_request"),
        (
            {
                "content": b"grant_type=authorization_code&grant_type=refresh_token",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            400,
            "invalid_request",
        ),
        (
            {
                "content": b"\xff\xfe",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            400,
            "invalid_request",
        ),
        ({"data": {"grant_type": "password", "client_id": "x"}}, 401, "invalid_client"),
    ],
)
def test_malformed_token_requests_get_oauth_errors_never_500(
    oauth_stack: Stack, kwargs: dict, status: int, error: str
) -> None:
    r = httpx.post(oauth_stack.sidecar.url + "/oauth/token", **kwargs)
    assert r.status_code == status
    assert r.json()["error"] == error


def test_unsupported_grant_types_are_named(client: OAuthClient) -> None:
    assert client.token(grant_type="password").json()["error"] == "unsupported_grant_type"


def test_prompt_login_sends_a_signed_in_user_to_login_once_then_resumes(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    r = browser.get(client.authorize_url(prompt="login"))
    assert r.status_code == 303
    resume = query_of(r.headers["location"])["callbackURL"]
    page = browser.get(resume)  # back from the login page: no second trip
    assert page.status_code == 200
    assert "wants to access your account" in page.text


def test_the_nonce_is_carried_into_the_id_token(browser: Browser, client: OAuthClient) -> None:
    code = client.login(browser, nonce="n-0S6_WzA2Mj")["code"]
    body = client.exchange(code).json()
    claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert claims["nonce"] == "n-0S6_WzA2Mj"


def test_a_confidential_client_authenticates_with_basic_at_the_token_endpoint(
    oauth_stack: Stack, browser: Browser
) -> None:
    c = OAuthClient(oauth_stack.sidecar.url)
    c.register(token_endpoint_auth_method="client_secret_basic")
    code = c.login(browser)["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": c.redirect_uri,
        "code_verifier": c.verifier,
    }
    wrong = httpx.post(
        oauth_stack.sidecar.url + "/oauth/token", data=form, auth=(c.client_id, "not-the-secret")
    )
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Basic")
    code = c.login(browser)["code"]
    form["code"], form["code_verifier"] = code, c.verifier
    right = httpx.post(
        oauth_stack.sidecar.url + "/oauth/token",
        data=form,
        auth=(c.client_id, c.client_secret or ""),
    )
    assert right.status_code == 200


# Last in this module: it reads the log of every request above.
def test_no_request_in_this_module_caused_a_server_error(oauth_stack: Stack) -> None:
    records = oauth_stack.sidecar.log_records()
    assert not [r for r in records if r.get("status") == 500]
    assert "Traceback" not in oauth_stack.sidecar.log_text()


def test_the_consent_page_says_what_a_grant_allows_even_when_no_scope_names_it(
    oauth_stack: Stack, browser: Browser, client: OAuthClient
) -> None:
    # An MCP SDK client for a resource that names no scopes asks for
    # offline_access alone; the page still says what it may then do.
    page = browser.get(client.authorize_url(scope="offline_access"))
    assert page.status_code == 200, page.text
    resource = f"{oauth_stack.sidecar.url}/api/mcp"
    assert "Act as you on the service below, until you revoke it in Connected apps" in page.text
    assert f"<code>{resource}</code>" in page.text
    assert "Stay connected when you are not using it" in page.text
