"""The protected resource and its server by the MCP authorization rules of
2026-07-28, against the README's own SIDECAR_RESOURCES example in front of the
real Better Auth + convex() server: scopes that add up, step-up, challenges a
browser can read, an uppercase resource, and no open redirector."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from sidecar.config import load_settings
from sidecar.keys import load_keyset
from tests.e2e.conftest import Stack, start_stack
from tools import fixtures
from tools.oauth import Browser, OAuthClient, query_of
from tools.processes import Process, running, start_sidecar, start_upstream

README_RESOURCES = "/api/mcp, /api/admin-mcp;scopes=mcp:admin, /api/self-checked;mode=metadata-only"


@pytest.fixture(scope="module")
def readme_stack() -> Iterator[Stack]:
    """The README's example as written: no SIDECAR_SCOPES, so mcp:admin is
    offered only because a resource requires it."""
    stack = start_stack(
        {"PUBLIC_URL": "{sidecar}"},
        {"SIDECAR_RESOURCES": README_RESOURCES, "SIDECAR_REGISTRATION_RATE_LIMIT": "1000"},
    )
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


def prm(stack: Stack, path: str) -> dict[str, object]:
    r = httpx.get(f"{stack.sidecar.url}/.well-known/oauth-protected-resource{path}")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def test_each_resource_lists_its_own_scopes_and_never_offline_access(
    readme_stack: Stack,
) -> None:
    assert prm(readme_stack, "/api/mcp")["scopes_supported"] == []
    assert prm(readme_stack, "/api/admin-mcp")["scopes_supported"] == ["mcp:admin"]
    assert prm(readme_stack, "/api/self-checked")["scopes_supported"] == []
    server = httpx.get(
        f"{readme_stack.sidecar.url}/.well-known/oauth-authorization-server/oauth"
    ).json()
    assert "mcp:admin" in server["scopes_supported"]


def test_the_401_names_the_scopes_of_a_resource_that_has_any(readme_stack: Stack) -> None:
    admin = httpx.get(f"{readme_stack.sidecar.url}/api/admin-mcp")
    assert admin.status_code == 401
    assert 'scope="mcp:admin"' in admin.headers["www-authenticate"]
    plain = httpx.get(f"{readme_stack.sidecar.url}/api/mcp")
    assert plain.status_code == 401
    assert "scope=" not in plain.headers["www-authenticate"]


def test_the_scope_the_challenge_names_can_be_granted(readme_stack: Stack) -> None:
    """The issue's reproduction: asking for exactly what the 401 named was
    invalid_scope, so the resource could never be reached."""
    base = readme_stack.sidecar.url
    browser = Browser(base).sign_up()
    client = OAuthClient(base)
    client.register()
    code = client.login(browser, resource=f"{base}/api/admin-mcp", scope="mcp:admin")["code"]
    token = client.exchange(code).json()["access_token"]
    r = httpx.get(f"{base}/api/admin-mcp/echo", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json()["headers"]["x-sidecar-scopes"] == "mcp:admin"


def test_a_client_may_step_up_beyond_the_scope_it_registered(readme_stack: Stack) -> None:
    base = readme_stack.sidecar.url
    browser = Browser(base).sign_up()
    client = OAuthClient(base)
    client.register(scope="openid")
    admin = f"{base}/api/admin-mcp"
    first = client.login(browser, resource=admin, scope="openid")
    weak = client.exchange(first["code"]).json()["access_token"]
    r = httpx.get(f"{base}/api/admin-mcp/echo", headers={"Authorization": f"Bearer {weak}"})
    assert r.status_code == 403
    assert 'scope="mcp:admin"' in r.headers["www-authenticate"]
    # SEP-2350: the union of the old and the challenged scopes, same client.
    page = browser.get(client.authorize_url(resource=admin, scope="openid mcp:admin"))
    assert page.status_code == 200, page.text  # consent again: mcp:admin is new
    asked, already = page.text.split("Already allowed:")
    assert "mcp:admin" in asked
    assert "Know who you are" in already  # openid, allowed the first time
    done = browser.consent(page)
    strong = client.exchange(query_of(done.headers["location"])["code"]).json()
    assert strong["scope"] == "openid mcp:admin"
    r = httpx.get(
        f"{base}/api/admin-mcp/echo", headers={"Authorization": f"Bearer {strong['access_token']}"}
    )
    assert r.status_code == 200


def test_a_scope_of_another_resource_is_not_granted_for_this_one(readme_stack: Stack) -> None:
    base = readme_stack.sidecar.url
    browser = Browser(base).sign_up()
    client = OAuthClient(base)
    client.register()
    code = client.login(browser, resource=f"{base}/api/mcp", scope="openid mcp:admin")["code"]
    assert client.exchange(code).json()["scope"] == "openid"


def test_an_operators_client_stays_pinned_to_its_scopes(readme_stack: Stack) -> None:
    base = readme_stack.sidecar.url
    env = dict(readme_stack.sidecar.extra["env"])  # type: ignore[arg-type]
    added = subprocess.run(
        [
            *(sys.executable, "-m", "sidecar", "clients", "add", "--name", "Pinned"),
            *("--redirect-uri", "https://pinned.example/cb", "--scope", "openid"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    client = OAuthClient(base, redirect_uri="https://pinned.example/cb")
    client.client_id = added.stdout.split("client_id: ")[1].split()[0]
    browser = Browser(base).sign_up()
    r = browser.get(
        client.authorize_url(resource=f"{base}/api/admin-mcp", scope="openid mcp:admin")
    )
    # A pre-registered client's redirect URI is trusted with the error.
    assert r.status_code == 302
    assert query_of(r.headers["location"])["error"] == "invalid_scope"


def test_an_uppercase_scheme_or_host_in_resource_is_accepted(readme_stack: Stack) -> None:
    base = readme_stack.sidecar.url
    browser = Browser(base).sign_up()
    client = OAuthClient(base)
    client.register()
    shouted = base.replace("http://", "HTTP://") + "/api/mcp/"
    code = client.login(browser, resource=shouted, scope="openid")["code"]
    body = client.exchange(code, resource=shouted).json()
    r = httpx.get(
        f"{base}/api/mcp/echo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert r.status_code == 200


def test_the_gateways_answers_and_preflights_carry_cors(readme_stack: Stack) -> None:
    base = readme_stack.sidecar.url
    r = httpx.get(f"{base}/api/mcp", headers={"Origin": "https://inspector.example"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "*"
    assert "WWW-Authenticate" in r.headers["access-control-expose-headers"]
    pre = httpx.options(
        f"{base}/api/admin-mcp",
        headers={
            "Origin": "https://inspector.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 204
    assert "POST" in pre.headers["access-control-allow-methods"]
    # A plain OPTIONS (no Origin: not a preflight) still needs a token.
    assert httpx.options(f"{base}/api/mcp").status_code == 401


# -- not an open redirector ------------------------------------------------------


def evil_client(base: str) -> OAuthClient:
    client = OAuthClient(base, redirect_uri="https://evil.example/cb")
    client.register(client_name="Totally Legit")
    return client


def test_an_invalid_request_is_not_redirected_to_an_untrusted_client(readme_stack: Stack) -> None:
    base = readme_stack.sidecar.url
    client = evil_client(base)
    anonymous = Browser(base)
    r = anonymous.get(client.authorize_url(response_type="token"))
    assert r.status_code == 400
    assert "location" not in r.headers
    assert "Totally Legit" in r.text
    assert "evil.example" in r.text
    assert "unsupported_response_type" in r.text


def test_prompt_none_for_an_anonymous_person_is_not_redirected_to_an_untrusted_client(
    readme_stack: Stack,
) -> None:
    client = evil_client(readme_stack.sidecar.url)
    r = Browser(readme_stack.sidecar.url).get(client.authorize_url(prompt="none"))
    assert r.status_code == 400
    assert "location" not in r.headers
    assert "login_required" in r.text


def test_a_loopback_client_gets_its_error_redirect(readme_stack: Stack) -> None:
    client = OAuthClient(readme_stack.sidecar.url)  # http://127.0.0.1:43210/callback
    client.register()
    r = Browser(readme_stack.sidecar.url).get(client.authorize_url(response_type="token"))
    assert r.status_code == 302
    assert r.headers["location"].startswith("http://127.0.0.1:43210/callback?")
    assert query_of(r.headers["location"])["error"] == "unsupported_response_type"


def test_a_client_this_person_approved_gets_its_error_redirect(readme_stack: Stack) -> None:
    base = readme_stack.sidecar.url
    client = evil_client(base)
    browser = Browser(base).sign_up()
    assert "code" in client.login(browser, scope="openid")
    r = browser.get(client.authorize_url(response_type="token"))
    assert r.status_code == 302
    assert r.headers["location"].startswith("https://evil.example/cb?")
    # Someone else, who never approved it, is not sent there.
    stranger = Browser(base).sign_up()
    assert stranger.get(client.authorize_url(response_type="token")).status_code == 400


# -- scope hierarchies -------------------------------------------------------------


@pytest.fixture(scope="module")
def hierarchy() -> Iterator[Process]:
    upstream = start_upstream()
    with running(upstream):
        sidecar = start_sidecar(
            upstream.url,
            SIDECAR_RESOURCES="/echo/tools;scopes=mcp:read;scopes_supported=mcp:admin",
            SIDECAR_SCOPE_INCLUDES="mcp:admin=mcp:read",
            JWKS=fixtures.text("static-jwks.json"),
            BETTER_AUTH_SECRET=fixtures.SECRET,
            CONVEX_SITE_URL="http://127.0.0.1:9",
        )
        with running(sidecar):
            yield sidecar


def signed(sidecar: Process, scope: str) -> str:
    keyset = load_keyset(
        load_settings(
            env={"JWKS": fixtures.text("static-jwks.json"), "BETTER_AUTH_SECRET": fixtures.SECRET}
        )
    )
    now = int(time.time())
    claims = {
        "iss": f"{sidecar.url}/oauth",
        "sub": "u",
        "aud": f"{sidecar.url}/echo/tools",
        "client_id": "c",
        "scope": scope,
        "jti": f"h-{scope}-{time.monotonic_ns()}",
        "iat": now,
        "exp": now + 600,
    }
    return keyset.sign(claims, typ="at+jwt")


@pytest.mark.parametrize(
    ("scope", "status"), [("mcp:read", 200), ("mcp:admin", 200), ("openid", 403)]
)
def test_a_scope_counts_as_the_scopes_it_includes(
    hierarchy: Process, scope: str, status: int
) -> None:
    r = httpx.get(
        f"{hierarchy.url}/echo/tools",
        headers={"Authorization": f"Bearer {signed(hierarchy, scope)}"},
    )
    assert r.status_code == status


def test_a_hierarchy_resource_names_required_and_offered_scopes(hierarchy: Process) -> None:
    r = httpx.get(f"{hierarchy.url}/.well-known/oauth-protected-resource/echo/tools")
    assert r.json()["scopes_supported"] == ["mcp:read", "mcp:admin"]
    challenge = httpx.get(f"{hierarchy.url}/echo/tools").headers["www-authenticate"]
    assert 'scope="mcp:read mcp:admin"' in challenge


# -- a browser on another origin ---------------------------------------------------


@pytest.fixture
def other_origin() -> Iterator[str]:
    """An empty page served from another origin (another loopback port)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = b"<!doctype html><title>an MCP client in a web page</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_origin_can_read_the_challenge_in_chromium(
    readme_stack: Stack, chromium: object, other_origin: str
) -> None:
    """What a browser-based MCP client does first: POST initialize with JSON
    (a preflighted request), get the 401 and read WWW-Authenticate."""
    page = chromium.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(other_origin)
        seen = page.evaluate(
            """async (url) => {
                const r = await fetch(url, {
                    method: "POST",
                    headers: {"Content-Type": "application/json",
                              "MCP-Protocol-Version": "2025-11-25"},
                    body: JSON.stringify({jsonrpc: "2.0", id: 1, method: "initialize"}),
                });
                return {status: r.status, challenge: r.headers.get("WWW-Authenticate")};
            }""",
            f"{readme_stack.sidecar.url}/api/admin-mcp",
        )
    finally:
        page.close()
    assert seen["status"] == 401
    prm = f"{readme_stack.sidecar.url}/.well-known/oauth-protected-resource/api/admin-mcp"
    assert seen["challenge"] == f'Bearer resource_metadata="{prm}", scope="mcp:admin"'
