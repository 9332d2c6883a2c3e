"""WebSocket upgrades passed through both ways.

The client's handshake is accepted only after the upstream accepted its own,
with the subprotocol the upstream chose; an upstream refusal is relayed with
its status when the server supports the ASGI denial-response extension.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import aiohttp
import structlog
from starlette.types import Receive, Scope, Send

from sidecar.proxy.upstream import UpstreamClient

log = structlog.get_logger("sidecar.proxy")

# Handshake fields the upstream client negotiates itself.
_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


class Forwarder(Protocol):
    """What an upgrade needs of the HTTP side of the proxy: its upstream
    client, and the target and headers it would forward for a scope (the
    headers with what the gateway verified: the scope's
    :data:`sidecar.asgi.FORWARDING`)."""

    upstream: UpstreamClient

    def target(self, scope: Scope) -> str: ...

    def headers_for(self, scope: Scope) -> list[tuple[str, str]]: ...


async def proxy_websocket(proxy: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    headers = [(k, v) for k, v in proxy.headers_for(scope) if k not in _HANDSHAKE]
    protocols = [p.strip() for p in scope.get("subprotocols", ()) if p.strip()]
    try:
        upstream = await proxy.upstream.websocket(proxy.target(scope), headers, protocols)
    except aiohttp.WSServerHandshakeError as exc:
        await _deny(scope, send, exc.status or 502)
        return
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("upstream websocket unreachable", error=repr(exc))
        await _deny(scope, send, 502)
        return

    await send({"type": "websocket.accept", "subprotocol": upstream.protocol})

    async def client_to_upstream() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "websocket.receive":
                if msg.get("bytes") is not None:
                    await upstream.send_bytes(msg["bytes"])
                elif msg.get("text") is not None:
                    await upstream.send_str(msg["text"])
            elif msg["type"] == "websocket.disconnect":
                await upstream.close(code=_closable(msg.get("code", 1000)))
                return

    async def upstream_to_client() -> None:
        async for msg in upstream:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": msg.data})
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": msg.data})
            elif msg.type is aiohttp.WSMsgType.PING:
                await upstream.pong(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
                break
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": _closable(code)})

    tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            if task.exception() is not None:
                log.info("websocket ended", error=repr(task.exception()))
    finally:
        for task in tasks:
            task.cancel()
        await upstream.close()


def _closable(code: int) -> int:
    """Codes 1005, 1006 and 1015 are reserved: they may not be sent in a frame."""
    return 1000 if code in (1005, 1006, 1015) or code < 1000 else code


async def _deny(scope: Scope, send: Send, status: int) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"upstream refused"})
    else:
        await send({"type": "websocket.close", "code": 1011})
