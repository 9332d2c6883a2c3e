"""The one place that talks HTTP to the upstream app.

The upstream client is the proxy's hot spot (httpx's own
transport reached about 300 req/s as a proxy client here, aiohttp's about
2,700), so it sits behind this small interface: HTTP requests go through the
pooled HTTP/1.1 client of :mod:`sidecar.proxy.h1` (README, "Performance":
about 50 us a request less than aiohttp's client), WebSockets through
aiohttp's. Foreign exceptions are translated here, at one boundary, into
:class:`UpstreamUnavailable` (502) and :class:`UpstreamTimeout` (504).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from sidecar.proxy.h1 import (
    DONE,
    IDEMPOTENT,
    MAX_HEAD_BYTES,
    ConnectionFailed,
    H1Connection,
    H1Pool,
    UnsafeHead,
    request_head,
)


class UpstreamError(Exception):
    """The upstream could not give a response."""

    status = 502
    code = "bad_gateway"


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "bad_gateway"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "gateway_timeout"


class UpstreamResponse:
    """One upstream answer: its status and headers at once, its body as a
    stream; released (its connection back to the pool) or closed after."""

    def __init__(
        self,
        status: int,
        raw_headers: Sequence[tuple[bytes, bytes]],
        conn: H1Connection,
        pool: H1Pool,
        method: str,
    ) -> None:
        self.status = status
        self.raw_headers = raw_headers
        self._conn = conn
        self._pool = pool
        self._method = method
        self._done = False

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive, never buffered whole."""
        if self._method == "HEAD":
            return
        try:
            async for chunk in self._conn.body():
                yield chunk
        except ConnectionFailed as exc:
            raise UpstreamUnavailable(f"upstream broke off the response: {exc}") from exc

    async def read(self, limit: int = 1 << 20) -> bytes:
        """The whole body, for small documents the sidecar itself reads."""
        body = bytearray()
        async for chunk in self.iter_body():
            body += chunk
            if len(body) > limit:
                raise UpstreamUnavailable(f"upstream response larger than {limit} bytes")
        return bytes(body)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.raw_headers:
            if key.lower() == name:
                return value
        return None

    @property
    def body_complete(self) -> bool:
        """Every body byte has been handed out by iter_body."""
        return self._conn.complete and not self._conn.chunks

    def set_cookies(self) -> list[bytes]:
        return [v for k, v in self.raw_headers if k.lower() == b"set-cookie"]

    def close(self) -> None:
        """Drop the connection: used when the client went away mid-body, so
        the upstream sees the disconnect too."""
        if not self._done:
            self._done = True
            self._pool.release(self._conn, reusable=False)

    def release(self) -> None:
        if not self._done:
            self._done = True
            conn = self._conn
            # A HEAD answer's Content-Length describes a body never sent: its
            # connection's framing is unknown, never reused.
            reusable = conn.state is DONE and self._method != "HEAD" and conn.keep_alive
            self._pool.release(conn, reusable=reusable)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.release()
        else:
            self.close()


class UpstreamClient:
    """One shared connection pool to the upstream, opened in the lifespan.
    ``max_head_bytes`` caps a response head: one larger is a 502 and its
    connection is closed."""

    def __init__(
        self,
        base_url: str,
        *,
        pool_size: int = 512,
        connect_timeout: float = 5.0,
        response_timeout: float = 60.0,
        ca_file: str | None = None,
        max_head_bytes: int = MAX_HEAD_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # An https upstream (Better Auth on <deployment>.convex.site) is
        # verified against the system store, or a private CA's file; the
        # certificate and SNI are those of the upstream's own host name.
        self.ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.max_head_bytes = max_head_bytes
        self._session: aiohttp.ClientSession | None = None
        self._pool: H1Pool | None = None

    @property
    def pool(self) -> H1Pool:
        if self._pool is None:
            raise RuntimeError("UpstreamClient used before open()")
        return self._pool

    async def open(self) -> None:
        parts = urlsplit(self.base_url)
        tls = parts.scheme == "https"
        context = None
        if tls:
            context = (
                self.ssl if isinstance(self.ssl, ssl.SSLContext) else ssl.create_default_context()
            )
        self._pool = H1Pool(
            parts.hostname or "127.0.0.1",
            parts.port or (443 if tls else 80),
            ssl_context=context,
            size=self.pool_size,
            connect_timeout=self.connect_timeout,
            max_head_bytes=self.max_head_bytes,
        )
        # WebSockets still go through aiohttp's client.
        connector = aiohttp.TCPConnector(
            limit=self.pool_size,
            limit_per_host=self.pool_size,
            # A proxy must not keep a DNS answer forever, nor ask per request.
            ttl_dns_cache=10,
            keepalive_timeout=15,
            ssl=self.ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # A proxy must never keep cookies: one user's Set-Cookie would be
            # replayed on another user's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            read_bufsize=1 << 20,
            # Send only the headers the client sent.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient used before open()")
        return self._session

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: AsyncIterator[bytes] | None = None,
    ) -> UpstreamResponse:
        """Send one request; ``target`` is the raw path and query, sent byte
        for byte (no re-quoting). Returns once the response headers arrived;
        the caller bounds that wait (see ``ProxyApp``).
        """
        pool = self.pool
        chunked = body is not None and not any(k == "content-length" for k, _ in headers)
        try:
            head = request_head(method, target, headers, chunked)
        except UnsafeHead as exc:
            # Never written: the value would end its line and begin another.
            raise UpstreamUnavailable(f"request refused before sending: {exc}") from exc
        for attempt in (1, 2):
            try:
                conn = await pool.acquire()
            except TimeoutError as exc:
                raise UpstreamTimeout("upstream did not accept a connection in time") from exc
            except OSError as exc:
                raise UpstreamUnavailable(f"cannot connect to upstream: {exc}") from exc
            try:
                await conn.write(head)
                if body is not None:
                    async for chunk in body:
                        if chunked:
                            await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        else:
                            await conn.write(chunk)
                    if chunked:
                        await conn.write(b"0\r\n\r\n")
                await conn.head
            except ConnectionFailed as exc:
                pool.release(conn, reusable=False)
                # A kept-alive connection the upstream had closed: an
                # idempotent request with no body is sent again, once, on a
                # new connection (RFC 9110 section 9.2.2); a POST never is.
                stale = attempt == 1 and conn.reused and not exc.answered
                if stale and body is None and method in IDEMPOTENT:
                    continue
                raise UpstreamUnavailable(f"upstream connection failed: {exc}") from exc
            except BaseException:
                pool.release(conn, reusable=False)
                raise
            return UpstreamResponse(conn.status, conn.headers, conn, pool, method)
        raise AssertionError("unreachable")  # pragma: no cover

    async def websocket(
        self, target: str, headers: Sequence[tuple[str, str]], protocols: Sequence[str]
    ) -> aiohttp.ClientWebSocketResponse:
        url = URL(self.base_url.replace("http", "ws", 1) + target, encoded=True)  # https -> wss
        return await self.session.ws_connect(
            url,
            headers=headers,
            protocols=tuple(protocols),
            autoclose=False,
            autoping=False,
            max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.connect_timeout),
        )
