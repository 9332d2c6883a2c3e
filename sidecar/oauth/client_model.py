"""What a client is: its registration metadata (RFC 7591) and the rules it
must meet, its redirect URIs (RFC 9700 section 4.1, RFC 8252) and the keys
of a ``private_key_jwt`` client (RFC 7523). Pure: no store, no network."""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt

from sidecar.oauth.errors import InvalidClientMetadata, InvalidRedirectUri
from sidecar.oauth.hashing import digest
from sidecar.urls import is_loopback

AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")
SECRET_METHODS = ("client_secret_basic", "client_secret_post")
GRANT_TYPES = ("authorization_code", "refresh_token")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# Schemes that must never be a redirect target (RFC 9700 section 4.1.1 and
# the CVE classes of open redirects through script URLs).
FORBIDDEN_SCHEMES = ("javascript", "data", "vbscript", "file", "about", "blob")
MAX_REDIRECT_URIS = 20
MAX_CLIENT_ID = 2000
# RFC 6749 appendix A.1 allows VSCHAR (%x20-7E) in a client_id; the space is
# refused too, since a client_id travels in headers (the gateway's
# X-Sidecar-Client-Id) and log lines: no control character, space or
# non-ASCII octet may reach a header line.
CLIENT_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_CLIENT_ID}}}")
# A client_name is shown on pages (escaped) and written to logs: one line of
# printable text, no control characters (C0, DEL, C1).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The client assertion algorithms accepted (RFC 7523): asymmetric only.
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


def is_valid_client_id(client_id: str) -> bool:
    return CLIENT_ID.fullmatch(client_id) is not None


@dataclass
class Client:
    client_id: str
    redirect_uris: list[str]
    token_endpoint_auth_method: str = "none"
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code"])
    response_types: list[str] = field(default_factory=lambda: ["code"])
    client_name: str | None = None
    client_uri: str | None = None
    scope: str | None = None  # None: any supported scope
    application_type: str = "web"
    client_secret_hash: str | None = None
    client_id_issued_at: int = 0
    source: str = "dcr"  # dcr, cli or cimd
    in_use: bool = False  # a dcr client that completed an authorization is kept
    token_exchange: bool = False  # may exchange access tokens for Convex tokens (RFC 8693)
    # private_key_jwt (RFC 7523 section 2.2): where the client's public keys are.
    jwks_uri: str | None = None
    jwks: dict[str, Any] | None = None
    token_endpoint_auth_signing_alg: str | None = None

    @property
    def is_public(self) -> bool:
        return self.token_endpoint_auth_method == "none"

    @property
    def pins_scopes(self) -> bool:
        """An operator's pre-registered client with a scope list is held to
        it; a self-registered one may step up beyond what it registered."""
        return self.source == "cli" and self.scope is not None

    def allowed_scopes(self, supported: tuple[str, ...]) -> set[str]:
        if self.scope is None:
            return set(supported)
        return set(self.scope.split()) & set(supported)

    def check_secret(self, secret: str) -> bool:
        if not self.client_secret_hash:
            return False
        return hmac.compare_digest(self.client_secret_hash, hash_secret(secret))

    def public_metadata(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("client_secret_hash")
        data.pop("source")
        data.pop("in_use")
        data.pop("token_exchange")
        if data["scope"] is None:
            data.pop("scope")
        return {k: v for k, v in data.items() if v is not None}


def hash_secret(secret: str) -> str:
    # Client secrets are 256 random bits: a fast hash is enough (no dictionary).
    return digest(secret)


def validate_redirect_uri(uri: Any) -> str:
    """RFC 9700 section 4.1 and RFC 8252: absolute, no fragment, no wildcard;
    https, or http on a loopback address, or a private-use scheme of a native app."""
    if not isinstance(uri, str) or not uri or len(uri) > 2000:
        raise InvalidRedirectUri("each redirect URI must be a non-empty string")
    if any(ch in uri for ch in "\r\n\t \x00") or "*" in uri:
        raise InvalidRedirectUri(f"redirect URI {uri!r} has a wildcard or whitespace")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidRedirectUri(f"redirect URI {uri!r} must be absolute")
    if "#" in uri:
        raise InvalidRedirectUri(f"redirect URI {uri!r} must not have a fragment")
    if scheme in FORBIDDEN_SCHEMES:
        raise InvalidRedirectUri(f"redirect URI scheme {scheme}: is not allowed")
    if parts.username or parts.password or "@" in parts.netloc:
        raise InvalidRedirectUri(f"redirect URI {uri!r} must not carry user information")
    if scheme == "https":
        if not parts.hostname:
            raise InvalidRedirectUri(f"redirect URI {uri!r} has no host")
    elif scheme == "http":
        if not is_loopback(parts.hostname):
            raise InvalidRedirectUri(
                f"redirect URI {uri!r}: plain http is allowed only on a loopback address"
            )
    elif "." not in scheme and scheme not in ("cursor", "vscode", "claude", "windsurf"):
        # RFC 8252 section 7.1: private-use schemes are reverse domain names;
        # a few well-known MCP clients use bare names.
        raise InvalidRedirectUri(f"redirect URI scheme {scheme}: is not a private-use scheme")
    if ".." in unquote(parts.path).split("/") or ";" in parts.path:
        raise InvalidRedirectUri(f"redirect URI {uri!r} has a dot-segment or path parameter")
    return uri


def redirect_uri_matches(registered: list[str], requested: str) -> bool:
    """Exact string match (RFC 9700 section 4.1.3), except that a loopback
    http redirect may use any port (RFC 8252 section 7.3)."""
    if requested in registered:
        return True
    req = urlsplit(requested)
    if req.scheme != "http" or (
        req.hostname not in LOOPBACK_HOSTS and not is_loopback(req.hostname)
    ):
        return False
    try:
        req.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    for uri in registered:
        reg = urlsplit(uri)
        if (
            reg.scheme == "http"
            and reg.hostname == req.hostname
            and is_loopback(reg.hostname)
            and reg.path == req.path
            and reg.query == req.query
            and not req.username
            and "@" not in req.netloc
        ):
            return True
    return False


def client_from_metadata(
    metadata: Mapping[str, Any],
    supported_scopes: tuple[str, ...],
    source: str = "dcr",
    client_id: str | None = None,
    max_redirect_uris: int = MAX_REDIRECT_URIS,
) -> tuple[Client, str | None]:
    """Validate RFC 7591 registration metadata; returns the client and its
    plain secret (None for public clients)."""
    if not isinstance(metadata, Mapping):
        raise InvalidClientMetadata("the registration body must be a JSON object")
    uris = metadata.get("redirect_uris")
    if not isinstance(uris, list) or not uris:
        raise InvalidRedirectUri("redirect_uris must be a non-empty array")
    if len(uris) > max_redirect_uris:
        raise InvalidRedirectUri(f"at most {max_redirect_uris} redirect URIs")
    redirect_uris = [validate_redirect_uri(u) for u in uris]

    # Real clients omit the method: that means a public client.
    method = metadata.get("token_endpoint_auth_method") or "none"
    if method not in AUTH_METHODS:
        raise InvalidClientMetadata(
            f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}"
        )
    keys = _client_keys(metadata, method)
    # RFC 7591 section 2: what a server does not support it ignores. A grant
    # type or response type we do not offer is dropped, not refused; only a
    # client that cannot use the code flow at all is.
    grant_types = metadata.get("grant_types") or ["authorization_code"]
    if not isinstance(grant_types, list) or not all(isinstance(g, str) for g in grant_types):
        raise InvalidClientMetadata("grant_types must be an array of strings")
    grant_types = [g for g in grant_types if g in GRANT_TYPES]
    if "authorization_code" not in grant_types:
        raise InvalidClientMetadata("grant_types must include authorization_code")
    response_types = metadata.get("response_types") or ["code"]
    if not isinstance(response_types, list) or "code" not in response_types:
        raise InvalidClientMetadata('response_types must include "code"')
    scope = metadata.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise InvalidClientMetadata("scope must be a space-separated string")
        unknown = set(scope.split()) - set(supported_scopes)
        if unknown:
            raise InvalidClientMetadata(f"unsupported scope {' '.join(sorted(unknown))}")
    application_type = metadata.get("application_type") or "web"
    if application_type not in ("web", "native"):
        raise InvalidClientMetadata("application_type must be web or native")
    name = metadata.get("client_name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InvalidClientMetadata("client_name must be a string of at most 200 characters")
    if name is not None and CONTROL.search(name):
        raise InvalidClientMetadata("client_name must not contain control characters")
    client_uri = metadata.get("client_uri")
    if client_uri is not None and (
        not isinstance(client_uri, str) or urlsplit(client_uri).scheme not in ("https", "http")
    ):
        raise InvalidClientMetadata("client_uri must be an http(s) URL")

    if client_id is not None and not is_valid_client_id(client_id):
        raise InvalidClientMetadata("client_id must be visible ASCII without spaces")
    secret = secrets.token_urlsafe(32) if method in SECRET_METHODS else None
    client = Client(
        client_id=client_id or secrets.token_urlsafe(18),
        redirect_uris=redirect_uris,
        token_endpoint_auth_method=method,
        grant_types=list(dict.fromkeys(grant_types)),
        response_types=["code"],
        client_name=name,
        client_uri=client_uri,
        scope=scope,
        application_type=application_type,
        client_secret_hash=hash_secret(secret) if secret else None,
        client_id_issued_at=int(time.time()),
        source=source,
        **keys,
    )
    return client, secret


def _client_keys(metadata: Mapping[str, Any], method: str) -> dict[str, Any]:
    """RFC 7591 section 2: ``jwks_uri`` or ``jwks`` (never both) for a
    client that authenticates with ``private_key_jwt``; a client naming that
    method without keys could never authenticate, so it is refused before
    anyone is asked to consent to it."""
    if method != "private_key_jwt":
        return {}
    uri, jwks = metadata.get("jwks_uri"), metadata.get("jwks")
    if uri is not None and jwks is not None:
        raise InvalidClientMetadata("jwks_uri and jwks must not both be given")
    alg = metadata.get("token_endpoint_auth_signing_alg")
    if alg is not None and alg not in ALGORITHMS:
        raise InvalidClientMetadata(
            f"token_endpoint_auth_signing_alg must be one of {', '.join(ALGORITHMS)}"
        )
    if uri is not None:
        parts = urlsplit(uri) if isinstance(uri, str) else None
        if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
            raise InvalidClientMetadata("jwks_uri must be an https URL")
        if not is_valid_client_id(uri):
            raise InvalidClientMetadata("jwks_uri must be visible ASCII without spaces")
        return {"jwks_uri": uri, "token_endpoint_auth_signing_alg": alg}
    if jwks is not None:
        try:
            parse_key_set(jwks)
        except ValueError as exc:
            raise InvalidClientMetadata(f"jwks: {exc}") from None
        return {"jwks": jwks, "token_endpoint_auth_signing_alg": alg}
    raise InvalidClientMetadata("private_key_jwt needs jwks_uri or jwks")


def parse_key_set(document: Any) -> dict[str, jwt.PyJWK]:
    """The usable public keys of a JWKS, by kid. Private or symmetric keys
    are refused: a client publishing its private key, or an "oct" key that
    would turn verification into an HMAC anyone could compute, has no key."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS must be an object with a keys array")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if "d" in entry:
            raise ValueError("the JWKS holds a private key")
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        keys[str(entry.get("kid", ""))] = key
    if not keys:
        raise ValueError("the JWKS has no usable signing key")
    return keys


MAX_FAMILIES = 50  # distinct client_family label values, per process
_families: set[str] = set()


def client_family(client: Client | None) -> str:
    """A bounded label saying which kind of client this is, for dashboards
    ("ChatGPT refreshes fail"): the document's host for a metadata-document
    client (``claude.ai``, ``chatgpt.com``, ``vscode.dev``), a normalised
    bucket of ``client_name`` for a self-registered one (``claude``,
    ``cursor``), ``operator`` for ``sidecar clients add``, and ``other`` once
    ``MAX_FAMILIES`` are in use, so no stranger can grow the label set."""
    if client is None:
        return "unknown"
    if client.source == "cli":
        return "operator"
    if client.source == "cimd":
        host = (urlsplit(client.client_id).hostname or "").lower()
        family = host[4:] if host.startswith("www.") else host
    else:
        words = re.findall(r"[a-z0-9]+", (client.client_name or "").lower())
        family = "-".join(words[:2])[:32] if words else "unnamed"
    if family in _families:
        return family
    if len(_families) >= MAX_FAMILIES or not family:
        return "other"
    _families.add(family)
    return family
