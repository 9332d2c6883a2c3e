"""A pooled HTTP/1.1 client for the proxy's one job: send a request to the
upstream byte for byte and stream the answer back.

Why not a library: aiohttp's client costs about half of a small proxied
request's CPU here (py-spy under `wrk -c16`; README, "Performance"), spent on
what a proxy does not need (cookie jars, URL objects, redirects, header
multidicts, tracing); httpx's transport proxied about 300 req/s. This client
keeps only what a proxy needs and leaves the parsing to httptools (llhttp, the
parser Node uses), the same parser uvicorn already runs on the client side:
- one connection per request at a time, kept alive and reused when the
  response says so (RFC 9112 section 9.3), closed otherwise;
- request bodies streamed as they arrive (chunked unless the client sent a
  Content-Length), with write flow control;
- response bodies streamed with read flow control (the 256 MiB test: memory
  stays flat);
- 1xx answers skipped; HEAD, 204 and 304 without bodies (a HEAD response's
  connection is not reused: its Content-Length describes a body never sent);
- a request that finds a reused connection closed before any answer is sent
  again once on a new one when it is idempotent and bodiless (RFC 9110
  section 9.2.2); anything else is a clean UpstreamUnavailable.
WebSockets and the sidecar's own outbound fetches stay on aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Sequence

import httptools

HIGH_WATER = 1 << 20  # bytes buffered before reading from the upstream pauses
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class ConnectionFailed(Exception):
    """The connection broke; ``answered`` says whether any response byte came."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class H1Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self._write_ok = asyncio.Event()
        self._write_ok.set()
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head = self.loop.create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.more = asyncio.Event()
        self.complete = False
        self.keep_alive = False
        self.answered = False
        self.error: Exception | None = None
        self.paused = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionFailed(f"malformed upstream response: {exc}", answered=True))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.head.done() and exc is None and self._close_delimited():
            # RFC 9112 section 6.3: no length and not chunked, the body ends
            # with the connection.
            self.complete = True
            self.more.set()
        elif not self.complete:
            self._fail(
                ConnectionFailed(
                    "upstream closed the connection" + (f": {exc}" if exc else ""),
                    answered=self.answered,
                )
            )
        self._write_ok.set()

    def pause_writing(self) -> None:
        self._write_ok.clear()

    def resume_writing(self) -> None:
        self._write_ok.set()

    def _close_delimited(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # -- httptools callbacks -------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # an interim answer: wait for the final one
            self._interim = True
            return
        self._interim = False
        self.status = status
        # Asked now: llhttp forgets it once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self.more.set()
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if getattr(self, "_interim", False):
            self._interim = False
            return
        self.complete = True
        self.more.set()

    # -- the exchange ------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: nobody may be waiting any more
        self.more.set()

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionFailed("upstream closed the connection", answered=self.answered)
        self.transport.write(data)
        if not self._write_ok.is_set():
            await self._write_ok.wait()

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            if self.chunks:
                # Everything that has arrived, in one piece: fewer, larger
                # sends to the client (per-send cost dominates for large
                # bodies and event streams), and nothing waits for more.
                chunk = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
                self.chunks.clear()
                self.buffered = 0
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                yield chunk
                continue  # more may have come (and the end) while it was sent
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            self.more.clear()
            await self.more.wait()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class H1Pool:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        size: int,
        connect_timeout: float,
        idle_timeout: float = 15.0,
    ) -> None:
        self.host, self.port, self.ssl = host, port, ssl_context
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.idle: collections.deque[tuple[H1Connection, float]] = collections.deque()
        self.slots = asyncio.Semaphore(size)

    async def acquire(self) -> H1Connection:
        await self.slots.acquire()
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.idle:
            conn, since = self.idle.pop()
            if not conn.closed and now - since < self.idle_timeout:
                conn.reused = True
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: H1Connection(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except BaseException:
            self.slots.release()
            raise
        return conn

    def release(self, conn: H1Connection, reusable: bool) -> None:
        self.slots.release()
        if reusable and not conn.closed:
            conn._reset_exchange()
            self.idle.append((conn, asyncio.get_running_loop().time()))
        else:
            conn.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[0].close()


def request_head(
    method: str, target: str, headers: Sequence[tuple[str, str]], chunked: bool
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if chunked:
        lines.append("transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
