"""The resource server's guard (MCP authorization, RFC 6750, RFC 9728).

For an ``enforce`` resource every request to its path, or below it, needs one
of the sidecar's access tokens for exactly that resource: signature, issuer,
audience, expiry, ``typ: at+jwt``, required scopes, and not revoked. A
verified request goes upstream with the person's identity in headers and a
token minted for Convex (``<prefix>Convex-Token``); the client's own
``Authorization`` header stays behind unless ``forward_access_token`` is set
(MCP authorization: no token passthrough). Inbound headers with the identity
prefix are stripped on every path by the proxy.

Which requests are guarded is decided on every spelling an app could route
the raw path as (:func:`sidecar.urls.path_spellings`: percent-decoded, dot
segments resolved, ``;`` cut, ``\\`` as ``/``, ``//`` collapsed, case
folded): the guard decides on what the app will act on, never on one tidy
spelling of it. A path whose spellings disagree (a dot segment, an encoded
separator) and that touches a guarded resource is refused with 400, so no
``..`` can step from one resource to another or out of a guarded one.

Every scope type but lifespan is checked: a WebSocket upgrade needs the same
token as a request, and is refused before the handshake (RFC 6455 section
4.2.2) with the challenge when the server offers the ASGI denial response.

The gateway's own answers carry CORS headers and it answers CORS preflights
on guarded paths itself, so a page on another origin can read the challenge
and start discovery.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

import structlog
from starlette.types import Receive, Scope, Send

from sidecar.asgi import FORWARDING, Forwarding, send_json
from sidecar.config import Resource, Settings
from sidecar.convex import ConvexTokens
from sidecar.expiring import ExpiringCache
from sidecar.oauth.errors import InvalidToken
from sidecar.oauth.scopes import expand_scopes
from sidecar.oauth.tokens import Tokens
from sidecar.observability.metrics import token_event
from sidecar.proxy.http import ProxyApp
from sidecar.routes import prm_path
from sidecar.store import StoreUnavailable
from sidecar.urls import TooManySpellings, is_ambiguous, path_spellings, resource_path

log = structlog.get_logger("sidecar.gateway")
CACHE_SIZE = 10_000
# RFC 9110 section 5.5: what a field value may hold. The identity headers are
# written from token claims, so a claim outside this never gets that far.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")  # one visible-ASCII word: sub, client_id
_HEADER_TEXT = re.compile(r"[\x20-\x7e]*")  # visible ASCII and spaces: scope
_NOT_QDTEXT = re.compile(r"[^\x20-\x7e]")
_CORS_EXPOSE = (b"access-control-expose-headers", b"WWW-Authenticate, Mcp-Session-Id")
_CORS_ANY = ((b"access-control-allow-origin", b"*"), _CORS_EXPOSE)
_VARY_ORIGIN = ((b"vary", b"Origin"),)
# A verified token that still may not pass (RFC 6750 section 3.1).
_UNCARRIABLE = (401, "invalid_token", "the token's identity cannot be carried in a header")
_INSUFFICIENT_SCOPE = (403, "insufficient_scope", "the token lacks a required scope")


class Ambiguous:
    """A path whose spellings resolve differently, touching a guarded
    resource: refused, since no one spelling is the one the app will act on."""

    def __repr__(self) -> str:
        return "AMBIGUOUS"


AMBIGUOUS = Ambiguous()


class Gateway:
    def __init__(
        self, settings: Settings, tokens: Tokens, proxy: ProxyApp, convex: ConvexTokens
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.proxy = proxy
        self.convex = convex
        self.prefix = settings.identity_header_prefix.lower().encode("latin-1")
        # Only resources served on our public origin can be guarded here;
        # the longest path wins where one resource lies below another.
        ordered = sorted(
            (
                (resource_path(r.path), r)
                for r in settings.resources
                if settings.on_public_origin(r)
            ),
            key=lambda pair: len(pair[0]),
            reverse=True,
        )
        # (base, base + "/", resource): the prefix precomputed for the hot path.
        self.resources = [(base, base + "/", r) for base, r in ordered]
        self.cors_origins = settings.gateway_cors_origins
        # jti -> its "not revoked" answer, reused for revocation_cache_seconds.
        self._verified: ExpiringCache[str, bool] = ExpiringCache(CACHE_SIZE)

    def match(self, raw_path: str) -> Resource | Ambiguous | None:
        """The resource a raw request path (as sent, percent-encoding and
        all) belongs to under any spelling an app may route it as;
        :data:`AMBIGUOUS` when its spellings disagree and one of them is
        under an enforced resource; None when no spelling is guarded."""
        try:
            spellings = path_spellings(raw_path)
        except TooManySpellings:
            return AMBIGUOUS
        touched: list[Resource] = []
        for spelling in spellings:
            for base, below, resource in self.resources:
                if base == "/" or spelling == base or spelling.startswith(below):
                    if resource not in touched:
                        touched.append(resource)
                    break
        if not touched:
            return None
        if all(r.mode != "enforce" for r in touched):
            return touched[0]
        if len(touched) > 1 or is_ambiguous(raw_path):
            return AMBIGUOUS
        return touched[0]

    def cors_headers(self, scope: Scope) -> tuple[tuple[bytes, bytes], ...]:
        """Fetch standard: a browser lets a page read a cross-origin answer
        (and its WWW-Authenticate) only with these."""
        if not self.cors_origins:
            return ()
        if "*" in self.cors_origins:
            return _CORS_ANY
        origin = _header(scope["headers"], b"origin")
        if origin is None or origin.decode("latin-1").lower() not in self.cors_origins:
            return _VARY_ORIGIN
        return ((b"access-control-allow-origin", origin), _CORS_EXPOSE, *_VARY_ORIGIN)

    async def preflight(self, scope: Scope, send: Send) -> None:
        headers = list(self.cors_headers(scope))
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
        return self.settings.public_url + prm_path(resource)

    def route_class(self, target: Resource | Ambiguous) -> str:
        """The access log's route class of a request under a resource:
        ``gateway`` where the gateway checks (or refuses) it, ``proxy`` where
        it passes through unchecked (a resource that is not enforced)."""
        return "gateway" if isinstance(target, Ambiguous) or target.mode == "enforce" else "proxy"

    async def __call__(
        self, target: Resource | Ambiguous, scope: Scope, receive: Receive, send: Send
    ) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            # No protocol the sidecar could check a token on: nothing on a
            # guarded path goes upstream unchecked (fail closed).
            if isinstance(target, Ambiguous) or target.mode == "enforce":
                return
            await self.proxy(scope, receive, send)
            return
        if isinstance(target, Ambiguous):
            await self._refuse_ambiguous(scope, receive, send)
            return
        resource = target
        if resource.mode != "enforce":
            await self.proxy(scope, receive, send)
            return
        if (
            kind == "http"
            and scope["method"] == "OPTIONS"
            and _header(scope["headers"], b"origin") is not None
        ):
            # A CORS preflight carries no token by design (Fetch standard);
            # answered here, it lets a browser client send the request whose
            # 401 starts discovery. A plain OPTIONS still needs a token.
            await self.preflight(scope, send)
            return
        token = _bearer(scope["headers"])
        if token is None:
            await self._challenge(
                scope, receive, send, resource, 401, None, "a bearer token is required"
            )
            return
        try:
            claims = await self.verify(token, resource)
        except InvalidToken as exc:
            await self._challenge(
                scope, receive, send, resource, 401, "invalid_token", exc.description
            )
            return
        except StoreUnavailable:
            await self._unavailable(scope, receive, send)
            return
        refusal = self._refusal(claims, resource)
        if refusal is not None:
            await self._challenge(scope, receive, send, resource, *refusal)
            return
        scope[FORWARDING] = self._forwarding(claims, scope)
        await self.proxy(scope, receive, send)

    def _refusal(self, claims: dict[str, Any], resource: Resource) -> tuple[int, str, str] | None:
        """Why a verified token may still not pass (status, error,
        description), or None when it may."""
        sub, client_id, scopes = claims.get("sub"), claims.get("client_id"), claims.get("scope", "")
        if not (
            isinstance(sub, str)
            and _HEADER_TOKEN.fullmatch(sub)
            and isinstance(client_id, str)
            and _HEADER_TOKEN.fullmatch(client_id)
            and isinstance(scopes, str)
            and _HEADER_TEXT.fullmatch(scopes)
        ):
            # RFC 9110 section 5.5: these become header values upstream; a
            # claim with a control or non-ASCII character never does.
            return _UNCARRIABLE
        granted = expand_scopes(self.settings, scopes.split())
        if not set(resource.scopes) <= granted:
            return _INSUFFICIENT_SCOPE
        return None

    def _forwarding(self, claims: dict[str, Any], scope: Scope) -> Forwarding:
        """How the proxy forwards a request whose token passed (the claims
        :meth:`_refusal` let through)."""
        p = self.settings.identity_header_prefix
        # The same for an upgrade as for a request: the app sees the person,
        # never the client's token (MCP authorization: no token passthrough).
        return Forwarding(
            identity=(
                (f"{p}User-Id".lower(), claims["sub"]),
                (f"{p}Client-Id".lower(), claims["client_id"]),
                (f"{p}Scopes".lower(), claims.get("scope", "")),
                (f"{p}Convex-Token".lower(), self.convex.for_access_token(claims)),
            ),
            drop_authorization=not self.settings.forward_access_token,
            # The answer of a verified request is readable by the page that
            # sent it, as the preflight promised, unless the app says otherwise.
            cors=self.cors_headers(scope),
        )

    async def _refuse_ambiguous(self, scope: Scope, receive: Receive, send: Send) -> None:
        token_event("refused", "gateway_ambiguous_path")
        await self._answer(
            scope,
            receive,
            send,
            400,
            {
                "error": "invalid_request",
                "error_description": (
                    "the path resolves differently under different routers "
                    "(a dot segment or an encoded separator) near a protected resource"
                ),
            },
            self.cors_headers(scope),
        )

    async def _unavailable(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The store that says whether a token was revoked cannot be asked:
        nothing passes unchecked (fail closed), the client may retry."""
        await self._answer(
            scope,
            receive,
            send,
            503,
            {"error": "temporarily_unavailable", "error_description": "try again shortly"},
            [(b"retry-after", b"5"), *self.cors_headers(scope)],
        )

    async def verify(self, token: str, resource: Resource) -> dict[str, Any]:
        claims = self.tokens.decode_access_token(token, audience=resource.url)
        now = time.monotonic()
        if self._verified.get(claims["jti"], now) is None:
            await self.tokens.check_not_revoked(claims)
            ttl = self.settings.revocation_cache_seconds
            if ttl > 0:
                self._verified.put(claims["jti"], True, now + ttl)
        return claims

    async def _challenge(
        self,
        scope: Scope,
        receive: Receive,
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
        parts = [f"resource_metadata={_quoted(self.prm_url(resource))}"]
        named = resource.scopes if status == 403 else resource.advertised_scopes
        if named:
            parts.append(f"scope={_quoted(' '.join(named))}")
        if error:
            parts.append(f"error={_quoted(error)}")
            parts.append(f"error_description={_quoted(description)}")
        header = ("Bearer " + ", ".join(parts)).encode("ascii")
        token_event("refused", f"gateway_{error or 'no_token'}")
        body = {"error": error or "unauthorized", "error_description": description}
        await self._answer(
            scope,
            receive,
            send,
            status,
            body,
            [(b"www-authenticate", header), *self.cors_headers(scope)],
        )

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        body: dict[str, Any],
        headers: Sequence[tuple[bytes, bytes]],
    ) -> None:
        """The gateway's own answer. For a WebSocket upgrade it is sent
        before any handshake (RFC 6455 section 4.2.2: a server refuses with
        an HTTP status), through the ASGI denial response where the server
        offers it, else as a close before accept, which servers answer 403."""
        if scope["type"] == "http":
            await send_json(send, status, body, headers)
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        data = json.dumps(body).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    (b"cache-control", b"no-store"),
                    *headers,
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": data})


def _quoted(value: str) -> str:
    """RFC 9110 section 5.6.4: a quoted-string, ``"`` and ``\\`` escaped;
    anything outside visible ASCII and space (CR and LF above all: section
    5.5) becomes a space, so no parameter can end the field early."""
    text = _NOT_QDTEXT.sub(" ", value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


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
