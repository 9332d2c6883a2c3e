"""``create_app(settings)``: the whole sidecar as one ASGI app.

Requests for routes the sidecar owns (the /oauth namespace and the discovery
documents) go to its Starlette app; everything else goes to the proxy. The
lifespan opens and closes the shared upstream client.
"""

from __future__ import annotations

import structlog
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from sidecar.config import Settings
from sidecar.observability.access import AccessMiddleware
from sidecar.observability.health import health_routes
from sidecar.proxy.http import ProxyApp
from sidecar.proxy.upstream import UpstreamClient

log = structlog.get_logger("sidecar")

OAUTH_PREFIX = "/oauth"


class RouteTable:
    """Which paths the sidecar owns; everything else is the upstream's."""

    def __init__(self, settings: Settings) -> None:
        self.exact: set[str] = set()
        self.prefixes: tuple[str, ...] = (OAUTH_PREFIX + "/",)
        self.settings = settings

    def owns(self, path: str) -> bool:
        return path == OAUTH_PREFIX or path.startswith(self.prefixes) or path in self.exact

    def classify(self, path: str) -> str:
        if path.startswith(("/oauth/healthz", "/oauth/readyz")):
            return "health"
        return "oauth" if self.owns(path) else "proxy"


class SidecarApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routes = RouteTable(settings)
        self.upstream = UpstreamClient(
            settings.upstream_url,
            pool_size=settings.upstream_pool_size,
            connect_timeout=settings.upstream_connect_timeout,
            response_timeout=settings.upstream_response_timeout,
        )
        self.owned = Starlette(routes=health_routes({"upstream_client": self._client_ready}))
        self.proxy = ProxyApp(settings, self.upstream)
        self.app: ASGIApp = AccessMiddleware(
            self._dispatch, self.routes.classify, log_requests=settings.access_log
        )

    async def _client_ready(self) -> str | None:
        return None if self.upstream._session is not None else "not started"

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.routes.owns(scope["path"]):
            await self.owned(scope, receive, send)
        else:
            await self.proxy(scope, receive, send)

    async def startup(self) -> None:
        await self.upstream.open()
        log.info(
            "sidecar started",
            public_url=self.settings.public_url,
            upstream=self.settings.upstream_url,
            issuer=self.settings.issuer,
        )

    async def shutdown(self) -> None:
        await self.upstream.close()
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


def create_app(settings: Settings) -> SidecarApp:
    return SidecarApp(settings)
