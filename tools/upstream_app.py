"""A small real upstream for proxy tests, run under uvicorn in its own process.

Plain ASGI so every byte it sees and sends is under the test's control.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]

# State shared between requests of this one process.
RELEASE = asyncio.Event()
STATE: dict[str, Any] = {
    "stream_disconnects": 0,
    "stream_started": 0,
    "stream_finished": 0,
    "think_started": 0,
    "think_disconnects": 0,
}

PATTERN = bytes(range(256)) * 256  # 64 KiB of known bytes
SMALL_JSON = json.dumps({"id": 42, "name": "small", "tags": ["a", "b"], "ok": True}).encode()
SMALL_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(SMALL_JSON)).encode()),
]


async def read_body(receive: Any) -> tuple[int, str, int]:
    """Count and hash the request body without keeping it."""
    digest = hashlib.sha256()
    size = 0
    chunks = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body = message.get("body", b"")
        size += len(body)
        chunks += 1 if body else 0
        digest.update(body)
        if not message.get("more_body", False):
            break
    return size, digest.hexdigest(), chunks


async def respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def json_response(send: Any, data: Any, status: int = 200) -> None:
    body = json.dumps(data).encode()
    await respond(
        send,
        status,
        body,
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    )


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())

    if path == "/health":
        await json_response(send, {"ok": True})
    elif path == "/api/auth/convex/token":
        # An app with no signed-in user (the fuzz campaign's upstream).
        await json_response(send, {"code": "UNAUTHORIZED"}, 401)
    elif path == "/api/auth/get-session":
        # Better Auth answers 200 with null when nobody is signed in.
        await json_response(send, None)
    elif path == "/small":
        await respond(send, 200, SMALL_JSON, SMALL_HEADERS)
    elif path.startswith("/echo") or path == "/%":
        size, digest, chunks = await read_body(receive)
        await json_response(
            send,
            {
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query_string": scope["query_string"].decode("latin-1"),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
                ],
                "body_size": size,
                "body_sha256": digest,
                "body_chunks": chunks,
            },
        )
    elif path == "/download":
        size = int(query.get("size", ["0"])[0])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(size).encode()),
                ],
            }
        )
        sent = 0
        while sent < size:
            chunk = PATTERN[: min(len(PATTERN), size - sent)]
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": sent < size})
    elif path == "/sse":
        RELEASE.clear()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        # Nothing more until the test says so: a buffering proxy would hang here.
        await asyncio.wait_for(RELEASE.wait(), 20)
        await send({"type": "http.response.body", "body": b"data: second\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/events":
        # A long event stream: n small Server-Sent Events, each its own write.
        count = int(query.get("n", ["200"])[0])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        for i in range(count):
            event = b'data: {"n": %d}\n\n' % i
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path == "/release":
        RELEASE.set()
        await json_response(send, {"released": True})
    elif path == "/stream-forever":
        STATE["stream_started"] += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        disconnected = asyncio.create_task(receive_until_disconnect(receive))
        try:
            for i in range(400):  # at most 20 s
                if disconnected.done():
                    STATE["stream_disconnects"] += 1
                    return
                await send(
                    {
                        "type": "http.response.body",
                        "body": f"tick {i}\n".encode(),
                        "more_body": True,
                    }
                )
                await asyncio.sleep(0.05)
            STATE["stream_finished"] += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            disconnected.cancel()
    elif path == "/think":
        # Answers nothing for 10 s, and counts a client that goes away first.
        STATE["think_started"] += 1
        try:
            await asyncio.wait_for(receive_until_disconnect(receive), 10)
        except TimeoutError:
            await json_response(send, {"thought": True})
            return
        STATE["think_disconnects"] += 1
    elif path == "/state":
        await json_response(send, STATE)
    elif path == "/cookies":
        headers = [(b"content-type", b"text/plain")]
        for i in range(5):
            headers.append((b"set-cookie", f"c{i}=v{i}; Path=/; HttpOnly".encode()))
        headers.append((b"set-cookie", b"dup=1; Path=/a"))
        headers.append((b"set-cookie", b"dup=2; Path=/b; Expires=Wed, 21 Oct 2026 07:28:00 GMT"))
        await respond(send, 200, b"ok", headers)
    elif path == "/gzip":
        body = gzip.compress(b"compressed payload " * 100, mtime=0)
        await respond(
            send,
            200,
            body,
            [
                (b"content-type", b"text/plain"),
                (b"content-encoding", b"gzip"),
                (b"content-length", str(len(body)).encode()),
            ],
        )
    elif path == "/hop":
        await respond(
            send,
            200,
            b"hop",
            [
                (b"content-type", b"text/plain"),
                (b"connection", b"x-private-hop"),
                (b"x-private-hop", b"must not pass"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-authenticate", b"Basic"),
                (b"x-end-to-end", b"kept"),
            ],
        )
    elif path == "/redirect":
        host = dict(scope["headers"]).get(b"host", b"").decode()
        target = query.get("to", [f"http://{host}/landed?x=1"])[0]
        await respond(send, 302, b"", [(b"location", target.encode()), (b"content-length", b"0")])
    elif path == "/slow":
        await asyncio.sleep(float(query.get("delay", ["1"])[0]))
        await json_response(send, {"slow": True})
    elif path == "/status":
        await respond(send, int(query.get("code", ["200"])[0]), b"", [(b"content-length", b"0")])
    else:
        await json_response(send, {"error": "not_found", "path": path}, 404)


async def receive_until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def websocket(scope: Scope, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    if scope["path"] == "/ws-deny":
        await send({"type": "websocket.close", "code": 1008})
        return
    offered = scope.get("subprotocols") or []
    chosen = "mcp.v1" if "mcp.v1" in offered else None
    await send({"type": "websocket.accept", "subprotocol": chosen})
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    if scope["path"] == "/ws-headers":
        await send({"type": "websocket.send", "text": json.dumps(headers)})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "websocket.send", "text": json.dumps({"hello": headers.get("cookie")})})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "close-please":
            await send({"type": "websocket.close", "code": 4001})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": "echo:" + message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})
