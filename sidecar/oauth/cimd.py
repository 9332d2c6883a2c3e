"""Client ID Metadata Documents: a ``client_id`` that is an https URL names
a JSON document describing the client (MCP authorization, 2025-11-25, and the
CIMD drafts after it): ``client_id``, ``client_name`` and ``redirect_uris``
required; no dot segments, user information or fragment in the URL; no HTTP
redirects followed; ``application/json`` only.

The fetch is an outbound request chosen by a stranger, so it is guarded
against SSRF: https only, public addresses only (checked on the addresses the
connection actually uses, so DNS rebinding cannot slip past), no redirects, a
size limit and a timeout. ``cimd_allowed_hosts`` lifts the
https and address rules for named hosts (tests, development). Documents are
cached in the store per their Cache-Control, so replicas share them.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import asdict
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from sidecar.config import Settings
from sidecar.oauth.client_model import Client, client_from_metadata
from sidecar.oauth.errors import OAuthError
from sidecar.store import Store

log = structlog.get_logger("sidecar.oauth")

NS = "cimd"
MAX_BYTES = 16 * 1024
TIMEOUT = 5.0
DEFAULT_TTL, MIN_TTL, MAX_TTL = 300, 0, 86400
# RFC 3986 section 2: the characters a URI may hold, percent-encodings
# well-formed. Anything else (CR, LF, NUL, TAB, space, non-ASCII) is refused
# before the URL is parsed: urlsplit silently drops CR, LF and TAB, so a
# client_id checked after parsing could still carry them into a token claim
# and from there into a header line.
URI_TEXT = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


class MetadataDocumentError(Exception):
    """The document cannot be used; the message says why (shown in logs)."""


def is_public_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses any answer that is not a public address
    unless the host is explicitly allowed."""

    def __init__(self, allowed_hosts: tuple[str, ...]) -> None:
        self.allowed = set(allowed_hosts)
        self.inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if host.lower() in self.allowed:
            return results
        refused = [r["host"] for r in results if not is_public_address(r["host"])]
        if refused or not results:
            raise OSError(f"{host} resolves to a non-public address ({', '.join(refused)})")
        return results

    async def close(self) -> None:
        await self.inner.close()


def looks_like_metadata_url(client_id: str) -> bool:
    if URI_TEXT.fullmatch(client_id) is None:
        return False
    parts = urlsplit(client_id)
    return (
        parts.scheme in ("https", "http") and bool(parts.hostname) and parts.path not in ("", "/")
    )


def document_auth_method(document: dict[str, Any]) -> str:
    """How a document's client authenticates at the token endpoint.

    A document is public, so a shared secret in it would be no secret:
    ``client_secret_*`` is refused. A document listing
    ``token_endpoint_auth_methods_supported`` is taken at its strongest
    method we support (ChatGPT lists ``none`` and ``private_key_jwt`` and
    then authenticates with an assertion only)."""
    named = document.get("token_endpoint_auth_method") or "none"
    offered = document.get("token_endpoint_auth_methods_supported")
    methods = [named]
    if isinstance(offered, list):
        methods += [m for m in offered if isinstance(m, str)]
    has_keys = "jwks_uri" in document or "jwks" in document
    if "private_key_jwt" in methods and (has_keys or named == "private_key_jwt"):
        return "private_key_jwt"  # refused later if it has no keys
    if named != "none":
        raise MetadataDocumentError(
            f"a document cannot use {named}: a published document holds no secret"
        )
    return "none"


def cache_ttl(cache_control: str | None) -> int:
    if not cache_control:
        return DEFAULT_TTL
    directives = cache_control.lower()
    if "no-store" in directives or "no-cache" in directives:
        return 0
    match = re.search(r"max-age\s*=\s*(\d+)", directives)
    if not match:
        return DEFAULT_TTL
    return max(MIN_TTL, min(MAX_TTL, int(match.group(1))))


class MetadataDocuments:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.allowed = settings.cimd_allowed_hosts
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=GuardedResolver(self.allowed), limit=32),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str) -> None:
        if URI_TEXT.fullmatch(url) is None:
            raise MetadataDocumentError(
                "client_id URL may hold only RFC 3986 characters (no controls, spaces or non-ASCII)"
            )
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.username or parts.password or "@" in parts.netloc or "#" in url:
            raise MetadataDocumentError("client_id URL must not carry credentials or a fragment")
        segments = unquote(parts.path).split("/")
        if "." in segments or ".." in segments:
            raise MetadataDocumentError("client_id URL must not have dot segments")
        if host in self.allowed:
            return
        if parts.scheme != "https":
            raise MetadataDocumentError("client_id URL must be https")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return  # a name: the resolver checks its addresses
        if not is_public_address(str(literal)):
            raise MetadataDocumentError(f"{host} is not a public address")

    async def client(self, client_id: str) -> Client | None:
        """The client a metadata document describes, or None (logged why)."""
        cached = await self.store.get(NS, client_id)
        if cached is not None:
            return Client(**cached)
        try:
            document, ttl = await self.fetch(client_id)
            client = self.validate(client_id, document)
        except (MetadataDocumentError, OAuthError) as exc:
            reason = getattr(exc, "description", None) or str(exc)
            log.warning("client metadata document refused", client_id=client_id, reason=reason)
            return None
        if ttl:
            await self.store.put(NS, client_id, asdict(client), ttl=ttl)
        return client

    async def fetch(
        self, url: str, types: tuple[str, ...] = ("application/json",)
    ) -> tuple[Any, int]:
        if self._session is None:
            raise MetadataDocumentError("metadata documents are not enabled")
        self.check_url(url)
        try:
            async with self._session.get(
                URL(url, encoded=True),
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if 300 <= response.status < 400:
                    # Later CIMD drafts: the document is at its own URL or nowhere.
                    raise MetadataDocumentError("the document URL redirects; redirects are refused")
                if response.status != 200:
                    raise MetadataDocumentError(f"document answered {response.status}")
                if response.content_type not in types:
                    raise MetadataDocumentError(
                        f"document is {response.content_type or 'untyped'}, not application/json"
                    )
                body = bytearray()
                async for chunk in response.content.iter_chunked(4096):
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise MetadataDocumentError(f"document larger than {MAX_BYTES} bytes")
                ttl = cache_ttl(response.headers.get("Cache-Control"))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise MetadataDocumentError(f"cannot fetch: {exc}") from None
        try:
            return json.loads(body), ttl
        except (ValueError, UnicodeDecodeError):
            raise MetadataDocumentError("document is not JSON") from None

    def validate(self, url: str, document: Any) -> Client:
        if not isinstance(document, dict):
            raise MetadataDocumentError("document is not a JSON object")
        if document.get("client_id") != url:
            raise MetadataDocumentError("document client_id differs from its URL")
        name = document.get("client_name")
        if not isinstance(name, str) or not name.strip():
            raise MetadataDocumentError("document has no client_name")
        method = document_auth_method(document)
        metadata = {k: v for k, v in document.items() if k != "client_id"}
        metadata["token_endpoint_auth_method"] = method
        metadata.setdefault("grant_types", ["authorization_code", "refresh_token"])
        client, _ = client_from_metadata(
            metadata, self.settings.scopes, source="cimd", client_id=url
        )
        return client
