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
- exactly one answer per request: a connection goes back to the pool only
  when its answer ended exactly at a message boundary; a byte that comes
  while it is idle or past the answer's end, a 101 nobody asked for, a parse
  error or a head over ``max_head_bytes`` closes it (the request gets its own
  answer or an error, never another's);
- request heads never carry CR, LF or NUL from a value (RFC 9110 section 5.5);
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
import enum
import re
import ssl
from collections.abc import AsyncIterator, Sequence

import httptools
import structlog

HIGH_WATER = 1 << 20  # bytes buffered before reading from the upstream pauses
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
MAX_HEAD_BYTES = 16384  # a response head larger than this is refused

log = structlog.get_logger("sidecar.proxy")


class State(enum.Enum):
    """Where a connection is in its life; reuse is a state, entered only at a
    clean message boundary."""

    IDLE = "idle"  # no request on it (new, or in the pool): only end of stream may come
    ACTIVE = "active"  # a request sent or being sent; its final answer not complete
    DONE = "done"  # the final answer ended exactly at a message boundary
    CLOSED = "closed"  # closed, or refused: never used again


# The states as plain names: an Enum member looked up through its class costs
# about 45 ns a time on Python 3.11, and the hot path asks about ten times.
IDLE, ACTIVE, DONE, CLOSED = State.IDLE, State.ACTIVE, State.DONE, State.CLOSED


class ConnectionFailed(Exception):
    """The connection broke; ``answered`` says whether any response byte came."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class UnsafeHead(ValueError):
    """A request head would carry a value that is not a field value."""


class _Refused(Exception):
    """Raised from a parser callback to stop parsing what was refused."""


class H1Connection(asyncio.Protocol):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_head_bytes: int = MAX_HEAD_BYTES
    ) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.state = IDLE
        self.reused = False
        self.max_head_bytes = max_head_bytes
        self._write_ok = asyncio.Event()
        self._write_ok.set()
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head = self.loop.create_future()
        self.headed = False  # the final answer's head has come
        self.head_room = self.max_head_bytes  # bytes that may still come before it
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.more = asyncio.Event()
        self.complete = False
        self.keep_alive = False
        self.answered = False
        self.error: Exception | None = None
        self.paused = False
        self._interim = False

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    def begin(self) -> None:
        """A request is about to be written: its answer is the next message."""
        if self.state is IDLE:
            self.state = ACTIVE

    def rest(self) -> None:
        """Back to the pool, after an answer that ended at a message boundary."""
        self._reset_exchange()
        self.state = IDLE

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.state is not ACTIVE:
            # Response queue poisoning: a byte that comes while no request
            # waits (idle in the pool, or after the final answer's end)
            # answers no request; kept, it would become the next request's
            # answer (RFC 9112 section 9.3). The connection is closed.
            if self.state is not CLOSED:
                self._stray()
            return
        self.answered = True
        if not self.headed:
            self.head_room -= len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A callback's refusal has already been dealt with.
            if self.state is ACTIVE:
                self._refuse(f"malformed upstream response: {exc}")
            elif self.state is DONE:
                self._stray()  # e.g. bytes after a `Connection: close` answer
        except httptools.HttpParserUpgrade:
            # llhttp's own stop after a 101; refused in on_headers_complete.
            self._refuse("upstream switched protocols unasked")
        else:
            if not self.headed and self.head_room < 0 and self.state is ACTIVE:
                self._refuse(f"upstream response head larger than {self.max_head_bytes} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        was, self.state = self.state, CLOSED
        if was is ACTIVE and self.error is None:
            if self.headed and exc is None and self._close_delimited():
                # RFC 9112 section 6.3: no length and not chunked, the body
                # ends with the connection.
                self.complete = True
                self.more.set()
            else:
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

    def on_message_begin(self) -> None:
        if self.state is DONE:
            # A message past the final answer's end (a body longer than its
            # Content-Length, a 204 or 304 with a body): its bytes answer no
            # request (RFC 9112 section 6.3). The answer so far stands.
            self._stray()
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                # RFC 9110 section 15.2.2: 101 answers only a request that
                # asked for an upgrade, and this client never asks (WebSockets
                # go another way); what follows is not HTTP at all.
                self._refuse("upstream answered 101 to a request that asked for no upgrade")
                raise _Refused
            self.headers = []  # an interim answer: wait for the final one
            self._interim = True
            return
        if self.head_room < 0 and self._head_size() > self.max_head_bytes:
            # The whole head came in one read larger than the cap: measured.
            self._refuse(f"upstream response head larger than {self.max_head_bytes} bytes")
            raise _Refused
        self.status = status
        self.headed = True
        # Asked now: llhttp forgets it once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(None)

    def _head_size(self) -> int:
        return sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self.more.set()
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        if self.state is ACTIVE:
            self.state = DONE
        self.more.set()

    # -- the exchange ------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: nobody may be waiting any more
        self.more.set()

    def _refuse(self, reason: str) -> None:
        """The answer cannot be trusted: it fails and the connection closes."""
        self._fail(ConnectionFailed(reason, answered=True))
        self.close()

    def _stray(self) -> None:
        log.warning("upstream sent bytes that answer no request; connection closed")
        self.close()

    async def write(self, data: bytes) -> None:
        if self.state is CLOSED or self.transport is None:
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
        self.state = CLOSED
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
        max_head_bytes: int = MAX_HEAD_BYTES,
    ) -> None:
        self.host, self.port, self.ssl = host, port, ssl_context
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_head_bytes = max_head_bytes
        self.idle: collections.deque[tuple[H1Connection, float]] = collections.deque()
        self.slots = asyncio.Semaphore(size)

    async def acquire(self) -> H1Connection:
        """A connection for one request, in state ACTIVE."""
        await self.slots.acquire()
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.idle:
            conn, since = self.idle.pop()
            # Closed while idle too when any byte came (see data_received).
            if conn.state is IDLE and now - since < self.idle_timeout:
                conn.reused = True
                conn.begin()
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: H1Connection(loop, self.max_head_bytes),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except BaseException:
            self.slots.release()
            raise
        conn.begin()
        return conn

    def release(self, conn: H1Connection, reusable: bool) -> None:
        self.slots.release()
        # RFC 9112 section 9.3: reused only when its answer ended exactly at
        # a message boundary and nothing came after.
        if reusable and conn.state is DONE:
            conn.rest()
            self.idle.append((conn, asyncio.get_running_loop().time()))
        else:
            conn.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[0].close()


def request_head(
    method: str, target: str, headers: Sequence[tuple[str, str]], chunked: bool
) -> bytes:
    """The request line and headers, refusing (:class:`UnsafeHead`) any value
    that would write a line nobody meant."""
    line = f"{method} {target} HTTP/1.1"
    lines = [line]
    lines += [f"{name}: {value}" for name, value in headers]
    # RFC 9110 section 5.5: a field value never holds CR, LF or NUL; with one
    # a header line ends early and the rest reads as more headers, or as a
    # second request. Nor may the method or target hold a space (RFC 9112
    # section 3). Every line at once, before any separator is added: three
    # memchr scans, cheaper than a search per value.
    joined = "".join(lines)
    if "\n" in joined or "\r" in joined or "\x00" in joined or line.count(" ") != 2:
        raise UnsafeHead(_unsafe_parts(method, target, headers))
    if chunked:
        lines.append("transfer-encoding: chunked")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise UnsafeHead("request head with a character outside ISO-8859-1") from None


_UNSAFE = re.compile(r"[\r\n\x00]")


def _unsafe_parts(method: str, target: str, headers: Sequence[tuple[str, str]]) -> str:
    """What was refused, by name only: a value may be a secret."""
    parts = [name for name, value in headers if _UNSAFE.search(name + value)]
    if _UNSAFE.search(method + target) or f"{method} {target}".count(" ") != 1:
        parts.insert(0, "request line")
    return f"CR, LF, NUL or a space out of place in {', '.join(map(repr, parts))}"[:200]
