from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.processes import Process, free_port, start_better_auth, start_sidecar


@dataclass
class Stack:
    app: Process  # the real Better Auth + convex() server
    sidecar: Process  # the sidecar in front of it

    @property
    def site_url(self) -> str:
        return self.app.url


@pytest.fixture(scope="session")
def better_auth_stack() -> Iterator[Stack]:
    sidecar_port = free_port()
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    app = start_better_auth(TRUSTED_ORIGINS=sidecar_url)
    try:
        sidecar = start_sidecar(app.url, port=sidecar_port)
    except Exception:
        app.stop()
        raise
    yield Stack(app, sidecar)
    sidecar.stop()
    app.stop()


@pytest.fixture(scope="session")
def oauth_stack() -> Iterator[Stack]:
    """Better Auth with the deployment's static JWKS, and the sidecar reusing
    it: the production shape (reuse mode)."""
    from tests.support import fixtures

    jwks = fixtures.text("static-jwks.json")
    sidecar_port = free_port()
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    app_port = free_port()
    app_url = f"http://127.0.0.1:{app_port}"
    shared = {"JWKS": jwks, "BETTER_AUTH_SECRET": fixtures.SECRET, "CONVEX_SITE_URL": app_url}
    app = start_better_auth(
        port=app_port,
        TRUSTED_ORIGINS=sidecar_url,
        MCP_RESOURCE_METADATA=f"{sidecar_url}/.well-known/oauth-protected-resource/api/mcp",
        **shared,
    )
    try:
        sidecar = start_sidecar(
            app.url,
            port=sidecar_port,
            SIDECAR_RESOURCES="/api/mcp",
            SIDECAR_REGISTRATION_RATE_LIMIT="1000",
            **shared,
        )
    except Exception:
        app.stop()
        raise
    yield Stack(app, sidecar)
    sidecar.stop()
    app.stop()


@pytest.fixture(autouse=True)
def _close_browsers() -> Iterator[None]:
    from tests.support.oauth import Browser

    yield
    Browser.close_all()
