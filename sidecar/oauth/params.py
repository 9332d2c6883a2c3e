"""Request parameters, with RFC 6749 section 3.1/3.2's rule that a parameter
may not appear more than once."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from starlette.requests import Request

from sidecar.oauth.errors import InvalidRequest, PayloadTooLarge, RequestTimeout

MAX_FORM_BYTES = 64 * 1024
MULTI_VALUED = frozenset({"resource"})  # RFC 8707 allows several


def parse_params(raw: str) -> dict[str, str]:
    """Single-valued parameters; a repeat is invalid_request. Repeated
    ``resource`` values are joined with spaces for the caller to judge."""
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("parameters are not valid UTF-8") from None
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise InvalidRequest("parameters must not contain NUL")
        if name in params:
            if name in MULTI_VALUED:
                params[name] += " " + value
                continue
            raise InvalidRequest(f"parameter {name} repeated")
        params[name] = value
    return params


def query_params(request: Request) -> dict[str, str]:
    return parse_params(request.scope.get("query_string", b"").decode("latin-1"))


async def read_body(request: Request, max_bytes: int, seconds: float) -> bytes:
    """The whole body, refused once it passes ``max_bytes`` (413) or takes
    longer than ``seconds`` to arrive (408): a slow or huge upload
    cannot hold a worker or memory."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body larger than {max_bytes} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise PayloadTooLarge(f"request body larger than {max_bytes} bytes")
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    return bytes(body)


async def form_params(
    request: Request, max_bytes: int = MAX_FORM_BYTES, seconds: float = 10.0
) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (RFC 6749 section 4.1.3)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    body = await read_body(request, max_bytes, seconds)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not valid UTF-8") from None
    return parse_params(text)
