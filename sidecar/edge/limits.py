"""Request size limits on the sidecar's own and guarded routes: an oversized
query string answers 414, oversized headers 431 (RFC 6585 section 5), before
any handler runs. The app's own routes are passed through as they come."""

from __future__ import annotations

from starlette.types import Scope, Send

from sidecar.asgi import send_json


class SizeLimits:
    def __init__(self, max_query_bytes: int, max_header_bytes: int) -> None:
        self.max_query = max_query_bytes
        self.max_headers = max_header_bytes

    async def refuse(self, scope: Scope, send: Send, *, query: bool) -> bool:
        """Answer and return True when the request is over a limit."""
        if scope["type"] != "http":
            return False
        if query and len(scope.get("query_string", b"")) > self.max_query:
            await _answer(send, 414, f"query string longer than {self.max_query} bytes")
            return True
        size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > self.max_headers:
            await _answer(send, 431, f"request headers larger than {self.max_headers} bytes")
            return True
        return False


async def _answer(send: Send, status: int, description: str) -> None:
    await send_json(
        send,
        status,
        {"error": "invalid_request", "error_description": description},
        [(b"connection", b"close")],
    )
