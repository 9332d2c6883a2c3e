"""The sidecar's HTTP/1.1 server protocol: uvicorn's httptools protocol with
three additions.

- **A request-header deadline.** uvicorn closes idle kept-alive connections,
  but it waits forever for the first byte of a new connection and for the
  rest of a request's headers, so a client that sends its headers slowly
  (slowloris) holds a connection as long as it likes. A connection whose
  request headers have not all arrived ``header_timeout`` seconds after the
  connection opened, or after the read in which the request began, is
  closed.
- **One send per turn of the event loop** (:mod:`sidecar.runtime.coalesce`): a
  small response leaves in one writev, as nginx sends it, not two sends.
- **A disconnect callback.** ASGI tells an app that its client went away only
  through ``receive()``, so an app that must stop work at once (the proxy
  cancels its upstream request) needs a task parked on ``receive()`` for
  every request. Here the app may put a callable in the scope under
  :data:`ON_DISCONNECT`; it is called when the connection is lost before the
  response is complete. The key is present (``None``) in every scope this
  protocol makes, which is how the app knows it may rely on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sidecar.asgi import ON_DISCONNECT, DisconnectCallback
from sidecar.runtime.coalesce import CoalescingTransport


class MalformedRequest(Exception):
    """A request the sidecar refuses to pass on: a 400, then close."""


def ambiguous_request(version: str, headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request head is refused, or None.

    - A request line without an HTTP version (``GET /x``, HTTP/0.9) has no
      header section by definition; llhttp parses headers after it anyway, and
      forwarding it as HTTP/1.1 would make the upstream read what this server
      did not.
    - RFC 9112 section 3.2: a request with more than one Host, or an HTTP/1.1
      request with none, is answered 400: the upstream and the sidecar could
      each pick another Host.
    """
    if version == "0.9":
        return "a request line without an HTTP version"
    hosts = 0
    for name, _ in headers:
        if name == b"host":
            hosts += 1
    if hosts > 1:
        return "more than one Host header"
    if hosts == 0 and version == "1.1":
        return "an HTTP/1.1 request without Host"
    return None


class SidecarProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._in_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            callback: DisconnectCallback | None = cycle.scope.get(ON_DISCONNECT)  # type: ignore[assignment]
            if callback is not None:
                callback()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Armed only for a request whose headers did not all come in this
        # read: most arrive whole, and a timer set and cancelled for each of
        # them cost more than a µs a request.
        if self._in_headers and self._header_deadline is None:
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[ON_DISCONNECT] = None  # type: ignore[literal-required]
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        refusal = ambiguous_request(self.parser.get_http_version(), self.headers)
        if refusal is not None:
            # Raised inside the parser's callback, this surfaces from
            # feed_data as an HttpParserError: uvicorn answers 400 and closes
            # the connection, and nothing reaches the app or the upstream.
            raise MalformedRequest(refusal)
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def sidecar_protocol(header_timeout: float) -> type[SidecarProtocol]:
    return type("SidecarProtocol", (SidecarProtocol,), {"header_timeout": header_timeout})
