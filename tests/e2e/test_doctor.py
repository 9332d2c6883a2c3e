"""`sidecar doctor URL`: a healthy deployment passes every line; each broken
deployment fails its own line and names the fix. Real sidecars (and the real
Better Auth server) where the fault is one a configuration makes; a small fake
deployment for faults the sidecar itself cannot be configured into."""

from __future__ import annotations

import email.utils
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import Stack, start_stack
from tests.support.certs import ThrowawayCA
from tools import fixtures
from tools.processes import Process, free_port, running, start_better_auth, start_sidecar

LINES = 11


def doctor(
    url: str, *extra: str, env: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """``env``: the sidecar's own environment, for ``--config``."""
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "doctor", url, "--json", *extra],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={**os.environ, **env} if env is not None else None,
    )
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    return done.returncode, report, done.stdout


def line(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"].startswith(name))


def failed(report: dict[str, Any]) -> list[str]:
    return [c["name"] for c in report["checks"] if not c["ok"]]


def env_of(sidecar: Process) -> dict[str, str]:
    return dict(sidecar.extra["env"])  # type: ignore[arg-type]


def static_jwks_env() -> dict[str, str]:
    """The production shape: the app's static JWKS, reused by the sidecar."""
    return {"JWKS": fixtures.text("static-jwks.json"), "BETTER_AUTH_SECRET": fixtures.SECRET}


@pytest.fixture(scope="module")
def healthy() -> Iterator[Stack]:
    shared = {**static_jwks_env(), "CONVEX_SITE_URL": "{app}"}
    stack = start_stack(
        {"PUBLIC_URL": "{sidecar}", **shared}, {"SIDECAR_RESOURCES": "/api/mcp", **shared}
    )
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


def test_a_healthy_deployment_passes_every_line(healthy: Stack) -> None:
    code, report, _ = doctor(f"{healthy.sidecar.url}/api/mcp")
    assert code == 0, failed(report)
    assert report["ok"] is True
    assert [c["ok"] for c in report["checks"]] == [True] * LINES
    assert "not compared" in line(report, "session JWT")["seen"]
    text = subprocess.run(
        [sys.executable, "-m", "sidecar", "doctor", f"{healthy.sidecar.url}/api/mcp"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert text.splitlines()[-1] == f"{LINES} passed, 0 failed"


def test_a_healthy_deployment_passes_every_line_against_its_own_configuration(
    healthy: Stack,
) -> None:
    code, report, _ = doctor(
        f"{healthy.sidecar.url}/api/mcp", "--config", env=env_of(healthy.sidecar)
    )
    assert code == 0, failed(report)
    session = line(report, "session JWT")["seen"]
    assert f"the sidecar expects {healthy.app.url}" in session
    assert "the sidecar's JWKS holds every key" in session


def clients_in_store(sidecar: Process) -> list[str]:
    listed = subprocess.run(
        [sys.executable, "-m", "sidecar", "clients", "list"],
        env={**os.environ, **env_of(sidecar)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return listed.splitlines()


def test_a_doctor_run_leaves_no_client_behind(healthy: Stack) -> None:
    before = clients_in_store(healthy.sidecar)
    code, report, _ = doctor(f"{healthy.sidecar.url}/api/mcp")
    assert code == 0, failed(report)
    assert line(report, "registration")["ok"] is True
    assert clients_in_store(healthy.sidecar) == before


# -- nothing answers -----------------------------------------------------------------


def test_nothing_listening_is_a_failed_line_with_its_fix_not_a_crash() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/mcp"
    code, report, _ = doctor(url)
    assert code == 1
    assert report["ok"] is False
    first = report["checks"][0]
    assert first["name"] == "MCP URL challenge"
    assert "nothing listens" in first["seen"]
    assert "sidecar serve" in first["fix"]
    assert len(report["checks"]) == LINES
    assert all(not c["ok"] for c in report["checks"])
    later = report["checks"][1:]
    assert all(c["seen"].startswith("not run:") for c in later), later
    assert all(c["fix"].endswith("above") for c in later)
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "doctor", url],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "FAIL  MCP URL challenge: nothing listens" in done.stdout
    assert done.stdout.splitlines()[-1] == f"0 passed, {LINES} failed"


def test_a_name_that_does_not_resolve_is_a_failed_line_with_its_fix() -> None:
    code, report, _ = doctor("http://doctor-nowhere.invalid/api/mcp")
    assert code == 1
    first = report["checks"][0]
    assert first["ok"] is False
    assert "does not resolve" in first["seen"]
    assert "DNS" in first["fix"]


# -- the app and the sidecar disagree ---------------------------------------------------


@pytest.fixture
def stack_with(request: pytest.FixtureRequest) -> Iterator[Callable[..., Stack]]:
    """A Better Auth app and a sidecar in front of it, each given exactly
    the environment a test names ({sidecar}, {app} filled in)."""
    made: list[Process] = []

    def start(app_env: dict[str, str], sidecar_env: dict[str, str]) -> Stack:
        sidecar_port, app_port = free_port(), free_port()
        urls = {
            "{sidecar}": f"http://127.0.0.1:{sidecar_port}",
            "{app}": f"http://127.0.0.1:{app_port}",
        }

        def fill(env: dict[str, str]) -> dict[str, str]:
            filled = {}
            for k, v in env.items():
                for name, url in urls.items():
                    v = v.replace(name, url)
                filled[k] = v
            return filled

        provider = Path(tempfile.mkdtemp(prefix="sidecar-doctor-")) / "provider.json"
        provider.write_text("[]")
        app = start_better_auth(port=app_port, CONVEX_PROVIDER_FILE=str(provider), **fill(app_env))
        made.append(app)
        sidecar = start_sidecar(app.url, port=sidecar_port, **fill(sidecar_env))
        made.append(sidecar)
        return Stack(app, sidecar)

    yield start
    for process in reversed(made):
        process.stop()


def test_an_app_that_does_not_trust_the_sidecars_origin_fails_the_sign_in_line(
    stack_with: Callable[..., Stack],
) -> None:
    stack = stack_with(
        {"TRUSTED_ORIGINS": "https://somewhere-else.example", "PUBLIC_URL": "{sidecar}"},
        {"SIDECAR_RESOURCES": "/api/mcp"},
    )
    code, report, _ = doctor(f"{stack.sidecar.url}/api/mcp")
    assert code == 1
    assert failed(report) == ["sign-in accepted from the sidecar's origin"]
    sign_in = line(report, "sign-in accepted")
    assert "INVALID_ORIGIN" in sign_in["seen"]
    assert "trustedOrigins" in sign_in["fix"]
    assert stack.sidecar.url in sign_in["fix"]


def test_a_wrong_session_issuer_fails_the_session_line(stack_with: Callable[..., Stack]) -> None:
    jwks = static_jwks_env()
    stack = stack_with(
        {
            "TRUSTED_ORIGINS": "{sidecar}",
            "PUBLIC_URL": "{sidecar}",
            "CONVEX_SITE_URL": "{app}",
            **jwks,
        },
        {"SIDECAR_RESOURCES": "/api/mcp", "CONVEX_SITE_URL": "https://wrong.convex.site", **jwks},
    )
    url = f"{stack.sidecar.url}/api/mcp"
    code, report, _ = doctor(url, "--config", env=env_of(stack.sidecar))
    assert code == 1
    assert failed(report) == ["session JWT verifies at the sidecar"]
    session = line(report, "session JWT")
    assert "https://wrong.convex.site" in session["seen"]
    assert stack.app.url in session["seen"]
    assert "CONVEX_SITE_URL" in session["fix"]
    assert "session_issuer" in session["fix"]
    # The same, said on the command line, from anywhere.
    _, by_flag, _ = doctor(url, "--session-issuer", "https://wrong.convex.site")
    assert failed(by_flag) == ["session JWT verifies at the sidecar"]
    _, right, _ = doctor(url, "--session-issuer", stack.app.url)
    assert right["ok"] is True


def test_a_sidecar_given_another_jwks_than_the_apps_fails_the_session_line(
    stack_with: Callable[..., Stack],
) -> None:
    # The app makes its own key; the sidecar is given the fixture's.
    stack = stack_with(
        {"TRUSTED_ORIGINS": "{sidecar}", "PUBLIC_URL": "{sidecar}", "CONVEX_SITE_URL": "{app}"},
        {"SIDECAR_RESOURCES": "/api/mcp", "CONVEX_SITE_URL": "{app}", **static_jwks_env()},
    )
    code, report, _ = doctor(f"{stack.sidecar.url}/api/mcp", "--config", env=env_of(stack.sidecar))
    assert code == 1
    session = line(report, "session JWT")
    assert session["ok"] is False
    assert "JWKS lacks" in session["seen"]
    assert "JWKS" in session["fix"]


def test_a_wrong_auth_base_path_fails_the_login_and_better_auth_lines(
    stack_with: Callable[..., Stack],
) -> None:
    # A path no Better Auth version answers (1.6.11 also answers other paths
    # under /api/ ending in its routes, so a wrong /api/... works there).
    stack = stack_with(
        {"TRUSTED_ORIGINS": "{sidecar}", "PUBLIC_URL": "{sidecar}"},
        {"SIDECAR_RESOURCES": "/api/mcp", "SIDECAR_AUTH_BASE_PATH": "/wrong-auth"},
    )
    url = f"{stack.sidecar.url}/api/mcp"
    code, report, _ = doctor(url)  # from outside: what people meet
    assert code == 1
    login = line(report, "login page")
    assert login["ok"] is False
    assert "Sign-in is unavailable" in login["seen"]
    assert "SIDECAR_AUTH_BASE_PATH" in login["fix"]
    _, configured, _ = doctor(url, "--config", env=env_of(stack.sidecar))
    app = line(configured, "Better Auth at auth_base_path")
    assert app["ok"] is False
    assert "/wrong-auth/get-session 404" in app["seen"]
    assert "SIDECAR_AUTH_BASE_PATH" in app["fix"]


def test_an_issuer_on_another_origin_fails_the_issuer_line(
    fake: Callable[..., FakeDeployment],
) -> None:
    # Seen from outside: the metadata sends clients to an origin where the
    # sidecar does not answer.
    deployment = fake()
    elsewhere = f"http://127.0.0.1:{free_port()}/oauth"
    deployment.healthy["/.well-known/oauth-protected-resource/mcp"] = lambda h: h.reply(
        200, {"resource": f"{deployment.base}/mcp", "authorization_servers": [elsewhere]}
    )
    code, report, _ = doctor(f"{deployment.base}/mcp")
    assert code == 1
    issuer = line(report, "issuer on the sidecar's origin")
    assert issuer["ok"] is False
    assert elsewhere in issuer["seen"]
    assert "issuer (SIDECAR_ISSUER)" in issuer["fix"]
    assert "nothing listens" in line(report, "authorization server metadata")["seen"]


def test_an_issuer_on_another_origin_in_the_configuration_is_named(healthy: Stack) -> None:
    # A sidecar refuses to start so (or, before that rule, serves it): the
    # doctor given its configuration names the key either way.
    env = {
        **env_of(healthy.sidecar),
        "SIDECAR_PUBLIC_URL": healthy.sidecar.url,
        "SIDECAR_ISSUER": f"http://127.0.0.1:{free_port()}/oauth",
    }
    code, report, _ = doctor(f"{healthy.sidecar.url}/api/mcp", "--config", env=env)
    assert code == 1
    said = [c["seen"] + " " + c["fix"] for c in report["checks"] if not c["ok"]]
    assert any("issuer (SIDECAR_ISSUER)" in s for s in said), said


def test_a_configuration_that_does_not_load_is_a_failed_line(tmp_path: Path) -> None:
    broken = tmp_path / "sidecar.toml"
    broken.write_text("auth_base_path = 'no-slash'\n")
    code, report, _ = doctor("http://127.0.0.1:9/api/mcp", "--config", str(broken))
    assert code == 1
    assert report["checks"][0]["name"] == "the sidecar's configuration"
    assert "auth_base_path" in report["checks"][0]["seen"]


# -- the sidecar's own faults ------------------------------------------------------------


def test_an_unguarded_endpoint_fails_the_challenge_line(healthy: Stack) -> None:
    code, report, _ = doctor(f"{healthy.sidecar.url}/api/not-configured")
    assert code == 1
    first = line(report, "MCP URL challenge")
    assert first["ok"] is False
    assert "SIDECAR_RESOURCES" in first["fix"]


def test_a_public_url_spelled_otherwise_fails_the_resource_line(healthy: Stack) -> None:
    # The sidecar thinks it is 127.0.0.1; the person pastes localhost.
    url = f"http://localhost:{healthy.sidecar.port}/api/mcp"
    _, report, _ = doctor(url)
    prm = line(report, "protected resource metadata")
    assert prm["ok"] is False
    assert "resource is" in prm["seen"]
    assert "SIDECAR_PUBLIC_URL" in prm["fix"]


def test_cors_turned_off_fails_the_browser_line(upstream: Process) -> None:
    with running(
        start_sidecar(
            upstream.url, SIDECAR_RESOURCES="/api/mcp", SIDECAR_GATEWAY_CORS_ORIGINS="none"
        )
    ) as sidecar:
        _, report, _ = doctor(f"{sidecar.url}/api/mcp")
    browser = line(report, "challenge readable")
    assert browser["ok"] is False
    assert "gateway_cors_origins" in browser["fix"]


def test_a_certificate_about_to_expire_fails_the_tls_line(upstream: Process, tmp_path: Any) -> None:
    ca = ThrowawayCA(tmp_path / "ca")
    leaf = ca.issue("short", "127.0.0.1", days=3)
    with running(
        start_sidecar(
            upstream.url,
            SIDECAR_RESOURCES="/api/mcp",
            SIDECAR_TLS_CERTFILE=str(leaf.cert),
            SIDECAR_TLS_KEYFILE=str(leaf.key),
            TEST_CA_FILE=str(ca.path),
        )
    ) as sidecar:
        _, report, _ = doctor(f"{sidecar.url}/api/mcp", "--ca-file", str(ca.path))
        code, untrusted, _ = doctor(f"{sidecar.url}/api/mcp")  # the private CA not given
    assert code == 1
    first = untrusted["checks"][0]
    assert "certificate is not trusted" in first["seen"]
    assert "--ca-file" in first["fix"]
    assert untrusted["checks"][1]["seen"].startswith("not run:")
    tls = line(report, "TLS and clock")
    assert tls["ok"] is False
    assert "expires in" in tls["seen"]
    assert "tls_certfile" in tls["fix"]
    assert line(report, "MCP URL challenge")["ok"] is True  # https itself worked


# -- a fake deployment, for what the sidecar cannot be configured into -----------------------


class FakeDeployment:
    """Answers the way a healthy sidecar in front of Better Auth does, unless
    a test overrides a path."""

    def __init__(self, overrides: dict[str, Callable[[BaseHTTPRequestHandler], None]]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def answer(self) -> None:
                path = urlsplit(self.path).path
                handler = overrides.get(path) or outer.healthy.get(path)
                if handler is None:
                    self.reply(404, {"error": "not_found"})
                else:
                    handler(self)

            def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_OPTIONS = answer

        self.handler_class = Handler
        issuer = f"{self.base}/oauth"
        metadata = {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "registration_endpoint": f"{issuer}/register",
            "jwks_uri": f"{issuer}/jwks",
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
        }
        cors = {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": "WWW-Authenticate",
        }

        def mcp(h: Any) -> None:
            challenge = (
                f'Bearer resource_metadata="{self.base}/.well-known/oauth-protected-resource/mcp"'
            )
            h.reply(
                401 if h.command != "OPTIONS" else 204,
                None,
                {"WWW-Authenticate": challenge, **cors},
            )

        def login(h: Any) -> None:
            h.send_response(303)
            h.send_header("Location", f"{self.base}/login?callbackURL={self.base}/oauth/account")
            h.send_header("Content-Length", "0")
            h.end_headers()

        def login_page(h: Any) -> None:
            h.send_response(200)
            h.send_header("Content-Length", "2")
            h.end_headers()
            h.wfile.write(b"ok")

        doc = lambda body: lambda h: h.reply(200, body)  # noqa: E731
        self.healthy: dict[str, Callable[[Any], None]] = {
            "/mcp": mcp,
            "/.well-known/oauth-protected-resource/mcp": doc(
                {
                    "resource": f"{self.base}/mcp",
                    "authorization_servers": [issuer],
                    "scopes_supported": [],
                }
            ),
            "/.well-known/oauth-authorization-server/oauth": doc(metadata),
            "/.well-known/openid-configuration/oauth": doc(metadata),
            "/oauth/.well-known/openid-configuration": doc(metadata),
            "/oauth/register": lambda h: h.reply(400, {"error": "invalid_redirect_uri"}),
            "/oauth/token": lambda h: h.reply(401, {"error": "invalid_client"}),
            "/oauth/account": login,
            "/login": login_page,
            "/api/auth/get-session": lambda h: h.reply(200, None),
            "/api/auth/convex/token": lambda h: h.reply(401, {"code": "UNAUTHORIZED"}),
            "/api/auth/sign-in/email": lambda h: h.reply(
                401, {"code": "INVALID_EMAIL_OR_PASSWORD"}
            ),
            "/api/auth/convex/jwks": doc({"keys": [{"kid": "k1", "kty": "RSA"}]}),
            "/api/auth/convex/.well-known/openid-configuration": doc({"issuer": self.base}),
            "/oauth/healthz": lambda h: h.reply(200, {"status": "ok"}),
        }
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeDeployment]]:
    made: list[FakeDeployment] = []

    def make() -> FakeDeployment:
        deployment = FakeDeployment({})
        made.append(deployment)
        return deployment

    yield make
    for d in made:
        d.close()


def broken(
    fake: Callable[..., FakeDeployment], path: str, handler: Callable[[Any], None]
) -> dict[str, Any]:
    deployment = fake()
    deployment.healthy[path] = handler
    code, report, _ = doctor(f"{deployment.base}/mcp")
    assert code == 1
    return report


def test_the_fake_deployment_is_healthy_as_it_stands(fake: Callable[..., FakeDeployment]) -> None:
    deployment = fake()
    code, _, text = doctor(f"{deployment.base}/mcp")
    assert code == 0, text


def test_an_issuer_that_differs_by_a_slash_fails_the_server_line(
    fake: Callable[..., FakeDeployment],
) -> None:
    deployment = fake()
    slashed = json.loads(json.dumps({"issuer": f"{deployment.base}/oauth/"}))

    def metadata(h: Any) -> None:
        h.reply(200, {**slashed, "code_challenge_methods_supported": ["S256"],
                      "authorization_response_iss_parameter_supported": True,
                      "registration_endpoint": f"{deployment.base}/oauth/register",
                      "token_endpoint": f"{deployment.base}/oauth/token",
                      "authorization_endpoint": f"{deployment.base}/oauth/authorize"})  # fmt: skip

    deployment.healthy["/.well-known/oauth-authorization-server/oauth"] = metadata
    _, report, _ = doctor(f"{deployment.base}/mcp")
    server = line(report, "authorization server metadata")
    assert server["ok"] is False
    assert "issuer differs" in server["seen"]
    assert "SIDECAR_ISSUER" in server["fix"]


def test_offline_access_in_the_resource_metadata_fails_the_resource_line(
    fake: Callable[..., FakeDeployment],
) -> None:
    deployment = fake()
    deployment.healthy["/.well-known/oauth-protected-resource/mcp"] = lambda h: h.reply(
        200,
        {
            "resource": f"{deployment.base}/mcp",
            "authorization_servers": [f"{deployment.base}/oauth"],
            "scopes_supported": ["offline_access"],
        },
    )
    _, report, _ = doctor(f"{deployment.base}/mcp")
    assert "offline_access" in line(report, "protected resource metadata")["seen"]


def test_an_unknown_client_not_told_invalid_client_fails_the_registration_line(
    fake: Callable[..., FakeDeployment],
) -> None:
    report = broken(fake, "/oauth/token", lambda h: h.reply(400, {"error": "invalid_grant"}))
    registration = line(report, "registration")
    assert registration["ok"] is False
    assert "invalid_client" in registration["fix"]


def test_a_login_page_that_drops_its_return_address_fails_the_login_line(
    fake: Callable[..., FakeDeployment],
) -> None:
    def dropping(h: Any) -> None:
        if "callbackURL" in h.path:
            h.send_response(302)
            h.send_header("Location", "/login")  # the query is gone
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            h.send_response(200)
            h.send_header("Content-Length", "0")
            h.end_headers()

    report = broken(fake, "/login", dropping)
    login = line(report, "login page")
    assert login["ok"] is False
    assert "lost" in login["seen"]
    assert "login_return_param" in login["fix"]


def test_better_auth_missing_behind_the_origin_fails_the_app_line(
    fake: Callable[..., FakeDeployment],
) -> None:
    report = broken(fake, "/api/auth/get-session", lambda h: h.reply(404, {"error": "not_found"}))
    app = line(report, "Better Auth")
    assert app["ok"] is False
    assert "SIDECAR_AUTH_BASE_PATH" in app["fix"]


def test_a_clock_far_from_the_servers_fails_the_clock_line(
    fake: Callable[..., FakeDeployment],
) -> None:
    skewed = email.utils.formatdate(time.time() - 7200, usegmt=True)
    deployment = fake()
    original = deployment.handler_class.date_time_string
    deployment.handler_class.date_time_string = lambda self, timestamp=None: skewed  # type: ignore[method-assign]
    try:
        _, report, _ = doctor(f"{deployment.base}/mcp")
    finally:
        deployment.handler_class.date_time_string = original  # type: ignore[method-assign]
    clock = line(report, "TLS and clock")
    assert clock["ok"] is False
    assert "clocks differ" in clock["seen"]


def test_a_url_that_is_not_one_is_said_so() -> None:
    code, report, _ = doctor("not a url")
    assert code == 1
    assert report["checks"][0]["ok"] is False
