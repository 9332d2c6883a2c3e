"""The HTTP side of the proxy, as a plain ASGI app.

Bodies stream both ways: the request body is read from ``receive`` as the
upstream client writes it, and the response body is sent as each chunk arrives
(Server-Sent Events and MCP streamable HTTP depend on it). A client that goes
away cancels its upstream request.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import structlog
from starlette.types import Receive, Scope, Send

from sidecar.asgi import FORWARDING, ON_DISCONNECT, Forwarding, send_json
from sidecar.config import Settings
from sidecar.edge.address import is_trusted
from sidecar.observability.context import context_of
from sidecar.observability.metrics import UPSTREAM_ERRORS, UPSTREAM_SECONDS
from sidecar.proxy.headers import (
    client_response_headers,
    upstream_cookie_domain,
    upstream_request_headers,
)
from sidecar.proxy.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.proxy.websocket import proxy_websocket

log = structlog.get_logger("sidecar.proxy")

# What the server's own writer refuses in a field (RFC 9110 section 5.5: CR,
# LF and NUL above all).
_UNSAFE_FIELD = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


class ClientDisconnected(Exception):
    """The client went away before the response was complete."""


class _Exchange:
    """How one proxied request is cut short: the response timeout, as a
    plain timer (asyncio.timeout with its reschedules cost about 5 µs a
    request here, the timer about 1.3), and the client's going away. Either
    cancels the task serving the request."""

    __slots__ = ("disconnected", "loop", "task", "timed_out", "timeout", "timer")

    def __init__(self, timeout: float) -> None:
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.timed_out = False
        self.disconnected = False
        self.timer = self.loop.call_later(timeout, self.on_timeout)

    def on_disconnect(self) -> None:
        # The client is gone: the upstream request must stop too.
        if not self.disconnected:
            self.disconnected = True
            if self.task is not None:
                self.task.cancel()

    def on_timeout(self) -> None:
        self.timed_out = True
        if self.task is not None:
            self.task.cancel()

    def timed_out_itself(self) -> bool:
        """Whether a cancellation was our own timer's and nobody else's (a
        shutdown's cancellation goes on up), as asyncio.timeout decides it."""
        return self.timed_out and self.task is not None and self.task.uncancel() == 0

    async def upload(self, receive: Receive) -> AsyncIterator[bytes]:
        """The request body as the client sends it."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientDisconnected
            # The response timeout counts from the last uploaded byte, so a
            # long upload is not cut off by it.
            self.timer.cancel()
            self.timer = self.loop.call_later(self.timeout, self.on_timeout)
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class ProxyApp:
    def __init__(
        self,
        settings: Settings,
        upstream: UpstreamClient,
        drop_header_prefixes: Sequence[bytes] = (),
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        parts = urlsplit(settings.upstream_url)
        self.upstream_host = parts.netloc.encode("latin-1")
        self.upstream_origin = settings.upstream_url.lower().encode("latin-1")
        self.public_origin = settings.public_url.encode("latin-1")
        self.cookie_domain = upstream_cookie_domain(settings.upstream_url, settings.public_url)
        self.response_timeout = settings.upstream_response_timeout
        self.drop_prefixes = tuple(drop_header_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await proxy_websocket(self, scope, receive, send)

    # -- building the upstream request --------------------------------------

    def target(self, scope: Scope) -> str:
        """Path and query exactly as the client sent them (``%2F``, ``//``,
        ``+`` and percent-encoded non-ASCII stay byte for byte)."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query: bytes = scope.get("query_string", b"")
        target = raw_path.decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        return target

    def headers_for(self, scope: Scope) -> list[tuple[str, str]]:
        peer = scope["client"][0] if scope.get("client") else None
        headers = upstream_request_headers(
            scope["headers"],
            peer=peer,
            scheme=scope.get("scheme", "http"),
            trusted_peer=is_trusted(peer, self.settings.trusted_proxies),
            upstream_host=self.upstream_host,
            preserve_host=self.settings.preserve_host,
            request_id=context_of(scope).request_id,
            drop_prefixes=self.drop_prefixes,
        )
        forwarding: Forwarding | None = scope.get(FORWARDING)
        if forwarding is not None:
            if forwarding.drop_authorization:
                # The MCP client's token stays at the gateway (no passthrough).
                headers = [(k, v) for k, v in headers if k != "authorization"]
            # Identity the gateway verified; inbound look-alikes were dropped above.
            headers.extend(forwarding.identity)
        return headers

    # -- the exchange -------------------------------------------------------

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the request upstream, its body streamed from ``receive``,
        cut short by the response timeout or the client's going away; the
        answer is :meth:`relay`'s."""
        ctx = context_of(scope)
        started = time.perf_counter()
        exchange = _Exchange(self.response_timeout)
        # The sidecar's server calls back when the connection is lost
        # (sidecar/runtime/protocol.py): no task parked on receive() for each
        # request. Under another ASGI server the upstream request would run
        # on to its answer or the response timeout.
        if ON_DISCONNECT in scope:
            scope[ON_DISCONNECT] = exchange.on_disconnect
        try:
            try:
                response = await self.upstream.request(
                    scope["method"],
                    self.target(scope),
                    self.headers_for(scope),
                    exchange.upload(receive) if _has_body(scope["headers"]) else None,
                )
            finally:
                exchange.timer.cancel()
        except asyncio.CancelledError:
            if exchange.disconnected:
                return
            if exchange.timed_out_itself():
                await self.send_error(send, UpstreamTimeout("no response in time"), ctx.request_id)
                return
            raise
        except ClientDisconnected:
            return  # gone mid-upload: nobody to answer
        except UpstreamError as exc:
            if not exchange.disconnected:
                await self.send_error(send, exc, ctx.request_id)
            return
        upstream_seconds = time.perf_counter() - started
        ctx.upstream_ms = round(upstream_seconds * 1000, 3)
        UPSTREAM_SECONDS.observe(upstream_seconds)
        await self.relay(scope, send, response, exchange, ctx.request_id)

    async def relay(
        self,
        scope: Scope,
        send: Send,
        response: UpstreamResponse,
        exchange: _Exchange,
        request_id: str,
    ) -> None:
        """Relay the upstream's answer: its head as the client may see it,
        then its body as each chunk arrives."""
        try:
            headers = client_response_headers(
                response.raw_headers,
                upstream_origin=self.upstream_origin,
                public_origin=self.public_origin,
                upstream_cookie_domain=self.cookie_domain,
            )
            forwarding: Forwarding | None = scope.get(FORWARDING)
            if forwarding is not None and forwarding.cors:
                present = {name for name, _ in headers}
                added = [(name, value) for name, value in forwarding.cors if name not in present]
                # RFC 9110 section 5.5: no control character (CR, LF, NUL
                # above all) in a field. The upstream's own fields passed
                # llhttp, which refuses them; what the proxy adds is checked
                # here, before the status line is committed (the server
                # would refuse it after).
                if _UNSAFE_FIELD.search(b"".join(itertools.chain.from_iterable(added))):
                    await self.send_error(
                        send,
                        UpstreamUnavailable("response header with a control character refused"),
                        request_id,
                    )
                    return
                headers.extend(added)
            status = response.status
            if status in (204, 304):
                # RFC 9110 sections 8.6 and 15.3.5: no body follows; a 304's
                # length describes the 200's body, which the server would
                # count as missing here.
                headers = [(k, v) for k, v in headers if k != b"content-length"]
            try:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                finished = False
                if scope["method"] != "HEAD":
                    async for chunk in response.iter_body():
                        # The last chunk closes the response itself: one
                        # message (and, for a small answer, one send) less.
                        finished = response.body_complete
                        await send(
                            {"type": "http.response.body", "body": chunk, "more_body": not finished}
                        )
                if not finished:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                response.release()
            except UpstreamError as exc:
                # Headers are gone already; all we can do is cut the connection.
                log.warning("upstream broke off mid-response", error=str(exc))
                raise
            except RuntimeError as exc:
                # The server refused a message it was given (uvicorn: "Response
                # content longer than Content-Length"); it closes the client's
                # connection, the upstream's is closed below.
                log.warning("response refused by the server", error=str(exc))
        except asyncio.CancelledError:
            if exchange.disconnected:
                log.info("client disconnected; upstream request cancelled")
                return
            raise
        finally:
            # Every way out gives the connection back or closes it (a no-op
            # once released): a lost slot is a later request's 504.
            response.close()

    @staticmethod
    async def send_error(send: Send, exc: UpstreamError, request_id: str) -> None:
        log.warning("upstream error", error=str(exc), status=exc.status)
        UPSTREAM_ERRORS.labels(kind=exc.code).inc()
        description = (
            "the upstream app timed out"
            if isinstance(exc, UpstreamTimeout)
            else "the upstream app is unreachable"
        )
        await send_json(
            send,
            exc.status,
            {"error": exc.code, "error_description": description, "request_id": request_id},
        )


def _has_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False
