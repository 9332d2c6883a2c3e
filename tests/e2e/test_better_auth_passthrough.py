"""The route collision, shown fixed: Better Auth + convex() behind the sidecar
behaves exactly as it does directly, /api/auth/convex/token included."""

from __future__ import annotations

import re
import secrets
from http.cookies import SimpleCookie
from typing import Any

import httpx
import jwt

from tests.e2e.conftest import Stack
from tools.oauth import PASSWORD, Browser


def cookie_shapes(response: httpx.Response) -> list[tuple[str, str]]:
    """Each Set-Cookie as (name, attributes), values left out: a fresh session
    has fresh values, but names, order and attributes must match."""
    shapes = []
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0]
        attributes = ";".join(
            sorted(
                p.strip().split("=")[0].lower()
                + (
                    "=" + p.strip().split("=", 1)[1]
                    if p.strip().lower().startswith(("max-age", "path", "samesite"))
                    else ""
                )
                for p in header.split(";")[1:]
            )
        )
        shapes.append((name, attributes))
    return shapes


def shape(value: Any) -> Any:
    """A JSON body with volatile values (ids, tokens, times) replaced by their type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, str) and re.fullmatch(
        r"[A-Za-z0-9_\-.]{20,}|\d{4}-\d\d-\d\dT[\d:.]+Z", value
    ):
        return "<volatile>"
    return value


def run_flow(base: str, origin: str, email: str) -> list[tuple[str, httpx.Response]]:
    steps = []
    with httpx.Client(base_url=base, headers={"Origin": origin}) as client:
        body = {"email": email, "password": PASSWORD, "name": "Ada Lovelace"}
        steps.append(("sign-up", client.post("/api/auth/sign-up/email", json=body)))
        client.cookies.clear()
        steps.append(
            (
                "sign-in",
                client.post("/api/auth/sign-in/email", json={"email": email, "password": PASSWORD}),
            )
        )
        steps.append(("get-session", client.get("/api/auth/get-session")))
        steps.append(("convex-token", client.get("/api/auth/convex/token")))
        steps.append(("convex-jwks", client.get("/api/auth/convex/jwks")))
        steps.append(("sign-out", client.post("/api/auth/sign-out", json={})))
        steps.append(("get-session-after", client.get("/api/auth/get-session")))
        steps.append(("convex-token-after", client.get("/api/auth/convex/token")))
    return steps


def test_better_auth_answers_the_same_through_the_sidecar_as_directly(
    better_auth_stack: Stack,
) -> None:
    stack = better_auth_stack
    tag = secrets.token_hex(4)
    direct = run_flow(stack.app.url, stack.app.url, f"direct-{tag}@example.com")
    proxied = run_flow(stack.sidecar.url, stack.sidecar.url, f"proxied-{tag}@example.com")
    for (step, d), (_, p) in zip(direct, proxied, strict=True):
        assert p.status_code == d.status_code, step
        assert cookie_shapes(p) == cookie_shapes(d), step
        if d.headers.get("content-type", "").startswith("application/json"):
            d_body, p_body = d.json(), p.json()
            if isinstance(d_body, dict) and "user" in d_body:
                d_body["user"]["email"] = p_body["user"]["email"] = "<email>"
            if isinstance(d_body, dict) and "session" in d_body:
                # The one intended difference: through the sidecar the app
                # learns the client's address from X-Forwarded-For.
                assert p_body["session"]["ipAddress"] == "127.0.0.1"
                d_body["session"]["ipAddress"] = p_body["session"]["ipAddress"] = "<ip>"
            assert shape(p_body) == shape(d_body), step
        else:
            assert p.content == d.content, step
    statuses = {step: r.status_code for step, r in proxied}
    assert statuses == {
        "sign-up": 200,
        "sign-in": 200,
        "get-session": 200,
        "convex-token": 200,
        "convex-jwks": 200,
        "sign-out": 200,
        "get-session-after": 200,
        "convex-token-after": 401,
    }
    # The public key set is the same document either way.
    assert dict(proxied)["convex-jwks"].json() == dict(direct)["convex-jwks"].json()
    # Sign-out clears the same cookies in the same words.
    assert dict(proxied)["sign-out"].headers.get_list("set-cookie") == dict(direct)[
        "sign-out"
    ].headers.get_list("set-cookie")


def test_the_convex_jwt_fetched_through_the_sidecar_verifies_against_the_jwks(
    better_auth_stack: Stack,
) -> None:
    stack = better_auth_stack
    browser = Browser(stack.sidecar.url).sign_up("Grace")
    response = browser.get("/api/auth/convex/token")
    assert response.status_code == 200
    token = response.json()["token"]
    jwks = browser.get("/api/auth/convex/jwks").json()
    # convex() also sets the JWT as a cookie; it arrives intact.
    cookie: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookie.load(header)
    assert cookie["better-auth.convex_jwt"].value == token
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(
        token, jwt.PyJWK(key).key, algorithms=["RS256"], audience="convex", issuer=stack.site_url
    )
    assert claims["email"] == browser.email
    assert claims["exp"] - claims["iat"] == 900


def test_a_session_cookie_from_the_sidecar_works_directly_and_back(
    better_auth_stack: Stack,
) -> None:
    stack = better_auth_stack
    browser = Browser(stack.sidecar.url).sign_up("Cookie")
    direct = httpx.get(stack.app.url + "/api/auth/get-session", cookies=browser.client.cookies)
    assert direct.json()["user"]["email"] == browser.email
