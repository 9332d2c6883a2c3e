"""The shapes teams run in production, each against the real Better Auth +
convex() server, each from sign-in through authorize, consent and token to a
guarded MCP call, with `/convex/token` answering 200 through the sidecar:

- the sidecar serving TLS itself (a certificate replaced on disk is picked up);
- behind nginx terminating TLS;
- Better Auth on its own https origin (as on <deployment>.convex.site);
- Better Auth at a custom base path;
- the crossDomain plugin's header-borne session;
- BETTER_AUTH_SECRETS rotated on a running deployment.
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from tests.support.certs import ThrowawayCA, served_serial
from tools import fixtures
from tools.oauth import PASSWORD, REDIRECT, form_fields, pkce_pair
from tools.processes import (
    Process,
    free_port,
    start_better_auth,
    start_nginx,
    start_sidecar,
)


def reuse_keys() -> dict[str, str]:
    return {"JWKS": fixtures.text("static-jwks.json"), "BETTER_AUTH_SECRET": fixtures.SECRET}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA(tmp_path_factory.mktemp("ca"))


OPEN_JOURNEYS: list[Journey] = []


@pytest.fixture(autouse=True)
def _close_journeys() -> Iterator[None]:
    """Even a failing test leaves no connection open."""
    yield
    while OPEN_JOURNEYS:
        OPEN_JOURNEYS.pop().close()


@dataclass
class Journey:
    """One person and one MCP client, over whatever the public URL is."""

    public: str
    verify: ssl.SSLContext | bool
    auth_base: str = "/api/auth"

    def __post_init__(self) -> None:
        OPEN_JOURNEYS.append(self)
        self.browser = httpx.Client(
            base_url=self.public, verify=self.verify, headers={"Origin": self.public}
        )
        self.http = httpx.Client(base_url=self.public, verify=self.verify)
        self.email = f"shape-{secrets.token_hex(4)}@example.com"

    def close(self) -> None:
        self.browser.close()
        self.http.close()

    def sign_up(self) -> httpx.Response:
        r = self.browser.post(
            f"{self.auth_base}/sign-up/email",
            json={"email": self.email, "password": PASSWORD, "name": "Shape Tester"},
        )
        r.raise_for_status()
        self.browser.get(f"{self.auth_base}/get-session").raise_for_status()
        return r

    def connect(self, resource_path: str = "/api/mcp") -> dict[str, Any]:
        """Register, authorize, consent, exchange: the token response."""
        client = self.http.post(
            "/oauth/register",
            json={
                "redirect_uris": [REDIRECT],
                "client_name": "Shape client",
                "grant_types": ["authorization_code", "refresh_token"],
            },
        ).json()
        verifier, challenge = pkce_pair()
        query = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": "openid email",
            "state": "s",
            "resource": self.public + resource_path,
        }
        page = self.browser.get("/oauth/authorize", params=query)
        assert page.status_code == 200, page.text
        done = self.browser.post(
            "/oauth/consent", data={**form_fields(page.text), "decision": "approve"}
        )
        assert done.status_code == 303, done.text
        params = {k: v[0] for k, v in parse_qs(urlsplit(done.headers["location"]).query).items()}
        assert params["iss"] == f"{self.public}/oauth"
        tokens = self.http.post(
            "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "client_id": client["client_id"],
                "code": params["code"],
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
            },
        )
        assert tokens.status_code == 200, tokens.text
        return {**tokens.json(), "client_id": client["client_id"]}

    def mcp(self, token: str, path: str = "/api/mcp/echo") -> httpx.Response:
        return self.http.get(path, headers={"Authorization": f"Bearer {token}"})

    def whole_flow(self) -> dict[str, Any]:
        self.sign_up()
        tokens = self.connect()
        call = self.mcp(tokens["access_token"])
        assert call.status_code == 200, call.text
        assert self.browser.get(f"{self.auth_base}/convex/token").status_code == 200
        return tokens


def metadata_urls_use(public: str, verify: ssl.SSLContext | bool) -> None:
    meta = httpx.get(f"{public}/.well-known/oauth-authorization-server/oauth", verify=verify).json()
    assert meta["issuer"] == f"{public}/oauth"
    for key, value in meta.items():
        if key.endswith("_endpoint") or key == "jwks_uri":
            assert value.startswith(public + "/oauth/"), (key, value)
    prm = httpx.get(f"{public}/.well-known/oauth-protected-resource/api/mcp", verify=verify).json()
    assert prm["resource"] == f"{public}/api/mcp"
    assert prm["authorization_servers"] == [f"{public}/oauth"]


# -- 1. https all the way --------------------------------------------------------


@pytest.fixture(scope="module")
def tls_sidecar(ca: ThrowawayCA) -> Iterator[tuple[Process, Process, Any]]:
    leaf = ca.issue("sidecar", "127.0.0.1")
    port = free_port()
    public = f"https://127.0.0.1:{port}"
    app = start_better_auth(
        TRUSTED_ORIGINS=public, BETTER_AUTH_URL=public, PUBLIC_URL=public,
        CONVEX_SITE_URL=public, **reuse_keys(),
    )  # fmt: skip
    sidecar = start_sidecar(
        app.url,
        port=port,
        SIDECAR_TLS_CERTFILE=str(leaf.cert),
        SIDECAR_TLS_KEYFILE=str(leaf.key),
        SIDECAR_RESOURCES="/api/mcp",
        CONVEX_SITE_URL=public,
        TEST_CA_FILE=str(ca.path),
        **reuse_keys(),
    )
    yield app, sidecar, leaf
    sidecar.stop()
    app.stop()


def test_the_sidecar_serving_tls_carries_the_whole_flow(
    tls_sidecar: tuple[Process, Process, Any], ca: ThrowawayCA
) -> None:
    _, sidecar, _ = tls_sidecar
    assert sidecar.url.startswith("https://")
    journey = Journey(sidecar.url, ca.context())
    signed_up = journey.sign_up()
    # Better Auth on https: __Secure- cookies, Secure, passed through unchanged.
    cookies = signed_up.headers.get_list("set-cookie")
    assert any(c.startswith("__Secure-better-auth.session_token=") for c in cookies)
    assert all("Secure" in c for c in cookies)
    tokens = journey.connect()
    assert journey.mcp(tokens["access_token"]).status_code == 200
    assert journey.browser.get("/api/auth/convex/token").status_code == 200
    metadata_urls_use(sidecar.url, ca.context())
    journey.close()


def test_the_session_bridge_reads_the_secure_convex_jwt_cookie(
    tls_sidecar: tuple[Process, Process, Any], ca: ThrowawayCA
) -> None:
    _, sidecar, _ = tls_sidecar
    journey = Journey(sidecar.url, ca.context())
    journey.sign_up()
    jwt_cookie = next(
        c for c in journey.browser.cookies.jar if c.name == "__Secure-better-auth.convex_jwt"
    )
    # Only that cookie, no session cookie: the person is recognised from the
    # verified JWT alone.
    only_jwt = httpx.get(
        f"{sidecar.url}/oauth/account",
        headers={"Cookie": f"{jwt_cookie.name}={jwt_cookie.value}"},
        verify=ca.context(),
    )
    assert only_jwt.status_code == 200
    assert journey.email in only_jwt.text
    journey.close()


def test_strict_transport_security_on_the_sidecars_own_answers_over_tls(
    tls_sidecar: tuple[Process, Process, Any], ca: ThrowawayCA
) -> None:
    _, sidecar, _ = tls_sidecar
    verify = ca.context()
    own = httpx.get(f"{sidecar.url}/oauth/jwks", verify=verify)
    assert own.headers["strict-transport-security"] == "max-age=31536000"
    challenge = httpx.get(f"{sidecar.url}/api/mcp", verify=verify)
    assert challenge.status_code == 401
    assert "strict-transport-security" in challenge.headers
    app_answer = httpx.get(f"{sidecar.url}/healthz", verify=verify)
    assert "strict-transport-security" not in app_answer.headers  # the app's to set


def test_a_certificate_replaced_on_disk_is_served_without_a_restart(
    tls_sidecar: tuple[Process, Process, Any], ca: ThrowawayCA
) -> None:
    _, sidecar, leaf = tls_sidecar
    assert served_serial("127.0.0.1", sidecar.port, ca.path) == leaf.serial
    time.sleep(0.05)  # a new modification time
    renewed = ca.issue("sidecar", "127.0.0.1")
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        if served_serial("127.0.0.1", sidecar.port, ca.path) == renewed.serial:
            break
        time.sleep(0.2)
    assert served_serial("127.0.0.1", sidecar.port, ca.path) == renewed.serial
    assert sidecar.popen.poll() is None
    assert any(r.get("event") == "TLS certificate reloaded" for r in sidecar.log_records())


def test_behind_nginx_terminating_tls_the_flow_is_https_end_to_end(ca: ThrowawayCA) -> None:
    leaf = ca.issue("nginx", "127.0.0.1")
    sidecar_port = free_port()
    # The sidecar must know nginx's port (its public URL), so nginx starts
    # first, pointing at the sidecar's port; it answers 502 until then.
    nginx = start_nginx(sidecar_port, tls=(leaf.cert, leaf.key, ca.path))
    public = f"https://127.0.0.1:{nginx.port}"
    app = start_better_auth(
        TRUSTED_ORIGINS=public, BETTER_AUTH_URL=public, PUBLIC_URL=public,
        CONVEX_SITE_URL=public, **reuse_keys(),
    )  # fmt: skip
    sidecar = start_sidecar(
        app.url,
        port=sidecar_port,
        SIDECAR_PUBLIC_URL=public,
        SIDECAR_TRUSTED_PROXIES="127.0.0.1",
        SIDECAR_RESOURCES="/api/mcp",
        CONVEX_SITE_URL=public,
        **reuse_keys(),
    )
    try:
        journey = Journey(public, ca.context())
        signed_up = journey.sign_up()
        assert any(
            c.startswith("__Secure-better-auth.session_token=")
            for c in signed_up.headers.get_list("set-cookie")
        )
        tokens = journey.connect()
        seen = journey.mcp(tokens["access_token"]).json()
        # The app learns the original scheme from the trusted proxy chain.
        assert seen["headers"]["x-forwarded-proto"] == "https"
        assert journey.browser.get("/api/auth/convex/token").status_code == 200
        metadata_urls_use(public, ca.context())
        # Not serving TLS itself, the sidecar leaves HSTS to the ingress.
        assert "strict-transport-security" not in journey.http.get("/oauth/jwks").headers
        journey.close()
    finally:
        sidecar.stop()
        app.stop()
        nginx.stop()


# -- 2. Better Auth on its own https origin -----------------------------------------


def test_better_auth_on_its_own_https_origin_behind_the_sidecar(ca: ThrowawayCA) -> None:
    """As with Better Auth on <deployment>.convex.site: the upstream is a
    remote https origin with its own host name, certificate and SNI, that
    scopes its cookies to its own host and names itself in Location."""
    upstream_leaf = ca.issue("upstream", "localhost")  # its own name, not 127.0.0.1
    sidecar_leaf = ca.issue("public", "127.0.0.1")
    app_port, sidecar_port = free_port(), free_port()
    upstream_url = f"https://localhost:{app_port}"
    public = f"https://127.0.0.1:{sidecar_port}"
    app = start_better_auth(
        port=app_port,
        TLS_CERT=str(upstream_leaf.cert),
        TLS_KEY=str(upstream_leaf.key),
        TEST_CA_FILE=str(ca.path),
        BETTER_AUTH_URL=upstream_url,
        TRUSTED_ORIGINS=public,
        PUBLIC_URL=public,
        COOKIE_DOMAIN="localhost",
        CONVEX_SITE_URL=upstream_url,
        **reuse_keys(),
    )
    sidecar = start_sidecar(
        upstream_url,
        port=sidecar_port,
        SIDECAR_UPSTREAM_CA_FILE=str(ca.path),
        SIDECAR_TLS_CERTFILE=str(sidecar_leaf.cert),
        SIDECAR_TLS_KEYFILE=str(sidecar_leaf.key),
        TEST_CA_FILE=str(ca.path),
        SIDECAR_RESOURCES="/api/mcp",
        CONVEX_SITE_URL=upstream_url,
        **reuse_keys(),
    )
    try:
        verify = ca.context()
        # What the app sends directly: cookies scoped to its own host.
        direct = httpx.post(
            f"{upstream_url}/api/auth/sign-up/email",
            json={"email": "direct@example.com", "password": PASSWORD, "name": "D"},
            headers={"Origin": public},
            verify=verify,
        )
        assert any("Domain=localhost" in c for c in direct.headers.get_list("set-cookie"))
        journey = Journey(public, verify)
        signed_up = journey.sign_up()
        through = signed_up.headers.get_list("set-cookie")
        assert through
        assert not any("domain=" in c.lower() for c in through)  # host-only on the public origin
        tokens = journey.connect()
        assert journey.mcp(tokens["access_token"]).status_code == 200
        assert journey.browser.get("/api/auth/convex/token").status_code == 200
        # The upstream saw its own host name (and so its own SNI and certificate).
        seen = journey.http.get("/echo-headers").json()
        assert seen["host"] == f"localhost:{app_port}"
        moved = journey.http.get("/redirect-home", follow_redirects=False)
        assert moved.headers["location"] == f"{public}/home"
        journey.close()
    finally:
        sidecar.stop()
        app.stop()


def test_an_https_upstream_with_an_unknown_certificate_is_a_clean_502(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    leaf = ca.issue("untrusted", "localhost")
    port = free_port()
    app = start_better_auth(
        port=port, TLS_CERT=str(leaf.cert), TLS_KEY=str(leaf.key), TEST_CA_FILE=str(ca.path)
    )
    other = ThrowawayCA(tmp_path / "other")  # not the CA that signed the upstream
    sidecar = start_sidecar(f"https://localhost:{port}", SIDECAR_UPSTREAM_CA_FILE=str(other.path))
    try:
        r = httpx.get(f"{sidecar.url}/healthz")
        assert r.status_code == 502
        assert r.json()["error"] == "bad_gateway"
        assert "Traceback" not in sidecar.log_text()
    finally:
        sidecar.stop()
        app.stop()


# -- 3. a custom base path ------------------------------------------------------------


def test_better_auth_at_a_custom_base_path() -> None:
    sidecar_port = free_port()
    public = f"http://127.0.0.1:{sidecar_port}"
    app = start_better_auth(
        AUTH_BASE_PATH="/auth", TRUSTED_ORIGINS=public, PUBLIC_URL=public,
        CONVEX_SITE_URL=public, **reuse_keys(),
    )  # fmt: skip
    sidecar = start_sidecar(
        app.url,
        port=sidecar_port,
        SIDECAR_AUTH_BASE_PATH="/auth",
        SIDECAR_RESOURCES="/api/mcp",
        CONVEX_SITE_URL=public,
        **reuse_keys(),
    )
    try:
        journey = Journey(public, True, auth_base="/auth")
        journey.whole_flow()
        assert journey.browser.get("/api/auth/convex/token").status_code == 404  # not there
        journey.close()
    finally:
        sidecar.stop()
        app.stop()


# -- 4. the crossDomain plugin ----------------------------------------------------------


def test_a_session_carried_in_the_better_auth_cookie_header_is_honoured() -> None:
    """crossDomain keeps the session in the app's JavaScript and sends it as
    `Better-Auth-Cookie`; the sidecar passes `Set-Better-Auth-Cookie` through
    and recognises a request that carries the header."""
    sidecar_port = free_port()
    public = f"http://127.0.0.1:{sidecar_port}"
    site = "http://localhost:5173"
    app = start_better_auth(
        CROSS_DOMAIN_SITE_URL=site, TRUSTED_ORIGINS=f"{public},{site}", PUBLIC_URL=public,
        CONVEX_SITE_URL=public, **reuse_keys(),
    )  # fmt: skip
    sidecar = start_sidecar(
        app.url, port=sidecar_port, SIDECAR_RESOURCES="/api/mcp", CONVEX_SITE_URL=public,
        **reuse_keys(),
    )  # fmt: skip
    try:
        email = f"cross-{secrets.token_hex(3)}@example.com"
        signed = httpx.post(
            f"{public}/api/auth/sign-up/email",
            json={"email": email, "password": PASSWORD, "name": "Cross"},
            # The plugin's client sends the header (empty before sign-in) and
            # reads the session back from Set-Better-Auth-Cookie.
            headers={"Origin": site, "Better-Auth-Cookie": ""},
        )
        assert signed.status_code == 200, signed.text
        carried = signed.headers.get("set-better-auth-cookie")
        assert carried, signed.headers
        header = {"Better-Auth-Cookie": carried}
        # No Cookie header at all: only what the app's JavaScript would send.
        page = httpx.get(f"{public}/oauth/account", headers=header)
        assert page.status_code == 200, page.text
        assert email in page.text
        # A top-level navigation carries no such header: the login page.
        assert httpx.get(f"{public}/oauth/account").status_code == 303
        # An app whose own JavaScript drives the authorization with the header
        # (a fetch, not a navigation) gets all the way to a guarded call.
        journey = Journey(public, True)
        journey.browser.headers.update(header)
        tokens = journey.connect()
        assert journey.mcp(tokens["access_token"]).status_code == 200
        assert journey.browser.get("/api/auth/convex/token").status_code == 200
    finally:
        sidecar.stop()
        app.stop()


# -- 5. secret rotation -------------------------------------------------------------------


def test_rotating_better_auth_secrets_keeps_every_token_working(tmp_path: Path) -> None:
    sidecar_port = free_port()
    public = f"http://127.0.0.1:{sidecar_port}"
    data = tmp_path / "data"
    data.mkdir()
    app = start_better_auth(
        TRUSTED_ORIGINS=public, PUBLIC_URL=public, CONVEX_SITE_URL=public, **reuse_keys()
    )
    common = {
        "SIDECAR_RESOURCES": "/api/mcp",
        "CONVEX_SITE_URL": public,
        "SIDECAR_DATA_DIR": str(data),
        "SIDECAR_STORE_URL": f"sqlite:///{data}/sidecar.db",
    }
    sidecar = start_sidecar(app.url, port=sidecar_port, **common, **reuse_keys())
    try:
        journey = Journey(public, True)
        tokens = journey.whole_flow()
        kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
        sidecar.stop()
        # The deployment moves to BETTER_AUTH_SECRETS, and its static JWKS is
        # written again with the same key under the new version ($ba$2$...).
        rotated = {
            "JWKS": reencrypted_jwks(fixtures.text("static-jwks.json"), fixtures.SECRETS),
            "BETTER_AUTH_SECRETS": fixtures.SECRETS,
        }
        assert '"$ba$2$' in rotated["JWKS"]
        sidecar = start_sidecar(app.url, port=sidecar_port, **common, **rotated)
        assert journey.mcp(tokens["access_token"]).status_code == 200  # existing access token
        refreshed = journey.http.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": tokens["client_id"],
            },
        )
        assert refreshed.status_code == 200, refreshed.text  # existing refresh token
        new = refreshed.json()["access_token"]
        assert jwt.get_unverified_header(new)["kid"] == kid  # same key id
        assert journey.mcp(new).status_code == 200
        assert journey.browser.get("/api/auth/convex/token").status_code == 200
        journey.close()
    finally:
        sidecar.stop()
        app.stop()


def reencrypt_private_key(jwk: dict[str, Any], secret: str, version: str) -> str:
    """The private JWK encrypted as Better Auth stores it with
    BETTER_AUTH_SECRETS (shared/fixtures/better-auth/README.md): XChaCha20-
    Poly1305, key SHA-256 of the secret, hex of nonce || ciphertext || tag,
    in a ``$ba$<version>$`` envelope, as a JSON string literal."""
    import hashlib

    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    nonce = secrets.token_bytes(24)
    key = hashlib.sha256(secret.encode()).digest()
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(json.dumps(jwk).encode(), None, nonce, key)
    return json.dumps(f"$ba${version}${(nonce + sealed).hex()}")


def reencrypted_jwks(value: str, versioned: str) -> str:
    from sidecar.keys.static_jwks import decrypt_private_jwk, parse_rows, parse_secrets

    old = parse_secrets(fixtures.SECRET, None)
    version, _, secret = versioned.split(",")[0].partition(":")
    rows = json.loads(value)
    for raw, parsed in zip(rows, parse_rows(value), strict=True):
        raw["privateKey"] = reencrypt_private_key(decrypt_private_jwk(parsed, old), secret, version)
    return json.dumps(rows)
