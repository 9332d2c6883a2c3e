"""One send per turn of the event loop for each client connection.

uvicorn writes a response's status line and headers, and then each body
chunk, with a transport.write of its own, and uvloop sends each at once: two
send(2) calls for the smallest response, where nginx makes one writev. On
loopback a send costs the sender the receiver's TCP processing too, so the
second send was about a tenth of a proxied small request's CPU. This
transport holds what is written during one turn of the loop and hands it to
the real transport in one writelines (one writev) at the end of that turn:
the response of a request answered in one step leaves in one piece, and
nothing waits longer than the current callback (a Server-Sent Event is still
sent as soon as the proxy has it).
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps a connection's transport; every other call goes to the real one."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for data in chunks:
            self.write(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            if len(pending) == 1:
                self._transport.write(pending[0])
            else:
                self._transport.writelines(pending)

    def close(self) -> None:
        # What was written before close() is sent first, as a transport does.
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        pending = sum(len(d) for d in self._pending) if self._pending else 0
        return pending + self._transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
