"""The resource server's guard (MCP authorization, RFC 6750, RFC 9728).

For an ``enforce`` resource every request to its path, or below it, needs one
of the sidecar's access tokens for exactly that resource: signature, issuer,
audience, expiry, ``typ: at+jwt``, required scopes, and not revoked. A
verified request goes upstream with its ``Authorization`` intact and the
user's identity in headers; inbound headers with the identity prefix are
stripped on every path by the proxy. ``OPTIONS`` preflights pass untouched.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import structlog
from starlette.types import Receive, Scope, Send

from sidecar.asgi import send_json
from sidecar.config import Resource, Settings
from sidecar.oauth.errors import InvalidToken
from sidecar.oauth.grants import Grants
from sidecar.observability.metrics import token_event
from sidecar.proxy.http import ProxyApp
from sidecar.store import StoreUnavailable

log = structlog.get_logger("sidecar.gateway")
CACHE_SIZE = 10_000


class Gateway:
    def __init__(self, settings: Settings, grants: Grants, proxy: ProxyApp) -> None:
        self.settings = settings
        self.grants = grants
        self.proxy = proxy
        self.prefix = settings.identity_header_prefix.lower().encode("latin-1")
        # Only resources served on our public origin can be guarded here.
        self.resources = sorted(
            (
                r
                for r in settings.resources
                if r.url.startswith(settings.public_url + "/") or r.url == settings.public_url
            ),
            key=lambda r: len(r.path),
            reverse=True,
        )
        # jti -> time until which its "not revoked" answer may be reused.
        self._verified: OrderedDict[str, float] = OrderedDict()

    def match(self, path: str) -> Resource | None:
        for resource in self.resources:
            base = resource.path.rstrip("/")
            if path == base or path.startswith(base + "/") or base == "":
                return resource
        return None

    def prm_url(self, resource: Resource) -> str:
        return (
            f"{self.settings.public_url}/.well-known/oauth-protected-resource"
            f"{resource.path.rstrip('/')}"
        )

    async def __call__(
        self, resource: Resource, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if resource.mode != "enforce" or scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.proxy(scope, receive, send)
            return
        scope["sidecar"].route = "gateway"
        token = _bearer(scope["headers"])
        if token is None:
            await self._challenge(send, resource, 401, None, "a bearer token is required")
            return
        try:
            claims = await self.verify(token, resource)
        except InvalidToken as exc:
            await self._challenge(send, resource, 401, "invalid_token", exc.description)
            return
        except StoreUnavailable:
            await send_json(
                send,
                503,
                {"error": "temporarily_unavailable", "error_description": "try again shortly"},
                [(b"retry-after", b"5")],
            )
            return
        granted = set(claims.get("scope", "").split())
        if not set(resource.scopes) <= granted:
            await self._challenge(
                send, resource, 403, "insufficient_scope", "the token lacks a required scope"
            )
            return
        p = self.settings.identity_header_prefix
        scope["sidecar_identity"] = [
            (f"{p}User-Id".lower(), str(claims["sub"])),
            (f"{p}Client-Id".lower(), str(claims["client_id"])),
            (f"{p}Scopes".lower(), claims.get("scope", "")),
        ]
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
        self, send: Send, resource: Resource, status: int, error: str | None, description: str
    ) -> None:
        """RFC 6750 section 3 and RFC 9728 section 5.1: tell the client where
        the resource's metadata is, and which scopes it needs."""
        parts = [f'resource_metadata="{self.prm_url(resource)}"']
        if resource.scopes:
            parts.append(f'scope="{" ".join(resource.scopes)}"')
        if error:
            parts.append(f'error="{error}"')
            parts.append(f'error_description="{description}"')
        header = ("Bearer " + ", ".join(parts)).encode("latin-1")
        token_event("refused", f"gateway_{error or 'no_token'}")
        body = {"error": error or "unauthorized", "error_description": description}
        await send_json(send, status, body, [(b"www-authenticate", header)])


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
