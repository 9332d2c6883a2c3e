"""Property-based tests: every endpoint the sidecar owns answers any input,
however malformed, with the status and error shape the specs require, and
never a 5xx. Requests go straight into the ASGI app, so any bytes can be sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.app import SidecarApp
from sidecar.config import load_settings
from tools.processes import free_port

OAUTH_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "unsupported_response_type",
    "invalid_scope",
    "invalid_target",
    "access_denied",
    "invalid_redirect_uri",
    "invalid_client_metadata",
    "invalid_token",
    "insufficient_scope",
    "slow_down",
    "temporarily_unavailable",
    "unauthorized",
}
JSON_ENDPOINTS = [
    "/oauth/token",
    "/oauth/register",
    "/oauth/revoke",
    "/oauth/introspect",
    "/oauth/userinfo",
]
PAGE_ENDPOINTS = [
    "/oauth/authorize",
    "/oauth/authorize/continue",
    "/oauth/consent",
    "/oauth/account",
    "/oauth/account/revoke",
]
DOCUMENTS = [
    "/oauth/jwks",
    "/.well-known/oauth-authorization-server/oauth",
    "/.well-known/openid-configuration/oauth",
    "/oauth/.well-known/openid-configuration",
    "/.well-known/oauth-protected-resource/api/mcp",
    "/oauth/healthz",
    "/oauth/readyz",
]
GATEWAY = ["/api/mcp", "/api/mcp/deeper"]
ALL = JSON_ENDPOINTS + PAGE_ENDPOINTS + DOCUMENTS + GATEWAY
# The session bridge asks the upstream (away in these tests): 502 is its answer.
MAY_BE_502 = set(PAGE_ENDPOINTS) | set(GATEWAY)


class Harness:
    def __init__(self) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        self.app = SidecarApp(
            load_settings(
                env={
                    "SIDECAR_UPSTREAM_URL": dead,
                    "SIDECAR_STORE_URL": "memory://",
                    "SIDECAR_RESOURCES": "/api/mcp",
                    "SIDECAR_METRICS_PORT": "0",
                    "SIDECAR_RATE_LIMIT_PER_IP": "0",
                    "SIDECAR_RATE_LIMIT_PER_CLIENT": "0",
                    "SIDECAR_REGISTRATION_RATE_LIMIT": "0",
                    "SIDECAR_DATA_DIR": "/tmp/sidecar-props",
                    "SIDECAR_UPSTREAM_CONNECT_TIMEOUT": "0.5",
                    "SIDECAR_ACCESS_LOG": "false",
                }
            )
        )
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.app.startup())

    def close(self) -> None:
        self.loop.run_until_complete(self.app.shutdown())
        self.loop.close()

    def call(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        return self.loop.run_until_complete(self._call(method, path, query, headers, body))

    async def _call(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Any:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in headers],
            "client": ("127.0.0.1", 5555),
            "server": ("127.0.0.1", 8080),
            "extensions": {},
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await asyncio.wait_for(self.app(scope, receive, send), 10)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return start["status"], dict(start.get("headers", [])), body_out


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)
hostile_bytes = st.binary(max_size=200)
param_names = st.sampled_from(
    [
        "client_id",
        "grant_type",
        "code",
        "redirect_uri",
        "scope",
        "state",
        "response_type",
        "code_challenge",
        "resource",
        "code_verifier",
        "refresh_token",
        "token",
        "prompt",
        "request",
        "csrf",
        "decision",
        "client_secret",
        "x",
    ]
)
pairs = st.lists(
    st.tuples(param_names, st.one_of(text, st.just(""), st.text(max_size=3000))), max_size=8
)


def encode(items: list[tuple[str, str]]) -> bytes:
    return "&".join(
        f"{quote_from_bytes(k.encode())}={quote_from_bytes(v.encode())}" for k, v in items
    ).encode()


query_strings = st.one_of(pairs.map(encode), hostile_bytes)
header_values = st.one_of(
    text.map(lambda t: t.encode("utf-8")),
    hostile_bytes.map(lambda b: bytes(c for c in b if c not in (10, 13))),
)
headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                b"authorization",
                b"cookie",
                b"host",
                b"content-type",
                b"x-forwarded-for",
                b"x-forwarded-host",
                b"x-forwarded-proto",
                b"better-auth-cookie",
                b"origin",
                b"x-sidecar-user-id",
                b"mcp-protocol-version",
            ]
        ),
        st.one_of(
            header_values,
            st.sampled_from(
                [
                    b"Bearer x.y.z",
                    b"Basic Zm9vOmJhcg==",
                    b"Basic !!!",
                    b"Bearer ",
                    b"application/x-www-form-urlencoded",
                    b"application/json",
                    b"multipart/form-data",
                    b"better-auth.convex_jwt=abc.def.ghi",
                ]
            ),
        ),
    ),
    max_size=6,
)
bodies = st.one_of(
    pairs.map(encode),
    hostile_bytes,
    st.dictionaries(text, st.one_of(text, st.integers(), st.lists(text)), max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    st.just(b""),
    st.just(b"\xff\xfe\x00"),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(path: str, status: int, out_headers: dict[bytes, bytes], body: bytes) -> None:
    if status == 502 and path in MAY_BE_502:
        return
    assert status < 500, (path, status, body[:300])
    content_type = out_headers.get(b"content-type", b"")
    if status >= 400 and content_type.startswith(b"application/json"):
        error = json.loads(body)["error"]
        assert error in OAUTH_ERRORS, error
    if path == "/oauth/token" and status != 405 and status != 204:
        assert out_headers.get(b"cache-control") == b"no-store"
    if path in PAGE_ENDPOINTS and status >= 400 and content_type.startswith(b"text/html"):
        assert out_headers[b"x-frame-options"] == b"DENY"


@SETTINGS
@given(path=st.sampled_from(ALL), method=methods, query=query_strings, hdrs=headers, body=bodies)
def test_any_request_to_an_owned_endpoint_gets_a_specified_answer_never_a_5xx(
    harness: Harness,
    path: str,
    method: str,
    query: bytes,
    hdrs: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    status, out_headers, out = harness.call(method, path, query, hdrs, body)
    check(path, status, out_headers, out)


@SETTINGS
@given(items=pairs, repeated=param_names.filter(lambda n: n != "resource"), first=text, second=text)
def test_a_repeated_parameter_at_the_token_endpoint_is_invalid_request(
    harness: Harness,
    items: list[tuple[str, str]],
    repeated: str,
    first: str,
    second: str,
) -> None:
    form = [*items, (repeated, first), (repeated, second)]
    status, _, out = harness.call(
        "POST",
        "/oauth/token",
        b"",
        [(b"content-type", b"application/x-www-form-urlencoded")],
        encode(form),
    )
    assert status == 400
    assert json.loads(out)["error"] == "invalid_request"


@SETTINGS
@given(
    metadata=st.dictionaries(
        st.sampled_from(
            [
                "redirect_uris",
                "client_name",
                "token_endpoint_auth_method",
                "grant_types",
                "response_types",
                "scope",
                "client_uri",
                "application_type",
            ]
        ),
        st.one_of(
            text,
            st.integers(),
            st.none(),
            st.lists(text, max_size=4),
            st.lists(
                st.sampled_from(
                    [
                        "https://c.test/cb",
                        "http://127.0.0.1:1/cb",
                        "javascript:x",
                        "http://evil.test/cb",
                    ]
                ),
                max_size=4,
            ),
        ),
        max_size=6,
    )
)
def test_registration_accepts_or_refuses_with_rfc7591_codes(
    harness: Harness, metadata: dict[str, Any]
) -> None:
    status, _, out = harness.call(
        "POST",
        "/oauth/register",
        b"",
        [(b"content-type", b"application/json")],
        json.dumps(metadata).encode(),
    )
    body = json.loads(out)
    if status == 201:
        assert body["client_id"]
        assert all(u.startswith(("https://", "http://127.0.0.1")) for u in body["redirect_uris"])
    else:
        assert status == 400
        assert body["error"] in {"invalid_redirect_uri", "invalid_client_metadata"}


@SETTINGS
@given(method=st.sampled_from(["PUT", "DELETE", "PATCH"]), path=st.sampled_from(ALL[:-2]))
def test_wrong_methods_are_405(harness: Harness, method: str, path: str) -> None:
    status, _, _ = harness.call(method, path, b"", [], b"")
    assert status == 405
