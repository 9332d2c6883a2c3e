"""Everything the sidecar does not own reaches the upstream unchanged."""

from __future__ import annotations

import email.utils
import gzip
import json
import secrets
import socket
import time

import httpx
import pytest

from tools.processes import Process


def echo(sidecar: Process, method: str = "GET", target: str = "/echo", **kwargs: object) -> dict:
    response = httpx.request(method, sidecar.url + target, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return response.json()


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes exactly as given (httpx would normalize the path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
def test_every_method_reaches_the_upstream(sidecar: Process, method: str) -> None:
    seen = echo(sidecar, method, content=b"payload" if method not in ("GET", "OPTIONS") else None)
    assert seen["method"] == method


def test_head_returns_the_upstream_headers_without_a_body(sidecar: Process) -> None:
    response = httpx.head(sidecar.url + "/download?size=12345")
    assert response.status_code == 200
    assert response.headers["content-length"] == "12345"
    assert response.content == b""


@pytest.mark.parametrize(
    "target",
    [
        "/echo/a%2Fb",
        "/echo//double//slash",
        "/echo/plus+sign?q=a+b&r=%2B",
        "/echo/caf%C3%A9?name=%E2%9C%93",
        "/echo/semi;colon?empty=&flag",
        "/echo/percent%25?%3D=%26",
    ],
)
def test_paths_and_query_strings_arrive_byte_for_byte(sidecar: Process, target: str) -> None:
    raw = raw_request(
        sidecar.port,
        f"GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n".encode(),
    )
    body = raw.split(b"\r\n\r\n", 1)[1]
    # The body may be chunked; the JSON is in one chunk.

    start = body.index(b"{")
    seen = json.loads(body[start : body.rindex(b"}") + 1])
    path, _, query = target.partition("?")
    assert seen["raw_path"] == path
    assert seen["query_string"] == query


def test_every_set_cookie_is_kept_exactly_and_in_order(sidecar: Process, upstream: Process) -> None:
    direct = httpx.get(upstream.url + "/cookies").headers.get_list("set-cookie")
    proxied = httpx.get(sidecar.url + "/cookies").headers.get_list("set-cookie")
    assert len(direct) == 7
    assert proxied == direct


def test_compressed_bodies_pass_through_untouched(sidecar: Process, upstream: Process) -> None:
    headers = {"accept-encoding": "gzip"}
    with httpx.stream("GET", upstream.url + "/gzip", headers=headers) as r:
        direct = b"".join(r.iter_raw())
    with httpx.stream("GET", sidecar.url + "/gzip", headers=headers) as r:
        assert r.headers["content-encoding"] == "gzip"
        proxied = b"".join(r.iter_raw())
    assert proxied == direct
    assert gzip.decompress(proxied).startswith(b"compressed payload")


def test_hop_by_hop_request_headers_are_removed(sidecar: Process) -> None:
    seen = echo(
        sidecar,
        headers={
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Upgrade": "h2c",
            "X-End-To-End": "kept",
        },
    )
    names = [name for name, _ in seen["headers"]]
    for hop in (
        "connection",
        "x-private-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ):
        assert hop not in names, hop
    assert ["x-end-to-end", "kept"] in seen["headers"]


def test_hop_by_hop_response_headers_are_removed(sidecar: Process) -> None:
    response = httpx.get(sidecar.url + "/hop")
    assert "x-private-hop" not in response.headers
    assert "keep-alive" not in response.headers
    assert "proxy-authenticate" not in response.headers
    assert response.headers["x-end-to-end"] == "kept"


def test_forwarded_headers_are_set_and_inbound_ones_dropped(sidecar: Process) -> None:
    seen = dict(
        (k, v)
        for k, v in echo(
            sidecar,
            headers={
                "X-Forwarded-For": "6.6.6.6",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.test",
                "Forwarded": "for=6.6.6.6",
                "X-Real-IP": "6.6.6.6",
                "Host": "app.example.test",
            },
        )["headers"]
    )
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "app.example.test"
    assert "forwarded" not in seen
    assert "x-real-ip" not in seen


def test_host_sent_upstream_is_the_upstreams_own(sidecar: Process, upstream: Process) -> None:
    seen = dict(echo(sidecar, headers={"Host": "app.example.test"})["headers"])
    assert seen["host"] == f"127.0.0.1:{upstream.port}"


def test_request_id_is_passed_upstream_and_returned(sidecar: Process) -> None:
    response = httpx.get(sidecar.url + "/echo", headers={"X-Request-Id": "req-abc-123456"})
    seen = dict(response.json()["headers"])
    assert seen["x-request-id"] == "req-abc-123456"
    assert response.headers["x-request-id"] == "req-abc-123456"
    # An unsafe inbound id is replaced, never forwarded.
    response = httpx.get(sidecar.url + "/echo", headers={"X-Request-Id": "bad id\twith tab"})
    seen = dict(response.json()["headers"])
    assert seen["x-request-id"] != "bad id\twith tab"
    assert seen["x-request-id"] == response.headers["x-request-id"]


def test_location_on_the_upstream_origin_is_rewritten_to_the_public_url(
    sidecar: Process, upstream: Process
) -> None:
    response = httpx.get(sidecar.url + "/redirect")
    assert response.status_code == 302
    assert response.headers["location"] == f"{sidecar.url}/landed?x=1"
    other = httpx.get(sidecar.url + "/redirect", params={"to": "https://elsewhere.test/x"})
    assert other.headers["location"] == "https://elsewhere.test/x"
    relative = httpx.get(sidecar.url + "/redirect", params={"to": "/relative"})
    assert relative.headers["location"] == "/relative"


def test_upstream_status_codes_pass_through(sidecar: Process) -> None:
    for code in (201, 204, 304, 400, 401, 404, 418, 500, 503):
        assert httpx.get(sidecar.url + f"/status?code={code}").status_code == code


def test_no_cookie_is_kept_between_requests(sidecar: Process) -> None:
    """The proxy's client must not keep a cookie jar: one user's Set-Cookie
    must never ride along on another user's request."""
    httpx.get(sidecar.url + "/cookies")
    seen = dict(echo(sidecar)["headers"])
    assert "cookie" not in seen


def test_headers_the_client_did_not_send_are_not_added(sidecar: Process) -> None:
    raw = raw_request(
        sidecar.port, b"GET /echo HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n"
    )
    body = raw.split(b"\r\n\r\n", 1)[1]

    seen = json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])
    names = {name for name, _ in seen["headers"]}
    assert names == {
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    }


@pytest.mark.parametrize(
    "name",
    [
        "X-Sidecar-User-Id",
        "x-sidecar-user-id",
        "X_Sidecar_User_Id",  # CGI and WSGI fold "_" into "-": the same key
        "x_sidecar_user_id",
        "X-Sidecar_User-Id",
        "X_SIDECAR_SCOPES",
    ],
)
def test_identity_headers_are_dropped_whatever_their_spelling(sidecar: Process, name: str) -> None:
    head = f"GET /echo HTTP/1.1\r\nHost: x.test\r\n{name}: admin\r\nConnection: close\r\n\r\n"
    raw = raw_request(sidecar.port, head.encode())
    body = raw.split(b"\r\n\r\n", 1)[1]
    seen = json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])
    forwarded = [k for k, _ in seen["headers"] if k.replace("_", "-").startswith("x-sidecar-")]
    assert forwarded == []


def test_a_websocket_upgrade_reaches_the_app_with_an_http_forwarded_proto(sidecar: Process) -> None:
    from websockets.sync.client import connect

    with connect(sidecar.url.replace("http://", "ws://") + "/ws-headers") as ws:
        seen = json.loads(ws.recv(timeout=5))
    assert seen["x-forwarded-proto"] == "http"


def test_the_sidecars_own_and_proxied_answers_carry_a_date(sidecar: Process) -> None:
    for path in ("/oauth/healthz", "/.well-known/oauth-authorization-server/oauth", "/echo"):
        response = httpx.get(sidecar.url + path)
        assert len(response.headers.get_list("date")) == 1, path
        sent = email.utils.parsedate_to_datetime(response.headers["date"])
        assert abs(sent.timestamp() - time.time()) < 5


@pytest.mark.parametrize(
    ("request_head", "why"),
    [
        ("GET {path} HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "two Host"),
        ("GET {path} HTTP/1.1\r\nHost: a.test\r\nhost: a.test\r\n\r\n", "Host twice"),
        ("GET {path} HTTP/1.1\r\nUser-Agent: x\r\n\r\n", "HTTP/1.1 without Host"),
        ("GET {path}\r\nHost: a.test\r\n\r\n", "no HTTP version"),
        ("GET {path}\r\n\r\n", "a bare HTTP/0.9 line"),
    ],
)
def test_ambiguous_request_heads_get_400_and_never_reach_the_app(
    sidecar: Process, request_head: str, why: str
) -> None:
    path = f"/echo/ambiguous-{secrets.token_hex(6)}"
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as s:
        s.sendall(request_head.format(path=path).encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), (why, answer[:200])
    # Answered by the server before the app ran: no access line, no upstream call.
    httpx.get(sidecar.url + "/echo/after")  # flushes the access lines before
    time.sleep(0.2)
    assert path not in sidecar.log_text(), why
