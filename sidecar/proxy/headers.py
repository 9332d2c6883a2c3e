"""Header rules of the proxy: hop-by-hop removal, X-Forwarded-*, Location.

All functions work on raw ASGI header lists (lowercase ``bytes`` names) so no
header is re-parsed or re-cased on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward,
# plus the older ones RFC 2616 listed (Trailer, Proxy-Authenticate,
# Proxy-Authorization: credentials meant for a proxy never travel further).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Set by the proxy itself from what it knows of the peer; inbound copies are
# dropped unless the peer is a trusted proxy.
FORWARDED = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"forwarded",
        b"x-real-ip",
    }
)

# Handled here (100-continue is answered by the server to the client), or
# rebuilt by the proxy, so never copied verbatim.
HANDLED = frozenset({b"host", b"expect", b"x-request-id"})


WS_SCHEMES = {"ws": "http", "wss": "https"}


def _spelled_as(name: bytes) -> bytes:
    """A header name as CGI and WSGI servers read it: they fold ``_`` into
    ``-`` (``X_Sidecar_User_Id`` becomes ``HTTP_X_SIDECAR_USER_ID``, the same
    key as ``X-Sidecar-User-Id``), so an identity header is dropped whatever
    its spelling. Names arrive lowercased."""
    return name.replace(b"_", b"-") if b"_" in name else name


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Field names listed in Connection (RFC 9110 section 7.6.1), lowercased."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def upstream_request_headers(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    peer: str | None,
    scheme: str,
    trusted_peer: bool,
    upstream_host: bytes,
    preserve_host: bool,
    request_id: str,
    drop_prefixes: tuple[bytes, ...] = (),
) -> list[tuple[str, str]]:
    """The headers to send upstream for one inbound request."""
    out: list[tuple[str, str]] = []
    connection: list[tuple[bytes, bytes]] = []
    inbound_host = b""
    chain: list[str] = []  # X-Forwarded-For from trusted proxies, oldest first
    proto = ""
    forwarded_host = ""
    for name, value in headers:
        if name == b"host":
            inbound_host = value
            continue
        if name in FORWARDED:
            if trusted_peer:
                text = value.decode("latin-1")
                if name == b"x-forwarded-for":
                    chain.append(text)
                elif name == b"x-forwarded-proto":
                    proto = proto or text
                elif name == b"x-forwarded-host":
                    forwarded_host = forwarded_host or text
                else:
                    out.append((name.decode("latin-1"), text))
            continue
        if name in HOP_BY_HOP or name in HANDLED:
            if name == b"connection":
                connection.append((name, value))
            continue
        if drop_prefixes and _spelled_as(name).startswith(drop_prefixes):
            continue
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    # Fields the client named in Connection are for this hop only (RFC 9110
    # section 7.6.1); looked for after the one pass, as most name none.
    if connection and (listed := connection_tokens(connection) - HOP_BY_HOP):
        names = {token.decode("latin-1") for token in listed}
        out = [(k, v) for k, v in out if k not in names or k.encode("latin-1") in FORWARDED]
    host = inbound_host if preserve_host and inbound_host else upstream_host
    out.append(("host", host.decode("latin-1")))
    if peer:
        chain.append(peer)
    if chain:
        out.append(("x-forwarded-for", ", ".join(chain)))
    # A WebSocket upgrade's scope says ws/wss; the header names the HTTP
    # scheme the request came over (what apps compare with "https").
    out.append(("x-forwarded-proto", proto or WS_SCHEMES.get(scheme, scheme)))
    forwarded_host = forwarded_host or inbound_host.decode("latin-1")
    if forwarded_host:
        out.append(("x-forwarded-host", forwarded_host))
    out.append(("x-request-id", request_id))
    return out


def client_response_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    upstream_origin: bytes,
    public_origin: bytes,
    upstream_cookie_domain: bytes | None = None,
) -> Headers:
    """Upstream response headers as sent to the client: hop-by-hop removed,
    every Set-Cookie kept in order, Location on the upstream origin rewritten.
    ``upstream_cookie_domain``: the upstream's own host name, when it differs
    from the public one; a cookie scoped to it would be refused by the browser
    on the public origin, so its Domain attribute is dropped (host-only)."""
    out: Headers = []
    connection: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname == b"x-request-id":
            if lname == b"connection":
                connection.append((lname, value))
            continue
        if lname == b"location":
            value = rewrite_location(value, upstream_origin, public_origin)
        elif lname == b"set-cookie" and upstream_cookie_domain:
            value = drop_cookie_domain(value, upstream_cookie_domain)
        out.append((lname, value))
    if connection and (listed := connection_tokens(connection) - HOP_BY_HOP):
        out = [(k, v) for k, v in out if k not in listed]
    return out


def upstream_cookie_domain(upstream_url: str, public_url: str) -> bytes | None:
    """The upstream's own host name when it differs from the public one: a
    cookie the app scopes to it (``Domain=<upstream host>``) would be refused
    by the browser on the public origin, so its Domain is dropped
    (:func:`drop_cookie_domain`); None when the two hosts are the same."""
    upstream_host = (urlsplit(upstream_url).hostname or "").encode("latin-1")
    public_host = (urlsplit(public_url).hostname or "").encode("latin-1")
    return upstream_host if upstream_host != public_host else None


def drop_cookie_domain(cookie: bytes, host: bytes) -> bytes:
    """RFC 6265 section 5.2.3: remove ``Domain=<host>`` (or ``.<host>``);
    every other attribute, and every other byte, stays as the app sent it."""
    parts = cookie.split(b";")
    kept = [parts[0]]
    for part in parts[1:]:
        name, _, value = part.strip().partition(b"=")
        if name.lower() == b"domain" and value.strip().lstrip(b".").lower() == host:
            continue
        kept.append(part)
    return b";".join(kept) if len(kept) != len(parts) else cookie


def rewrite_location(value: bytes, upstream_origin: bytes, public_origin: bytes) -> bytes:
    """Point an absolute Location at the upstream's own origin to the public URL."""
    n = len(upstream_origin)
    if value[:n].lower() == upstream_origin and (len(value) == n or value[n : n + 1] in b"/?#"):
        return public_origin + value[n:]
    return value
