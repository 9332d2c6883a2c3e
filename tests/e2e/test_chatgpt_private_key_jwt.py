"""ChatGPT's way in: a Client ID Metadata Document naming private_key_jwt and
a jwks_uri, both served over https, and client assertions (RFC 7523) at the
token endpoint; from the bare MCP URL through consent, a code exchange and
refreshes, to a tool call with the MCP Python SDK. Every classic forgery of
an assertion is refused without consuming the code."""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import Stack, start_stack
from tests.observability.test_metrics import metrics_of, value
from tests.support.certs import ThrowawayCA
from tools import fixtures
from tools.oauth import Browser, pkce_pair, query_of

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CHATGPT_REDIRECT = "https://chatgpt.com/connector_platform_oauth_redirect"
KID = "chatgpt-2026-11-01"


class ChatGPTSite:
    """What chatgpt.com publishes: its metadata document and its JWKS, over
    https with a certificate from a CA the sidecar trusts."""

    def __init__(self, ca: ThrowawayCA) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fetches: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.fetches[self.path] += 1
                body, kind = outer.serve(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Cache-Control", "max-age=300")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        leaf = ca.issue("chatgpt", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(leaf.cert, leaf.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {**jwk, "kid": KID, "use": "sig", "alg": "RS256"}

    def serve(self, path: str) -> tuple[bytes, str]:
        if path == "/jwks.json":
            return json.dumps({"keys": [self.public_jwk()]}).encode(), "application/json"
        document: dict[str, Any] = {
            "client_id": self.url(path),
            "client_name": "ChatGPT",
            "client_uri": "https://chatgpt.com",
            "redirect_uris": [CHATGPT_REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "RS256",
            "jwks_uri": self.url("/jwks.json"),
            "logo_uri": "https://chatgpt.com/logo.png",  # unknown here: ignored
        }
        if path.startswith("/both-methods"):
            # The second published shape: both methods listed; ChatGPT then
            # authenticates with an assertion only.
            document["token_endpoint_auth_methods_supported"] = ["none", "private_key_jwt"]
        elif path.startswith("/keyless"):
            del document["jwks_uri"]
        elif not path.startswith("/oauth/client-metadata"):
            return b"", "text/plain"
        return json.dumps(document).encode(), "application/json"

    def __enter__(self) -> ChatGPTSite:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA(Path(tempfile.mkdtemp(prefix="sidecar-chatgpt-ca-")))


@pytest.fixture(scope="module")
def chatgpt(ca: ThrowawayCA) -> Iterator[ChatGPTSite]:
    with ChatGPTSite(ca) as site:
        yield site


@pytest.fixture(scope="module")
def stack(ca: ThrowawayCA) -> Iterator[Stack]:
    shared = {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": "{app}",
    }
    stack = start_stack(
        {"PUBLIC_URL": "{sidecar}", **shared},
        {
            "SIDECAR_RESOURCES": "/api/mcp;scopes_supported=mcp:tools",
            "SIDECAR_CIMD_ALLOWED_HOSTS": "localhost",
            # The tests' browsers come through a trusted proxy, each from its
            # own address (X-Forwarded-For).
            "SIDECAR_TRUSTED_PROXIES": "127.0.0.1",
            # The product's defaults, which the test harness turns off.
            "SIDECAR_RATE_LIMIT_PER_IP": "300",
            "SIDECAR_RATE_LIMIT_PER_CLIENT": "600",
            # The documents' host is served with the test CA's certificate.
            "SSL_CERT_FILE": str(ca.path),
            **shared,
        },
    )
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


class Assertions:
    def __init__(self, site: ChatGPTSite, client_id: str, token_endpoint: str) -> None:
        self.site, self.client_id, self.token_endpoint = site, client_id, token_endpoint

    def claims(self, **override: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_urlsafe(16),
        }
        claims.update(override)
        return {k: v for k, v in claims.items() if v is not None}

    def good(self, **override: Any) -> str:
        return jwt.encode(
            self.claims(**override), self.site.key, algorithm="RS256", headers={"kid": KID}
        )


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': KID})}.{part(claims)}."


def hmac_with_public_key(site: ChatGPTSite, claims: dict[str, Any]) -> str:
    # The classic confusion: HS256 keyed with the published RSA key's PEM.
    pem = site.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(
        json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode()
    ).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    import hashlib
    import hmac

    signature = base64.urlsafe_b64encode(
        hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    ).rstrip(b"=")
    return (header + b"." + body + b"." + signature).decode()


def token_request(stack: Stack, form: dict[str, str], **kw: Any) -> httpx.Response:
    return httpx.post(stack.sidecar.url + "/oauth/token", data=form, **kw)


def authorize(stack: Stack, browser: Browser, client_id: str, resource: str) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    page = browser.get(
        "/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": CHATGPT_REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "s",
            "scope": "mcp:tools",
            "resource": resource,
        },
    )
    assert page.status_code == 200, page.text
    assert "ChatGPT" in page.text
    location = browser.consent(page).headers["location"]
    assert location.startswith(CHATGPT_REDIRECT)
    return query_of(location)["code"], verifier


@pytest.mark.parametrize("document", ["/oauth/client-metadata.json", "/both-methods.json"])
def test_chatgpt_goes_from_the_bare_mcp_url_to_a_tool_call_with_client_assertions(
    stack: Stack, chatgpt: ChatGPTSite, document: str
) -> None:
    base = stack.sidecar.url
    mcp_url = base + "/api/mcp"
    challenge = httpx.post(mcp_url, json={})
    assert challenge.status_code == 401
    prm_url = challenge.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
    prm = httpx.get(prm_url).json()
    issuer = prm["authorization_servers"][0]
    meta = httpx.get(base + "/.well-known/oauth-authorization-server/oauth").json()
    assert meta["issuer"] == issuer
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]
    assert "RS256" in meta["token_endpoint_auth_signing_alg_values_supported"]
    assert meta["client_id_metadata_document_supported"] is True

    client_id = chatgpt.url(document)
    sign = Assertions(chatgpt, client_id, meta["token_endpoint"])
    browser = Browser(base).sign_up("Grace Hopper")
    code, verifier = authorize(stack, browser, client_id, prm["resource"])
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": CHATGPT_REDIRECT,
        "resource": prm["resource"],
        "client_assertion_type": ASSERTION_TYPE,
    }
    # Without any credential the client is refused: it has no secret and is
    # not public.
    bare = {k: v for k, v in exchange.items() if k != "client_assertion_type"}
    refused = token_request(stack, {**bare, "client_id": client_id})
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    tokens = token_request(stack, {**exchange, "client_assertion": sign.good()})
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    # aud may name the issuer too (RFC 7523bis prefers it).
    for _ in range(2):
        refreshed = token_request(
            stack,
            {
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": sign.good(aud=issuer),
            },
        )
        assert refreshed.status_code == 200, refreshed.text
        body = refreshed.json()

    async def tool_call() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(mcp_url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("whoami", {})
            return json.loads(result.content[0].text)  # type: ignore[union-attr]

    import anyio

    seen = anyio.run(tool_call)
    person = browser.get("/api/auth/get-session").json()["user"]["id"]
    assert seen["userId"] == person
    assert seen["clientId"] == client_id
    # A dashboard can tell this client's tokens apart: by its document host.
    metrics = metrics_of(stack.sidecar)
    assert value(metrics, "sidecar_tokens_total", event="issued", client_family="localhost") >= 1
    assert value(metrics, "sidecar_tokens_total", event="refreshed", client_family="localhost") >= 2
    assert value(metrics, "sidecar_authorizations_total", client_family="localhost") >= 1


def test_a_popular_clients_users_behind_one_egress_are_not_throttled_as_one(
    stack: Stack, chatgpt: ChatGPTSite
) -> None:
    """400 people's grants of one CIMD client, made from 400 browser
    addresses, then redeemed and refreshed from one egress address within a
    minute: no 429. 400 made-up refresh tokens from one address are."""
    base = stack.sidecar.url
    meta = httpx.get(base + "/.well-known/oauth-authorization-server/oauth").json()
    client_id = chatgpt.url("/oauth/client-metadata.json")
    sign = Assertions(chatgpt, client_id, meta["token_endpoint"])
    browser = Browser(base).sign_up("Many Devices")
    first, first_verifier = authorize(stack, browser, client_id, base + "/api/mcp")
    codes = [(first, first_verifier)]
    for n in range(399):
        # The person's consent is remembered: each authorization is a 302
        # with a new code, each from another browser address.
        verifier, challenge = pkce_pair()
        r = browser.get(
            "/oauth/authorize",
            params={
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": CHATGPT_REDIRECT,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "scope": "mcp:tools",
                "resource": base + "/api/mcp",
            },
            headers={"X-Forwarded-For": f"198.51.{n // 250}.{n % 250 + 1}"},
        )
        assert r.status_code == 302, r.text
        codes.append((query_of(r.headers["location"])["code"], verifier))
    egress = {"X-Forwarded-For": "203.0.113.7"}
    statuses: Counter[int] = Counter()
    refresh_tokens = []
    with httpx.Client(base_url=base, headers=egress) as hosted:
        for code, verifier in codes:
            r = hosted.post(
                "/oauth/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "code_verifier": verifier,
                    "redirect_uri": CHATGPT_REDIRECT,
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": sign.good(),
                },
            )
            statuses[r.status_code] += 1
            if r.status_code == 200:
                refresh_tokens.append(r.json()["refresh_token"])
        for token in refresh_tokens:
            r = hosted.post(
                "/oauth/token",
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": token,
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": sign.good(),
                },
            )
            statuses[r.status_code] += 1
        assert statuses == Counter({200: 800})
        guessed: Counter[int] = Counter()
        with httpx.Client(base_url=base, headers={"X-Forwarded-For": "192.0.2.99"}) as guesser:
            for _ in range(400):
                r = guesser.post(
                    "/oauth/token",
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": f"{secrets.token_hex(16)}.{secrets.token_urlsafe(32)}",
                        "client_id": "guessing-client",
                    },
                )
                guessed[r.status_code] += 1
        # rate_limit_per_ip (300) refusals, then 429 until the minute ends.
        assert guessed[401] == 300, guessed
        assert guessed[429] == 100, guessed
        metrics = metrics_of(stack.sidecar)
        assert value(metrics, "sidecar_rate_limited_total", limit="token-failures-ip") >= 100
        # The hosted client's own address was never limited by the guessing.
        r = hosted.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_tokens[0],
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": sign.good(),
            },
        )
        assert r.status_code in (200, 400), r.text  # refreshed again, or the grace answer


def test_every_forged_assertion_is_refused_and_the_code_still_works_after(
    stack: Stack, chatgpt: ChatGPTSite
) -> None:
    base = stack.sidecar.url
    meta = httpx.get(base + "/.well-known/oauth-authorization-server/oauth").json()
    client_id = chatgpt.url("/oauth/client-metadata.json")
    sign = Assertions(chatgpt, client_id, meta["token_endpoint"])
    browser = Browser(base).sign_up("Alan Turing")
    code, verifier = authorize(stack, browser, client_id, base + "/api/mcp")
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": CHATGPT_REDIRECT,
        "client_assertion_type": ASSERTION_TYPE,
    }
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    replayed = sign.good()
    now = int(time.time())
    forgeries = {
        "alg none": unsigned(sign.claims()),
        "HS256 keyed with the public key": hmac_with_public_key(chatgpt, sign.claims()),
        "another audience": sign.good(aud="https://elsewhere.example/oauth/token"),
        "audience list with another": sign.good(aud=[meta["token_endpoint"], "https://x.test"]),
        "expired": sign.good(iat=now - 600, exp=now - 300),
        "expiry far away": sign.good(exp=now + 3600),
        "no expiry": sign.good(exp=None),
        "no jti": sign.good(jti=None),
        "issued in the future": sign.good(iat=now + 600, exp=now + 660),
        "iss is another client": sign.good(iss="https://evil.example/client.json"),
        "sub is another client": sign.good(sub="someone-else"),
        "another key under the same kid": jwt.encode(
            sign.claims(), impostor, algorithm="RS256", headers={"kid": KID}
        ),
        "an unknown kid": jwt.encode(
            sign.claims(), chatgpt.key, algorithm="RS256", headers={"kid": "made-up"}
        ),
        "PS256 where RS256 is registered": jwt.encode(
            sign.claims(), chatgpt.key, algorithm="PS256", headers={"kid": KID}
        ),
        "garbage": "not.a.jwt",
    }
    first_fetch = sum(chatgpt.fetches.values())
    for why, assertion in forgeries.items():
        r = token_request(stack, {**exchange, "client_assertion": assertion})
        assert r.status_code == 401, (why, r.text)
        assert r.json()["error"] == "invalid_client", why
    # An unknown kid is looked for once more, never once per request.
    assert sum(chatgpt.fetches.values()) - first_fetch <= 1
    wrong_type = token_request(
        stack, {**exchange, "client_assertion_type": "urn:x", "client_assertion": sign.good()}
    )
    assert wrong_type.status_code == 401
    with_secret = token_request(
        stack, {**exchange, "client_assertion": sign.good(), "client_secret": "s3cret"}
    )
    assert with_secret.status_code == 401
    with_basic = token_request(
        stack,
        {**exchange, "client_assertion": sign.good()},
        auth=(client_id, "s3cret"),
    )
    assert with_basic.status_code == 401
    # A good assertion, once: the code was never consumed by the refusals.
    good = token_request(stack, {**exchange, "client_assertion": replayed})
    assert good.status_code == 200, good.text
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": good.json()["refresh_token"],
        "client_assertion_type": ASSERTION_TYPE,
    }
    # The same assertion again: its jti is spent.
    again = token_request(stack, {**refresh, "client_assertion": replayed})
    assert again.status_code == 401
    # And the refresh token it failed to use still works with a good one.
    ok = token_request(stack, {**refresh, "client_assertion": sign.good()})
    assert ok.status_code == 200, ok.text


def test_a_document_naming_private_key_jwt_without_keys_is_refused_before_consent(
    stack: Stack, chatgpt: ChatGPTSite
) -> None:
    browser = Browser(stack.sidecar.url).sign_up()
    _, challenge = pkce_pair()
    page = browser.get(
        "/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": chatgpt.url("/keyless.json"),
            "redirect_uri": CHATGPT_REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    assert page.status_code == 400
    assert "Unknown application" in page.text
    assert "location" not in page.headers


def test_revocation_and_introspection_take_the_assertion_too(
    stack: Stack, chatgpt: ChatGPTSite
) -> None:
    base = stack.sidecar.url
    meta = httpx.get(base + "/.well-known/oauth-authorization-server/oauth").json()
    client_id = chatgpt.url("/oauth/client-metadata.json")
    sign = Assertions(chatgpt, client_id, meta["token_endpoint"])
    browser = Browser(base).sign_up()
    code, verifier = authorize(stack, browser, client_id, base + "/api/mcp")
    tokens = token_request(
        stack,
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": CHATGPT_REDIRECT,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": sign.good(),
        },
    ).json()
    auth = {"client_assertion_type": ASSERTION_TYPE}
    introspected = httpx.post(
        meta["introspection_endpoint"],
        data={
            **auth,
            "token": tokens["access_token"],
            "client_assertion": sign.good(aud=meta["issuer"]),
        },
    )
    assert introspected.status_code == 200, introspected.text
    assert introspected.json()["active"] is True
    unauthenticated = httpx.post(
        meta["revocation_endpoint"], data={"token": tokens["refresh_token"], "client_id": client_id}
    )
    assert unauthenticated.status_code == 401
    revoked = httpx.post(
        meta["revocation_endpoint"],
        data={**auth, "token": tokens["refresh_token"], "client_assertion": sign.good()},
    )
    assert revoked.status_code == 200, revoked.text
    refresh = token_request(
        stack,
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            **auth,
            "client_assertion": sign.good(),
        },
    )
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "invalid_grant"
