"""Limits on what one client can cost: each answers 413/414/431/408/429 (with
Retry-After where it applies) or 503, never a 500, and each test fails without
its defence."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from sidecar.config import load_settings
from sidecar.edge.address import client_address
from tools.oauth import OAuthClient
from tools.processes import Process, running, start_sidecar


def fresh_rate_window() -> None:
    """Rate limits count per clock minute: start a test well inside one."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


@pytest.fixture(scope="module")
def limited(upstream: Process) -> Iterator[Process]:
    with running(
        start_sidecar(
            upstream.url,
            SIDECAR_MAX_BODY_BYTES="2048",
            SIDECAR_MAX_REGISTRATION_BYTES="2048",
            SIDECAR_MAX_REDIRECT_URIS="3",
            SIDECAR_MAX_QUERY_BYTES="1024",
            SIDECAR_MAX_HEADER_BYTES="4096",
            SIDECAR_BODY_TIMEOUT="0.5",
            SIDECAR_IDLE_TIMEOUT="1",
            SIDECAR_HEADER_TIMEOUT="1",
            SIDECAR_PENDING_AUTHORIZATION_TTL="1",
        )
    ) as sidecar:
        yield sidecar


def test_an_oversized_token_body_answers_413(limited: Process) -> None:
    r = httpx.post(limited.url + "/oauth/token", data={"grant_type": "x" * 4000})
    assert r.status_code == 413
    assert r.json()["error"] == "invalid_request"


def test_an_oversized_chunked_body_answers_413_without_a_length(limited: Process) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"a=" + b"b" * 1000 + b"&"

    r = httpx.post(
        limited.url + "/oauth/token",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413


def test_oversized_registration_metadata_answers_413(limited: Process) -> None:
    body = {"redirect_uris": ["http://127.0.0.1:1/cb"], "client_name": "x" * 3000}
    assert httpx.post(limited.url + "/oauth/register", json=body).status_code == 413


def test_too_many_redirect_uris_are_refused(limited: Process) -> None:
    body = {"redirect_uris": [f"http://127.0.0.1:1/cb{i}" for i in range(4)]}
    r = httpx.post(limited.url + "/oauth/register", json=body)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_redirect_uri"


def test_a_long_query_string_answers_414_on_sidecar_routes_only(limited: Process) -> None:
    long = "x" * 2000
    assert httpx.get(limited.url + f"/oauth/authorize?state={long}").status_code == 414
    assert httpx.get(limited.url + f"/echo?state={long}").status_code == 200  # the app's


def test_oversized_headers_answer_431_on_sidecar_routes_only(limited: Process) -> None:
    headers = {f"x-filler-{i}": "y" * 500 for i in range(10)}
    assert httpx.get(limited.url + "/oauth/jwks", headers=headers).status_code == 431
    assert httpx.get(limited.url + "/echo", headers=headers).status_code == 200


def test_a_slow_body_answers_408_and_frees_the_worker(limited: Process) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as s:
        s.sendall(
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\ngrant_type="
        )
        started = time.monotonic()
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 3


def test_an_idle_kept_alive_connection_is_closed(limited: Process) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as s:
        s.sendall(b"GET /oauth/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b'{"status":"ok"}' not in answer:  # the whole response, however it is split
            answer += s.recv(4096)
        assert b"200 OK" in answer
        started = time.monotonic()
        assert s.recv(4096) == b""  # closed by the server
    assert 0.5 < time.monotonic() - started < 4


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"GET /oauth/jwks HTTP/1.1\r\nHost: x\r\nX-Slow: "],
    ids=["silent connection", "slow headers"],
)
def test_a_client_that_sends_its_headers_slowly_is_disconnected(
    limited: Process, first_bytes: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=6) as s:
        s.sendall(first_bytes)
        started = time.monotonic()
        for _ in range(3 if first_bytes else 0):  # keep dribbling, as a slowloris does
            time.sleep(0.2)
            try:
                s.sendall(b"a")
            except OSError:
                break
        assert s.recv(4096) == b""  # closed by the server
    assert time.monotonic() - started < 4


def test_a_pending_authorization_expires(limited: Process) -> None:
    client = OAuthClient(limited.url)
    client.register()
    r = httpx.get(limited.url + client.authorize_url())
    assert r.status_code == 303  # anonymous: sent to log in
    resume = r.headers["location"].split("callbackURL=", 1)[1]
    from urllib.parse import unquote

    time.sleep(1.5)
    page = httpx.get(unquote(resume))
    assert page.status_code == 400
    assert "expired" in page.text


def test_token_requests_are_limited_per_ip_with_retry_after(upstream: Process) -> None:
    fresh_rate_window()
    with running(start_sidecar(upstream.url, SIDECAR_RATE_LIMIT_PER_IP="3")) as sidecar:
        codes = [
            httpx.post(sidecar.url + "/oauth/token", data={"grant_type": "x"}).status_code
            for _ in range(5)
        ]
        assert codes == [401, 401, 401, 429, 429]
        r = httpx.post(sidecar.url + "/oauth/token", data={"grant_type": "x"})
        assert r.json()["error"] == "slow_down"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        pages = [httpx.get(sidecar.url + "/oauth/authorize") for _ in range(4)]
        assert [p.status_code for p in pages] == [400, 400, 400, 429]
        assert "retry-after" in pages[-1].headers


def test_token_requests_are_limited_per_client(upstream: Process) -> None:
    fresh_rate_window()
    with running(start_sidecar(upstream.url, SIDECAR_RATE_LIMIT_PER_CLIENT="2")) as sidecar:
        client = OAuthClient(sidecar.url)
        client.register()
        other = OAuthClient(sidecar.url)
        other.register()
        form = {"grant_type": "refresh_token", "refresh_token": "x.y"}
        codes = [client.token(**form).status_code for _ in range(3)]
        assert codes == [400, 400, 429]
        assert other.token(**form).status_code == 400  # another client is not affected


def test_connections_beyond_max_connections_answer_503(upstream: Process) -> None:
    with running(start_sidecar(upstream.url, SIDECAR_MAX_CONNECTIONS="3")) as sidecar:
        results: list[int] = []

        def slow() -> None:
            results.append(httpx.get(sidecar.url + "/slow?delay=1.5", timeout=10).status_code)

        threads = [threading.Thread(target=slow) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        extra = httpx.get(sidecar.url + "/echo", timeout=10)
        for t in threads:
            t.join()
        assert extra.status_code == 503
        assert results == [200, 200]


def test_the_client_address_behind_a_trusted_proxy_is_the_forwarded_one() -> None:
    trusted = load_settings(env={"SIDECAR_TRUSTED_PROXIES": "10.0.0.0/8"}).trusted_proxies
    xff = [(b"x-forwarded-for", b"203.0.113.9, 10.0.0.7")]
    assert client_address("10.0.0.2", xff, trusted) == "203.0.113.9"
    # From an untrusted peer the header is ignored: it cannot dodge its limit.
    assert client_address("198.51.100.4", xff, trusted) == "198.51.100.4"
    assert client_address("10.0.0.2", [], trusted) == "10.0.0.2"
