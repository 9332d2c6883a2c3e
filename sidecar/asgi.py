"""Small raw-ASGI helpers shared by the parts that answer without Starlette
(the proxy, the gateway, the size limits)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import Send

# The server protocol's disconnect callback (sidecar/runtime/protocol.py): an
# app may put a callable in the scope under this key, present (None) in every
# scope that protocol makes; it is called when the connection is lost before
# the response is complete.
ON_DISCONNECT = "sidecar.on_disconnect"

DisconnectCallback = Callable[[], None]


async def send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """A complete JSON response that is never cached."""
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
