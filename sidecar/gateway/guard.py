"""The resource server's guard (MCP authorization, RFC 6750, RFC 9728).

For an ``enforce`` resource every request to its path, or below it, needs one
of the sidecar's access tokens for exactly that resource: signature, issuer,
audience, expiry, ``typ: at+jwt``, required scopes, and not revoked. A
verified request goes upstream with the person's identity in headers and a
token minted for Convex (``<prefix>Convex-Token``); the client's own
``Authorization`` header stays behind unless ``forward_access_token`` is set
(MCP authorization: no token passthrough). Inbound headers with the identity
prefix are stripped on every path by the proxy.

Which requests are guarded is decided on :func:`sidecar.urls.guard_path`, a
folded form of the path (case, ``//``, ``..``, ``;``), so no spelling an app
would route to the resource gets past. The gateway's own answers carry CORS
headers and it answers CORS preflights on guarded paths itself, so a page on
another origin can read the challenge and start discovery.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import structlog
from starlette.types import Receive, Scope, Send

from sidecar.asgi import send_json
from sidecar.config import Resource, Settings
from sidecar.convex import ConvexTokens
from sidecar.oauth.errors import InvalidToken
from sidecar.oauth.grants import Grants
from sidecar.observability.metrics import token_event
from sidecar.proxy.http import ProxyApp
from sidecar.store import StoreUnavailable
from sidecar.urls import guard_path

log = structlog.get_logger("sidecar.gateway")
CACHE_SIZE = 10_000


class Gateway:
    def __init__(
        self, settings: Settings, grants: Grants, proxy: ProxyApp, convex: ConvexTokens
    ) -> None:
        self.settings = settings
        self.grants = grants
        self.proxy = proxy
        self.convex = convex
        self.prefix = settings.identity_header_prefix.lower().encode("latin-1")
        # Only resources served on our public origin can be guarded here;
        # the longest path wins where one resource lies below another.
        self.resources = sorted(
            ((guard_path(r.path), r) for r in settings.resources if settings.on_public_origin(r)),
            key=lambda pair: len(pair[0]),
            reverse=True,
        )
        self.cors_origins = settings.gateway_cors_origins
        # jti -> time until which its "not revoked" answer may be reused.
        self._verified: OrderedDict[str, float] = OrderedDict()

    def match(self, path: str) -> Resource | None:
        folded = guard_path(path)
        for base, resource in self.resources:
            if base == "/" or folded == base or folded.startswith(base + "/"):
                return resource
        return None

    def cors_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """Fetch standard: a browser lets a page read a cross-origin answer
        (and its WWW-Authenticate) only with these."""
        if not self.cors_origins:
            return []
        if "*" in self.cors_origins:
            allowed = b"*"
        else:
            origin = _header(scope["headers"], b"origin")
            if origin is None or origin.decode("latin-1").lower() not in self.cors_origins:
                return [(b"vary", b"Origin")]
            allowed = origin
        headers = [
            (b"access-control-allow-origin", allowed),
            (b"access-control-expose-headers", b"WWW-Authenticate, Mcp-Session-Id"),
        ]
        if allowed != b"*":
            headers.append((b"vary", b"Origin"))
        return headers

    async def preflight(self, scope: Scope, send: Send) -> None:
        headers = self.cors_headers(scope)
        if any(name == b"access-control-allow-origin" for name, _ in headers):
            headers += [
                (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
                (
                    b"access-control-allow-headers",
                    b"Authorization, Content-Type, Accept, MCP-Protocol-Version, "
                    b"Mcp-Session-Id, Last-Event-ID",
                ),
                (b"access-control-max-age", b"86400"),
            ]
        headers.append((b"content-length", b"0"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def prm_url(self, resource: Resource) -> str:
        return (
            f"{self.settings.public_url}/.well-known/oauth-protected-resource"
            f"{resource.path.rstrip('/')}"
        )

    async def __call__(
        self, resource: Resource, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if resource.mode != "enforce" or scope["type"] != "http":
            await self.proxy(scope, receive, send)
            return
        scope["sidecar"].route = "gateway"
        if scope["method"] == "OPTIONS" and _header(scope["headers"], b"origin") is not None:
            # A CORS preflight carries no token by design (Fetch standard);
            # answered here, it lets a browser client send the request whose
            # 401 starts discovery. A plain OPTIONS still needs a token.
            await self.preflight(scope, send)
            return
        token = _bearer(scope["headers"])
        if token is None:
            await self._challenge(scope, send, resource, 401, None, "a bearer token is required")
            return
        try:
            claims = await self.verify(token, resource)
        except InvalidToken as exc:
            await self._challenge(scope, send, resource, 401, "invalid_token", exc.description)
            return
        except StoreUnavailable:
            await send_json(
                send,
                503,
                {"error": "temporarily_unavailable", "error_description": "try again shortly"},
                [(b"retry-after", b"5"), *self.cors_headers(scope)],
            )
            return
        granted = self.settings.expand_scopes(claims.get("scope", "").split())
        if not set(resource.scopes) <= granted:
            await self._challenge(
                scope, send, resource, 403, "insufficient_scope", "the token lacks a required scope"
            )
            return
        p = self.settings.identity_header_prefix
        scope["sidecar_identity"] = [
            (f"{p}User-Id".lower(), str(claims["sub"])),
            (f"{p}Client-Id".lower(), str(claims["client_id"])),
            (f"{p}Scopes".lower(), claims.get("scope", "")),
            (f"{p}Convex-Token".lower(), self.convex.for_access_token(claims)),
        ]
        if not self.settings.forward_access_token:
            scope["sidecar_drop_authorization"] = True
        # The answer of a verified request is readable by the page that sent
        # it, as the preflight promised, unless the app says otherwise.
        scope["sidecar_cors"] = self.cors_headers(scope)
        await self.proxy(scope, receive, send)

    async def verify(self, token: str, resource: Resource) -> dict[str, Any]:
        claims = self.grants.decode_access_token(token, audience=resource.url)
        now = time.monotonic()
        until = self._verified.get(claims["jti"])
        if until is None or until < now:
            await self.grants.check_not_revoked(claims)
            ttl = self.settings.revocation_cache_seconds
            if ttl > 0:
                self._verified[claims["jti"]] = now + ttl
                self._verified.move_to_end(claims["jti"])
                while len(self._verified) > CACHE_SIZE:
                    self._verified.popitem(last=False)
        return claims

    async def _challenge(
        self,
        scope: Scope,
        send: Send,
        resource: Resource,
        status: int,
        error: str | None,
        description: str,
    ) -> None:
        """RFC 6750 section 3 and RFC 9728 section 5.1: tell the client where
        the resource's metadata is, and which scopes it needs. A 401 names
        every scope the resource offers (what a client should ask for); a 403
        the ones every token must carry (SEP-2350: all the operation needs)."""
        parts = [f'resource_metadata="{self.prm_url(resource)}"']
        named = resource.scopes if status == 403 else resource.advertised_scopes
        if named:
            parts.append(f'scope="{" ".join(named)}"')
        if error:
            parts.append(f'error="{error}"')
            parts.append(f'error_description="{description}"')
        header = ("Bearer " + ", ".join(parts)).encode("latin-1")
        token_event("refused", f"gateway_{error or 'no_token'}")
        body = {"error": error or "unauthorized", "error_description": description}
        await send_json(
            send, status, body, [(b"www-authenticate", header), *self.cors_headers(scope)]
        )


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
