"""``create_app(settings)``: the whole sidecar as one ASGI app.

Requests for routes the sidecar owns (the /oauth namespace and the discovery
documents) go to its Starlette app; everything else goes to the proxy. The
lifespan opens and closes the shared upstream client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.asgi import CONTEXT
from sidecar.config import ConfigError, Settings, check_serving
from sidecar.convex import ConvexTokens
from sidecar.edge.limits import SizeLimits
from sidecar.gateway import Gateway
from sidecar.keys import load_keyset
from sidecar.keys.reload import watch_key_file
from sidecar.oauth.account import ConnectedApps
from sidecar.oauth.authorize import AuthorizationEndpoint
from sidecar.oauth.browser import Browser
from sidecar.oauth.cimd import MetadataDocuments
from sidecar.oauth.clients import ClientRegistry
from sidecar.oauth.consents import Consents
from sidecar.oauth.endpoints import OAuthEndpoints, document, oauth_json
from sidecar.oauth.grants import Grants
from sidecar.oauth.pages import Pages
from sidecar.oauth.pending import PendingAuthorizations
from sidecar.oauth.ratelimit import RateLimiter
from sidecar.oauth.tokens import Tokens
from sidecar.observability.access import AccessMiddleware
from sidecar.observability.health import health_routes
from sidecar.observability.metrics import (
    SIGNING_KEY_AGE,
    SIGNING_KEYS,
    metrics_listener_error,
    serve_metrics,
)
from sidecar.proxy.http import ProxyApp
from sidecar.proxy.upstream import UpstreamClient
from sidecar.routes import RouteTable, check_served_as_configured, discovery_paths, prm_paths
from sidecar.session import SessionBridge
from sidecar.store import Store, open_store
from sidecar.store.instrumented import InstrumentedStore
from sidecar.store.shape import migrate_at_start

log = structlog.get_logger("sidecar")

KEY_AGE_EVERY = 5.0  # seconds between updates of the signing key's age
UPSTREAM_PROBE_TIMEOUT = 2.0  # seconds the one connection attempt at start may take


class SidecarApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routes = RouteTable(settings)
        self.upstream = UpstreamClient(
            settings.upstream_url,
            pool_size=settings.upstream_pool_size,
            connect_timeout=settings.upstream_connect_timeout,
            response_timeout=settings.upstream_response_timeout,
            ca_file=settings.upstream_ca_file or None,
            max_head_bytes=settings.max_header_bytes,
        )
        try:
            self.store: Store = InstrumentedStore(open_store(settings.store_url))
        except ValueError as exc:
            raise ConfigError("store_url", str(exc)) from None
        check_serving(settings)
        self.keys = load_keyset(settings)
        self.documents = MetadataDocuments(settings, self.store)
        self.clients = ClientRegistry(self.store, self.documents)
        self.consents = Consents(settings, self.store)
        self.grants = Grants(settings, self.store, self.consents)
        self.tokens = Tokens(self.grants, self.keys)
        self.bridge = SessionBridge(settings, self.upstream, self.keys)
        self.limiter = RateLimiter(self.store)
        self.browser = Browser(settings, self.bridge, self.limiter)
        pages = Pages(settings)
        self.authz = AuthorizationEndpoint(
            settings,
            self.clients,
            self.grants,
            self.consents,
            self.browser,
            pages,
            PendingAuthorizations(settings, self.store),
        )
        self.account = ConnectedApps(
            settings, self.store, self.clients, self.grants, self.browser, pages
        )
        self.convex_tokens = ConvexTokens(settings, self.keys)
        self.endpoints = OAuthEndpoints(
            settings,
            self.clients,
            self.grants,
            self.tokens,
            self.keys,
            self.limiter,
            self.convex_tokens,
        )
        self.owned = Starlette(routes=self.oauth_routes())
        self.proxy = ProxyApp(
            settings,
            self.upstream,
            drop_header_prefixes=[settings.identity_header_prefix.lower().encode("latin-1")],
        )
        self.gateway = Gateway(settings, self.tokens, self.proxy, self.convex_tokens)
        check_served_as_configured(settings, self.routes, self.gateway)
        self.metrics_server: Any = None
        self._key_watch: asyncio.Task[None] | None = None
        self._key_age: asyncio.Task[None] | None = None
        self._jwks_cache: tuple[list[dict[str, Any]], Any] | None = None
        self.limits = SizeLimits(settings.max_query_bytes, settings.max_header_bytes)
        # RFC 6797: only over TLS the sidecar serves itself (behind an ingress
        # that terminates TLS, the ingress sets it for the whole origin).
        self.hsts = (
            f"max-age={settings.hsts_max_age}".encode()
            if settings.serves_tls and settings.hsts_max_age
            else None
        )
        self.app: ASGIApp = AccessMiddleware(self._dispatch, log_requests=settings.access_log)

    def oauth_routes(self) -> list[Route]:
        e, a = self.endpoints, self.authz
        post = ["POST", "OPTIONS"]
        routes = [
            *health_routes({"store": self._store_ready}),
            Route("/oauth/authorize", a.authorize, methods=["GET"]),
            Route("/oauth/authorize/continue", a.resume_endpoint, methods=["GET"]),
            Route("/oauth/consent", a.consent, methods=["POST"]),
            Route("/oauth/account", self.account.page, methods=["GET"]),
            Route("/oauth/account/revoke", self.account.revoke, methods=["POST"]),
            Route("/oauth/token", oauth_json(e.token), methods=post),
            Route("/oauth/register", oauth_json(e.register), methods=post),
            Route("/oauth/revoke", oauth_json(e.revoke), methods=post),
            Route("/oauth/introspect", oauth_json(e.introspect), methods=post),
            Route("/oauth/userinfo", oauth_json(e.userinfo), methods=["GET", "POST", "OPTIONS"]),
            Route("/oauth/jwks", self.jwks_document, methods=["GET", "OPTIONS"]),
        ]
        metadata = document(e.metadata(), 3600)
        routes += [Route(path, metadata, methods=["GET", "OPTIONS"]) for path in discovery_paths()]
        for path, resource in prm_paths(self.settings).items():
            routes.append(
                Route(
                    path,
                    document(e.protected_resource_metadata(resource), 3600),
                    methods=["GET", "OPTIONS"],
                )
            )
        return routes

    async def _store_ready(self) -> str | None:
        await self.store.ping()
        return None

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Where a request goes, decided once: the sidecar's own routes, the
        gateway (a path under a resource, under any spelling) or the app.
        The access log's route class is named here; a request to the app
        keeps the one it starts with, ``proxy``."""
        path = scope["path"]
        route = self.routes.route_class(path)
        guarded = None
        if route is None:
            # The gateway decides on the path as sent (scope["path"] is
            # already percent-decoded), so every spelling the app could
            # route is seen.
            raw: bytes | None = scope.get("raw_path")
            guarded = self.gateway.match(raw.decode("latin-1") if raw else path)
            if guarded is None:
                if scope["type"] == "http":
                    await self.proxy.http(scope, receive, send)  # one coroutine frame less
                else:
                    await self.proxy(scope, receive, send)
                return
            route = self.gateway.route_class(guarded)
        if (ctx := scope.get(CONTEXT)) is not None:
            ctx.route = route
        if self.hsts is not None and scope["type"] == "http":
            send = with_header(send, b"strict-transport-security", self.hsts)
        if guarded is None:
            if await self.limits.refuse(scope, send, query=True):
                return
            await self.owned(scope, receive, send)
        else:
            if await self.limits.refuse(scope, send, query=False):
                return
            await self.gateway(guarded, scope, receive, send)

    async def jwks_document(self, request: Request) -> Response:
        """The public keys, rebuilt only when the key set changes (a reload)."""
        published = self.keys.published
        if self._jwks_cache is None or self._jwks_cache[0] is not published:
            self._jwks_cache = (published, document(self.keys.jwks(), 300))
        return await self._jwks_cache[1](request)

    def _keys_changed(self) -> None:
        SIGNING_KEYS.set(len(self.keys.published))
        SIGNING_KEY_AGE.clear()
        self._track_key_age()

    def _track_key_age(self) -> None:
        if self.keys.signing_created_at:
            age = time.time() - self.keys.signing_created_at
            SIGNING_KEY_AGE.labels(kid=self.keys.signing.kid).set(age)

    async def _key_age_forever(self) -> None:
        # Set, not computed at scrape: with several workers the value lives in
        # prometheus-client's multiprocess files, which hold no function.
        while True:
            await asyncio.sleep(KEY_AGE_EVERY)
            self._track_key_age()

    async def startup(self) -> None:
        if self.keys.mode == "generated":
            self._key_watch = asyncio.create_task(
                watch_key_file(self.settings, self.keys, self._keys_changed)
            )
        if self.settings.metrics_port:
            host, port = self.settings.metrics_host, self.settings.metrics_port
            try:
                self.metrics_server = serve_metrics(host, port)
            except OSError as exc:
                raise RuntimeError(metrics_listener_error(host, port, exc)) from None
        SIGNING_KEYS.set(len(self.keys.published))
        self._track_key_age()
        self._key_age = asyncio.create_task(self._key_age_forever())
        await self.upstream.open()
        await self.store.open()
        # What earlier releases wrote, in this release's shape (README, "Scale").
        self._migration = await migrate_at_start(self.store, self.grants.migrations())
        await self.documents.open()
        if self.keys.generated_now:
            log.info(
                "generated a signing key",
                kid=self.keys.signing.kid,
                file=f"{self.settings.data_dir}/signing-keys.json",
            )
        if self.settings.forward_access_token:
            log.warning(
                "forward_access_token is on: MCP clients' own access tokens reach the app "
                "(token passthrough); prefer the Convex token header",
                header=f"{self.settings.identity_header_prefix}Convex-Token",
            )
        if not self.settings.resources:
            log.warning(
                "no resource is configured: MCP clients have nothing to ask for; "
                "set resources (SIDECAR_RESOURCES), e.g. /api/mcp",
            )
        # In the background: an app that comes up later is no start-up failure.
        self._upstream_probe = asyncio.create_task(self._probe_upstream())

    def log_started(self) -> None:
        """Said by the server once it listens (sidecar/runtime/server.py)."""
        log.info(
            "sidecar started",
            public_url=self.settings.public_url,
            upstream=self.settings.upstream_url,
            issuer=self.settings.issuer,
            store=self.settings.store_url.split("@")[-1],
            keys=self.keys.mode,
            signing_kid=self.keys.signing.kid,
        )

    async def _probe_upstream(self) -> None:
        """One short connection attempt to the app; a warning if it fails."""
        timeout = min(self.settings.upstream_connect_timeout, UPSTREAM_PROBE_TIMEOUT)
        problem = await unreachable(self.settings.upstream_url, timeout)
        if problem is not None:
            log.warning(
                "the upstream does not answer at start: requests to the app will fail "
                "until it does; check upstream_url (SIDECAR_UPSTREAM_URL)",
                upstream=self.settings.upstream_url,
                error=problem,
            )

    async def shutdown(self) -> None:
        if (probe := getattr(self, "_upstream_probe", None)) is not None:
            probe.cancel()
        if self._key_watch is not None:
            self._key_watch.cancel()
        if self._key_age is not None:
            self._key_age.cancel()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        await self.upstream.close()
        await self.documents.close()
        if (migration := getattr(self, "_migration", None)) is not None:
            migration.cancel()
        await self.store.close()
        log.info("sidecar stopped")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("start-up failed", error=str(exc))
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def with_header(send: Send, name: bytes, value: bytes) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (name, value)]}
        await send(message)

    return sending


async def unreachable(url: str, within: float) -> str | None:
    """Why a TCP connection to ``url``'s host and port fails, or None."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(within):
            _reader, writer = await asyncio.open_connection(parts.hostname, port)
    except TimeoutError:
        return f"no answer within {within:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def create_app(settings: Settings) -> SidecarApp:
    return SidecarApp(settings)
