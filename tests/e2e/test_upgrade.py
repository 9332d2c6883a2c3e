"""An upgrade loses nothing. The previous releases (main before the
person→grants index existed, and the last release before the store took its
one-key collections) run on SQLite and on Redis, a person connects a client
through them, and then this release serves the same store: the old access
token opens the MCP endpoint, the old refresh token refreshes, and the grant
is on the person's connected-apps page and in `sidecar grants list --user`,
where it can be revoked."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tools import fixtures
from tools.checkout import checkout
from tools.oauth import Browser, OAuthClient
from tools.processes import (
    ROOT,
    Process,
    free_port,
    redis_available,
    require,
    start_better_auth,
    start_redis,
    start_sidecar,
)

# cd6e9ca: before the person→grants index; 1176066: the last release before
# the one-key collections.
RELEASES = ("cd6e9ca", "1176066")


@pytest.fixture(scope="module", params=RELEASES)
def release(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The release's tree, checked out beside this one."""
    rev = str(request.param)
    known = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=ROOT)
    require(known.returncode == 0, f"release {rev} is not in this clone's history")
    with checkout(rev) as tree:
        assert tree is not None
        yield tree


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/sidecar.db"
        return
    require(redis_available(), "redis-server is not installed")
    redis = start_redis()
    try:
        yield f"redis://127.0.0.1:{redis.port}/0"
    finally:
        redis.stop()


def grants_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "grants", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=ROOT,
    )


def test_a_grant_made_by_a_previous_release_works_and_is_listed_and_revocable(
    release: Path, store_url: str, tmp_path: Path
) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    shared = {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
    }
    app_port = free_port()
    provider_file = tmp_path / "provider.json"
    app = start_better_auth(
        port=app_port,
        TRUSTED_ORIGINS=public,
        PUBLIC_URL=public,
        CONVEX_SITE_URL=f"http://127.0.0.1:{app_port}",
        CONVEX_PROVIDER_FILE=str(provider_file),
        **shared,
    )
    env = {
        "SIDECAR_STORE_URL": store_url,
        "SIDECAR_RESOURCES": "/api/mcp",
        "SIDECAR_REVOCATION_CACHE_SECONDS": "0",
        "CONVEX_SITE_URL": app.url,
        **shared,
    }
    sidecar: Process | None = None
    try:
        # The previous release: a person connects a client.
        sidecar = start_sidecar(app.url, port=port, cwd=release, **env)
        browser = Browser(public).sign_up("Ada Upgrade")
        client = OAuthClient(public)
        client.register(
            client_name="Old Notes", grant_types=["authorization_code", "refresh_token"]
        )
        tokens = client.exchange(client.login(browser, scope="openid email")["code"]).json()
        assert "refresh_token" in tokens, tokens
        user_id = browser.get("/api/auth/get-session").json()["user"]["id"]
        sidecar.stop()

        # This release on the same store, port, keys and secrets.
        sidecar = start_sidecar(app.url, port=port, **env)
        # The app checks the Convex token with the provider entry the
        # sidecar prints, as a team pastes it.
        printed = subprocess.run(
            [sys.executable, "-m", "sidecar", "convex-auth-config", "--json"],
            env=sidecar.extra["env"],  # type: ignore[arg-type]
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            cwd=ROOT,
        )
        provider_file.write_text(printed.stdout)
        mcp = httpx.get(
            f"{public}/api/mcp/echo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
        assert mcp.status_code == 200, mcp.text
        refreshed = client.refresh(tokens["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text

        page = browser.get("/oauth/account")
        assert page.status_code == 200
        assert "Old Notes" in page.text
        listed = grants_cli(dict(sidecar.extra["env"]), "list", "--user", user_id)  # type: ignore[arg-type]
        assert listed.returncode == 0, listed.stderr
        assert client.client_id in listed.stdout

        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf, page.text
        done = browser.client.post(
            "/oauth/account/revoke", data={"csrf": csrf.group(1), "client_id": client.client_id}
        )
        assert done.status_code == 303
        after = client.refresh(refreshed.json()["refresh_token"])
        assert after.status_code == 400
        assert after.json()["error"] == "invalid_grant"
        assert (
            client.client_id
            not in grants_cli(
                dict(sidecar.extra["env"]),  # type: ignore[arg-type]
                "list",
                "--user",
                user_id,
            ).stdout
        )
    finally:
        if sidecar is not None:
            sidecar.stop()
        app.stop()
