"""What a team meets on its first day, in front of the real Better Auth app:
a session issuer that is not the app's is told in the log, not only by every
signed-in person landing on the login page again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack, start_stack
from tools import fixtures
from tools.oauth import REDIRECT, Browser, OAuthClient
from tools.processes import Process

REFUSED = "session JWT refused: signed-in people are sent back to sign in"
ISSUER_SETTING = "session_issuer (SIDECAR_SESSION_ISSUER or CONVEX_SITE_URL)"


@pytest.fixture(scope="module")
def wrong_issuer_stack() -> Iterator[Stack]:
    """The app's CONVEX_SITE_URL is its own URL; the sidecar is told another."""
    shared = {
        "JWKS": fixtures.text("static-jwks.json"),
        "BETTER_AUTH_SECRET": fixtures.SECRET,
        "CONVEX_SITE_URL": "{app}",
    }
    stack = start_stack(
        {"PUBLIC_URL": "{sidecar}", **shared},
        {
            "SIDECAR_RESOURCES": "/api/mcp",
            "SIDECAR_REGISTRATION_RATE_LIMIT": "1000",
            "SIDECAR_SESSION_ISSUER": "http://wrong.example",
            **shared,
        },
    )
    yield stack
    stack.sidecar.stop()
    stack.app.stop()


def refusals(sidecar: Process, within: float = 3.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + within
    while True:
        found = [
            r
            for r in sidecar.log_records()
            if r.get("event") == REFUSED and r.get("level") == "warning"
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_wrong_session_issuer_is_one_warning_naming_both_issuers_and_the_setting(
    wrong_issuer_stack: Stack,
) -> None:
    sidecar = wrong_issuer_stack.sidecar
    browser = Browser(sidecar.url).sign_up()
    client = OAuthClient(sidecar.url)
    client.register()
    for _ in range(4):
        page = browser.get(client.authorize_url())
        # The person is signed in, yet is sent to sign in again: no consent
        # page, no code for the client.
        assert page.status_code in (302, 303), page.text
        assert not page.headers["location"].startswith(REDIRECT)
    warned = refusals(sidecar)
    assert len(warned) == 1, warned  # at most once a minute, however many attempts
    warning = warned[0]
    assert warning["reason"] == "issuer"
    assert warning["why"] == (
        f"wrong issuer: expected 'http://wrong.example', got '{wrong_issuer_stack.app.url}'"
    )
    assert warning["check"] == ISSUER_SETTING
    # Never the token itself, nor any other JWT.
    text = sidecar.log_text()
    for name, value in browser.client.cookies.items():
        if "convex_jwt" in name:
            assert value not in text
    assert "eyJ" not in json.dumps(warned)


def test_the_right_session_issuer_is_no_warning(oauth_stack: Stack) -> None:
    browser = Browser(oauth_stack.sidecar.url).sign_up()
    client = OAuthClient(oauth_stack.sidecar.url)
    client.register()
    assert "code" in client.login(browser)
    assert refusals(oauth_stack.sidecar, within=0) == []
