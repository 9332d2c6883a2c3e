"""Faults: Redis away, the upstream away, a restart on SQLite."""

from __future__ import annotations

import time

import httpx

from tests.e2e.conftest import start_stack
from tools.oauth import Browser, OAuthClient
from tools.processes import (
    Process,
    free_port,
    running,
    signing_key_file,
    start_redis,
    start_sidecar,
)


def wait_for(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_with_redis_down_oauth_answers_503_the_app_keeps_working_and_it_recovers(
    upstream: Process,
) -> None:
    redis_port = free_port()
    redis = start_redis(redis_port)
    sidecar = start_sidecar(
        upstream.url,
        SIDECAR_STORE_URL=f"redis://127.0.0.1:{redis_port}/0",
        SIDECAR_SIGNING_KEY_FILE=signing_key_file(),
    )
    try:
        body = {"redirect_uris": ["http://127.0.0.1:1/cb"]}
        client_id = httpx.post(sidecar.url + "/oauth/register", json=body).json()["client_id"]
        redis.stop()

        token = httpx.post(
            sidecar.url + "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "client_id": client_id,
                "code": "c",
                "code_verifier": "v" * 43,
            },
            timeout=15,
        )
        assert token.status_code == 503
        assert token.headers["retry-after"] == "5"
        assert token.json()["error"] == "temporarily_unavailable"
        assert "access_token" not in token.text
        assert httpx.post(sidecar.url + "/oauth/register", json=body, timeout=15).status_code == 503
        page = httpx.get(
            sidecar.url + "/oauth/authorize", params={"client_id": client_id}, timeout=15
        )
        assert page.status_code == 503
        assert "location" not in page.headers
        # The app's own routes and the static documents are unaffected.
        assert httpx.get(sidecar.url + "/echo").status_code == 200
        assert httpx.get(sidecar.url + "/oauth/jwks").status_code == 200
        meta = "/.well-known/oauth-authorization-server/oauth"
        assert httpx.get(sidecar.url + meta).status_code == 200
        ready = httpx.get(sidecar.url + "/oauth/readyz", timeout=15)
        assert ready.status_code == 503
        assert ready.json()["checks"]["store"] != "ok"

        redis = start_redis(redis_port)
        assert wait_for(lambda: httpx.get(sidecar.url + "/oauth/readyz").status_code == 200)
        assert httpx.post(sidecar.url + "/oauth/register", json=body).status_code == 201
        log = sidecar.log_text()
        assert "Traceback" not in log
    finally:
        sidecar.stop()
        redis.stop()


def test_with_the_upstream_down_sign_in_shows_a_page_and_documents_are_served() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with running(start_sidecar(dead)) as sidecar:
        client = OAuthClient(sidecar.url)
        client.register()
        assert httpx.get(sidecar.url + "/api/anything").status_code == 502
        page = httpx.get(
            sidecar.url + client.authorize_url(),
            headers={"Cookie": "better-auth.session_token=abc"},
        )
        assert page.status_code == 502
        assert "Sign-in is unavailable" in page.text
        assert "location" not in page.headers
        assert httpx.get(sidecar.url + "/oauth/jwks").status_code == 200
        meta = httpx.get(sidecar.url + "/.well-known/oauth-authorization-server/oauth")
        assert meta.status_code == 200


def test_restarting_on_sqlite_keeps_clients_consents_and_refresh_tokens() -> None:
    stack = start_stack({}, {"SIDECAR_RESOURCES": "/api/mcp"})
    try:
        base = stack.sidecar.url
        browser = Browser(base).sign_up()
        client = OAuthClient(base)
        client.register()
        tokens = client.exchange(client.login(browser)["code"]).json()
        env = dict(stack.sidecar.extra["env"])  # type: ignore[arg-type]
        stack.sidecar.stop()

        restarted = start_sidecar(
            stack.app.url,
            port=int(env.pop("SIDECAR_PORT")),
            **{k: v for k, v in env.items() if k != "SIDECAR_UPSTREAM_URL"},
        )
        try:
            # The consent is remembered: straight back to the client with a code.
            again = browser.get(client.authorize_url())
            assert again.status_code == 302
            assert "code=" in again.headers["location"]
            refreshed = client.refresh(tokens["refresh_token"])
            assert refreshed.status_code == 200, refreshed.text
        finally:
            restarted.stop()
            browser.client.close()
    finally:
        stack.sidecar.stop()
        stack.app.stop()


def test_with_redis_hanging_oauth_answers_503_within_the_socket_timeout(
    upstream: Process,
) -> None:
    import signal

    redis = start_redis()
    sidecar = start_sidecar(
        upstream.url,
        SIDECAR_STORE_URL=f"redis://127.0.0.1:{redis.port}/0",
        SIDECAR_SIGNING_KEY_FILE=signing_key_file(),
    )
    try:
        body = {"redirect_uris": ["http://127.0.0.1:1/cb"]}
        assert httpx.post(sidecar.url + "/oauth/register", json=body).status_code == 201
        redis.popen.send_signal(signal.SIGSTOP)  # accepts nothing, answers nothing
        started = time.monotonic()
        hung = httpx.post(sidecar.url + "/oauth/register", json=body, timeout=30)
        assert hung.status_code == 503
        assert hung.headers["retry-after"] == "5"
        assert time.monotonic() - started < 10
        assert httpx.get(sidecar.url + "/echo").status_code == 200
        redis.popen.send_signal(signal.SIGCONT)
        assert wait_for(
            lambda: httpx.post(sidecar.url + "/oauth/register", json=body).status_code == 201
        )
    finally:
        redis.popen.send_signal(signal.SIGCONT)
        sidecar.stop()
        redis.stop()
