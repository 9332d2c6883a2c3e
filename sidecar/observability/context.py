"""Per-request context: the request id, the route class and timings.

The access middleware puts one :class:`RequestContext` in the ASGI scope under
:data:`sidecar.asgi.CONTEXT`; the dispatcher decides its route class, the
proxy fills in its timings.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sidecar.asgi import CONTEXT

# An inbound X-Request-Id is kept only when it is short and plain, so it can
# never smuggle anything into a log line or an upstream header.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{8,128}")


@dataclass(slots=True)
class RequestContext:
    request_id: str
    # The access log's route class: health, oauth, gateway or proxy.
    route: str
    upstream_ms: float | None = None


# The request id of the request being served, for every log line written
# while serving it (sidecar.observability.logging adds it). One context
# variable set once a request: structlog's bind/unbind and the merge of all
# its bound variables cost about 4 µs of each proxied request (`make bench`).
CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("sidecar_request_id", default=None)


def new_request_id() -> str:
    return secrets.token_hex(12)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            if _SAFE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


def context_of(scope: dict[str, Any] | Any) -> RequestContext:
    ctx = scope.get(CONTEXT)
    if ctx is None:  # called outside the access middleware (unit tests)
        ctx = RequestContext(request_id=new_request_id(), route="unknown")
        scope[CONTEXT] = ctx
    return ctx
