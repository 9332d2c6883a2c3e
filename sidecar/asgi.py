"""The scope contract, and small raw-ASGI helpers shared by the parts that
answer without Starlette (the proxy, the gateway, the size limits).

The sidecar's parts hand each other three things in the ASGI scope, each
under one key named here and nowhere else:

- :data:`CONTEXT`: the request's ``RequestContext`` (request id, route class,
  timings), put there by the access middleware;
- :data:`FORWARDING`: a :class:`Forwarding`, put there by the gateway for a
  request whose token it verified, read by the proxy (HTTP and WebSocket);
- :data:`ON_DISCONNECT`: the server protocol's disconnect callback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import Send

# The request's RequestContext (sidecar.observability.context).
CONTEXT = "sidecar"

# What the gateway verified and the proxy forwards: a Forwarding. Absent on a
# request no gateway saw (the app's own paths): nothing is added then.
FORWARDING = "sidecar.forwarding"

# The server protocol's disconnect callback (sidecar/runtime/protocol.py): an
# app may put a callable in the scope under this key, present (None) in every
# scope that protocol makes; it is called when the connection is lost before
# the response is complete.
ON_DISCONNECT = "sidecar.on_disconnect"

DisconnectCallback = Callable[[], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarding:
    """How the proxy forwards a request the gateway verified.

    ``identity``: the headers that carry the person to the app (lower-case
    names; inbound look-alikes are dropped by the proxy); ``drop_authorization``:
    the client's own token stays at the gateway (MCP authorization: no token
    passthrough); ``cors``: the headers that let the page that sent it read
    the answer, added where the app set none of its own."""

    identity: tuple[tuple[str, str], ...]
    drop_authorization: bool
    cors: tuple[tuple[bytes, bytes], ...]


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
