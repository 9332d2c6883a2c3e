"""The one place that talks HTTP to the upstream app.

The upstream client is the proxy's hot spot (REFERENCES.md: httpx's own
transport reached about 300 req/s as a proxy client here, aiohttp's about
2,700), so it sits behind this small interface and is aiohttp underneath.
Foreign exceptions are translated here, at one boundary, into
:class:`UpstreamUnavailable` (502) and :class:`UpstreamTimeout` (504).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from yarl import URL


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


@dataclass
class UpstreamResponse:
    status: int
    raw_headers: Sequence[tuple[bytes, bytes]]
    _response: aiohttp.ClientResponse

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive, never buffered whole."""
        try:
            # iter_any hands over everything buffered so far in one piece:
            # fewer, larger ASGI sends than iter_chunks (measured with
            # `make bench`; per-send overhead dominates for large bodies).
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
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

    def set_cookies(self) -> list[bytes]:
        return [v for k, v in self.raw_headers if k.lower() == b"set-cookie"]

    def close(self) -> None:
        """Drop the connection: used when the client went away mid-body, so
        the upstream sees the disconnect too."""
        self._response.close()

    def release(self) -> None:
        self._response.release()

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
    """One shared connection pool to the upstream, opened in the lifespan."""

    def __init__(
        self,
        base_url: str,
        *,
        pool_size: int = 512,
        connect_timeout: float = 5.0,
        response_timeout: float = 60.0,
        ca_file: str | None = None,
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
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
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
        url = URL(self.base_url + target, encoded=True)
        try:
            response = await self.session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                # aiohttp retries an idempotent request once when a kept-alive
                # connection turns out stale (RFC 9112 section 9.3.1); POSTs
                # are never retried.
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream did not answer in time") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(f"cannot connect to upstream: {exc.os_error}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"upstream connection failed: {exc!r}") from exc
        return UpstreamResponse(response.status, response.raw_headers, response)

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
