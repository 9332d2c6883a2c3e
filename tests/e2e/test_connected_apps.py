"""Connected apps: a person sees what they granted and ends it; operators do
the same from the command line; and no grant rests on a session the app has
already ended. Against the real Better Auth + convex() server."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.e2e.conftest import Stack
from tools.oauth import PASSWORD, Browser, OAuthClient, query_of


def connect(stack: Stack, browser: Browser, name: str = "Notes App") -> tuple[OAuthClient, dict]:
    client = OAuthClient(stack.sidecar.url)
    client.register(client_name=name, client_uri="https://notes.example")
    code = client.login(browser, scope="openid email")["code"]
    tokens = client.exchange(code).json()
    return client, tokens


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def revoke(browser: Browser, csrf: str, client_id: str, **headers: str) -> httpx.Response:
    return browser.client.post(
        "/oauth/account/revoke", data={"csrf": csrf, "client_id": client_id}, headers=headers
    )


def gateway(stack: Stack, token: str) -> int:
    return httpx.get(
        f"{stack.sidecar.url}/api/mcp/echo", headers={"Authorization": f"Bearer {token}"}
    ).status_code


def test_an_anonymous_visitor_goes_to_the_login_page_and_comes_back(oauth_stack: Stack) -> None:
    r = Browser(oauth_stack.sidecar.url).get("/oauth/account")
    assert r.status_code == 303
    location = r.headers["location"]
    assert urlsplit(location).path == "/login"
    assert query_of(location)["callbackURL"] == f"{oauth_stack.sidecar.url}/oauth/account"


def test_the_page_lists_each_client_with_what_it_was_granted(
    oauth_stack: Stack, browser: Browser
) -> None:
    client, tokens = connect(oauth_stack, browser)
    client.refresh(tokens["refresh_token"])
    page = browser.get("/oauth/account")
    assert page.status_code == 200
    assert "Notes App" in page.text
    assert "https://notes.example" in page.text
    assert "See your email address" in page.text
    assert f"{oauth_stack.sidecar.url}/api/mcp" in page.text
    assert "last refreshed never" not in page.text  # the refresh was seen
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_revoke_ends_every_grant_of_the_client_and_forgets_the_consent(
    oauth_stack: Stack, browser: Browser
) -> None:
    client, first = connect(oauth_stack, browser)
    second = client.exchange(client.login(browser, scope="openid email")["code"]).json()
    assert gateway(oauth_stack, second["access_token"]) == 200
    page = browser.get("/oauth/account")
    assert "2 connections" in page.text
    done = revoke(browser, csrf_of(page.text), client.client_id)
    assert done.status_code == 303
    after = browser.get(done.headers["location"])
    assert "Access revoked" in after.text
    assert "Notes App" not in after.text
    # Refresh tokens at once; access tokens at the gateway within the cache.
    for tokens in (first, second):
        r = client.refresh(tokens["refresh_token"])
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_grant"
    deadline = time.monotonic() + 3
    while gateway(oauth_stack, second["access_token"]) == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gateway(oauth_stack, second["access_token"]) == 401
    # The remembered consent is gone: the next authorization asks again.
    assert browser.get(client.authorize_url(scope="openid email")).status_code == 200


def test_a_revoke_post_without_its_csrf_token_is_refused(
    oauth_stack: Stack, browser: Browser
) -> None:
    client, tokens = connect(oauth_stack, browser)
    assert revoke(browser, "", client.client_id).status_code == 403
    assert revoke(browser, "made-up", client.client_id).status_code == 403
    assert client.refresh(tokens["refresh_token"]).status_code == 200


def test_a_csrf_token_shown_to_another_person_is_refused(
    oauth_stack: Stack, browser: Browser
) -> None:
    client, tokens = connect(oauth_stack, browser)
    other = Browser(oauth_stack.sidecar.url).sign_up("Someone Else")
    connect(oauth_stack, other, name="Their Own App")
    other_token = csrf_of(other.get("/oauth/account").text)
    assert revoke(browser, other_token, client.client_id).status_code == 403
    assert client.refresh(tokens["refresh_token"]).status_code == 200


def test_a_post_from_another_origin_is_refused(oauth_stack: Stack, browser: Browser) -> None:
    client, _ = connect(oauth_stack, browser)
    token = csrf_of(browser.get("/oauth/account").text)
    r = revoke(browser, token, client.client_id, Origin="https://evil.example")
    assert r.status_code == 403


def test_one_person_cannot_revoke_another_persons_grant(
    oauth_stack: Stack, browser: Browser
) -> None:
    client, tokens = connect(oauth_stack, browser)
    other = Browser(oauth_stack.sidecar.url).sign_up("Mallory")
    connect(oauth_stack, other, name="Mallory's App")
    page = other.get("/oauth/account")
    assert "Notes App" not in page.text
    r = revoke(other, csrf_of(page.text), client.client_id)
    assert r.status_code == 404
    assert client.refresh(tokens["refresh_token"]).status_code == 200


# -- operators ----------------------------------------------------------------------


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env: dict[str, Any] = dict(stack.sidecar.extra["env"])  # type: ignore[arg-type]
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "grants", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_operators_list_and_revoke_grants_by_id_user_and_client(
    oauth_stack: Stack, browser: Browser
) -> None:
    user_id = browser.get("/api/auth/get-session").json()["user"]["id"]
    client, tokens = connect(oauth_stack, browser, name="CLI App")
    listed = cli(oauth_stack, "list", "--user", user_id)
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [line[2] for line in lines] == [client.client_id]
    grant_id = lines[0][0]
    assert cli(oauth_stack, "list", "--client", client.client_id).stdout.startswith(grant_id)
    done = cli(oauth_stack, "revoke", grant_id)
    assert done.returncode == 0
    assert done.stdout.strip() == "revoked 1 grant"
    assert client.refresh(tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert cli(oauth_stack, "list", "--user", user_id).stdout == ""

    unknown = cli(oauth_stack, "revoke", "no-such-grant")
    assert unknown.returncode == 1
    assert "no live grant" in unknown.stderr

    _, by_client = connect(oauth_stack, browser, name="Second")
    second_client = cli(oauth_stack, "list", "--user", user_id).stdout.split("\t")[2]
    by_second = cli(oauth_stack, "revoke", "--client", second_client)
    assert by_second.stdout.strip() == "revoked 1 grant", by_second.stderr
    _, by_user = connect(oauth_stack, browser, name="Third")
    assert cli(oauth_stack, "revoke", "--user", user_id).returncode == 0
    for tokens in (by_client, by_user):
        refused = httpx.post(
            f"{oauth_stack.sidecar.url}/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        )
        assert refused.status_code in (400, 401)


# -- a grant only from a live session --------------------------------------------------


def test_a_session_the_app_ended_does_not_become_a_grant(oauth_stack: Stack) -> None:
    """The convex_jwt cookie stays valid for up to 15 minutes after the app
    ends a session; the sidecar confirms the session before a new grant."""
    base = oauth_stack.sidecar.url
    laptop = Browser(base).sign_up("Dorothy Vaughan")
    laptop.get("/api/auth/get-session")  # convex() hands out the session JWT cookie
    assert any(c.name.endswith("convex_jwt") for c in laptop.client.cookies.jar)
    # On another device the person ends every other session.
    phone = Browser(base)
    phone.email = laptop.email
    phone.client.post(
        "/api/auth/sign-in/email", json={"email": laptop.email, "password": PASSWORD}
    ).raise_for_status()
    ended = phone.client.post("/api/auth/revoke-other-sessions", json={})
    assert ended.status_code == 200, ended.text
    assert any(c.name.endswith("convex_jwt") for c in laptop.client.cookies.jar)

    client = OAuthClient(base)
    client.register()
    r = laptop.get(client.authorize_url(scope="openid"))
    assert r.status_code == 303
    assert urlsplit(r.headers["location"]).path == "/login"
    # The live session on the phone goes through to consent as before.
    assert phone.get(client.authorize_url(scope="openid")).status_code == 200
