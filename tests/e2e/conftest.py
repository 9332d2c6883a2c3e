from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.oauth import Browser, OAuthClient
from tools.processes import Process, free_port, start_better_auth, start_sidecar


@dataclass
class Stack:
    app: Process  # the real Better Auth + convex() server
    sidecar: Process  # the sidecar in front of it

    @property
    def site_url(self) -> str:
        return self.app.url


def start_stack(app_env: dict[str, str], sidecar_env: dict[str, str]) -> Stack:
    """The Node app and a sidecar in front of it; the app trusts the sidecar's
    origin. ``{sidecar}`` in a value is replaced by the sidecar's URL."""
    sidecar_port = free_port()
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    app_port = free_port()
    app_url = f"http://127.0.0.1:{app_port}"

    def fill(env: dict[str, str]) -> dict[str, str]:
        # Plain replace, not str.format: a JWKS value is full of braces.
        return {
            k: v.replace("{sidecar}", sidecar_url).replace("{app}", app_url) for k, v in env.items()
        }

    provider_file = Path(tempfile.mkdtemp(prefix="sidecar-convex-")) / "provider.json"
    app = start_better_auth(
        port=app_port,
        TRUSTED_ORIGINS=sidecar_url,
        CONVEX_PROVIDER_FILE=str(provider_file),
        **fill(app_env),
    )
    try:
        sidecar = start_sidecar(app.url, port=sidecar_port, **fill(sidecar_env))
    except Exception:
        app.stop()
        raise
    # What the team pastes into convex/auth.config.ts, exactly as the command
    # prints it; the app's Convex check reads it from here.
    printed = subprocess.run(
        [sys.executable, "-m", "sidecar", "convex-auth-config", "--json"],
        env=sidecar.extra["env"],  # type: ignore[arg-type]
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    provider_file.write_text(printed.stdout)
    return Stack(app, sidecar)


@pytest.fixture(scope="session")
def better_auth_stack() -> Iterator[Stack]:
    stack = start_stack({}, {})
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


@pytest.fixture(scope="session")
def oauth_stack() -> Iterator[Stack]:
    """Better Auth with the deployment's static JWKS, and the sidecar reusing
    it: the production shape (reuse mode)."""
    from tools import fixtures

    shared = {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": "{app}",
    }
    stack = start_stack(
        {"PUBLIC_URL": "{sidecar}", **shared},
        {
            "SIDECAR_RESOURCES": (
                "/api/mcp,/api/mcp-self;mode=metadata-only,/api/mcp-admin;scopes=mcp:admin"
            ),
            "SIDECAR_SCOPES": "openid,profile,email,offline_access,mcp:admin",
            "SIDECAR_REGISTRATION_RATE_LIMIT": "1000",
            "SIDECAR_CIMD_ALLOWED_HOSTS": "localhost",
            "SIDECAR_REVOCATION_CACHE_SECONDS": "0.5",
            **shared,
        },
    )
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


@pytest.fixture
def browser(oauth_stack: Stack) -> Browser:
    """A user signed up, and so signed in, through the sidecar."""
    return Browser(oauth_stack.sidecar.url).sign_up()


@pytest.fixture
def client(oauth_stack: Stack) -> OAuthClient:
    """A dynamically registered public client."""
    c = OAuthClient(oauth_stack.sidecar.url)
    c.register()
    return c


@pytest.fixture(autouse=True)
def _close_browsers() -> Iterator[None]:
    yield
    Browser.close_all()
