"""Plain ASGI middleware: request id, one access log line per request.

Plain ASGI rather than BaseHTTPMiddleware: that one breaks streaming and
contextvars (Starlette documents both).

Every request starts as ``proxy``; the app's dispatcher, which decides once
where a request goes, names any other route class on the request's context
(``health``, ``oauth``, ``gateway``) before it is served.
"""

from __future__ import annotations

import sys
import time
from email.utils import formatdate
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.asgi import CONTEXT
from sidecar.observability import logging as sidecar_logging
from sidecar.observability.context import CURRENT_REQUEST_ID, RequestContext, request_id_from
from sidecar.observability.metrics import REQUEST_SECONDS, REQUESTS

log = structlog.get_logger("sidecar.access")

_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The current time as an IMF-fixdate (RFC 9110 section 5.6.7), made
    once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


class AccessMiddleware:
    def __init__(self, app: ASGIApp, log_requests: bool = True):
        self.app = app
        self.log_requests = log_requests
        self.direct_json = sidecar_logging.JSON_INFO_LINES
        # (route, status) -> the metric children: labels() takes a lock and
        # builds a key on every call; the set of pairs is small and closed.
        self._metrics: dict[tuple[str, int], tuple[Any, Any]] = {}

    def count(self, route: str, status: int, elapsed: float) -> None:
        children = self._metrics.get((route, status))
        if children is None:
            labels = {"route": route, "status": str(status)}
            children = (REQUESTS.labels(**labels), REQUEST_SECONDS.labels(**labels))
            self._metrics[(route, status)] = children
        children[0].inc()
        children[1].observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        ctx = RequestContext(request_id=request_id_from(scope["headers"]), route="proxy")
        scope[CONTEXT] = ctx
        bound = CURRENT_REQUEST_ID.set(ctx.request_id)
        status = 0
        request_id_header = (b"x-request-id", ctx.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), request_id_header]
                if not any(name == b"date" for name, _ in headers):
                    # RFC 9110 section 6.6.1: an origin server with a clock
                    # sends Date, and a proxy adds it to an answer that has
                    # none (clients check clock skew against it).
                    headers.append((b"date", http_date()))
                message["headers"] = headers
            elif message["type"] == "websocket.http.response.start":
                status = message["status"]  # an upgrade refused before its handshake
            elif message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close" and status == 0:
                status = 403
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.count(ctx.route, status, elapsed)
            if self.log_requests:
                fields = {
                    "route": ctx.route,
                    "method": scope.get("method", "GET") if scope["type"] == "http" else "WS",
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "upstream_ms": ctx.upstream_ms,
                    "client": scope["client"][0] if scope.get("client") else None,
                }
                if self.direct_json:
                    # One write per line: atomic on a pipe shared by workers.
                    sys.stderr.write(sidecar_logging.json_line("request", fields))
                else:
                    log.info("request", **fields)
            CURRENT_REQUEST_ID.reset(bound)
