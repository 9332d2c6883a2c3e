"""Client authentication with a signed JWT (``private_key_jwt``, RFC 7523
section 2.2, as OpenID Connect Core section 9 names it).

ChatGPT identifies itself with a Client ID Metadata Document naming
``private_key_jwt`` and a ``jwks_uri``, and authenticates at the token
endpoint with a ``client_assertion``. What is checked (RFC 7523 section 3):

- the algorithm comes from an allow-list of asymmetric ones and must be the
  key's own (never ``none``, never HMAC, never the header's word alone);
- ``iss`` and ``sub`` are the client_id; ``aud`` is the issuer or the token
  endpoint URL, nothing else;
- ``exp`` is required and near (at most ``MAX_LIFETIME`` after ``iat``),
  ``iat`` and ``nbf`` are not in the future beyond ``SKEW``;
- ``jti`` is used once, across replicas: a ``put_if_absent`` in the store
  that lives until the assertion expires.

Keys come from the client's inline ``jwks`` or its ``jwks_uri``, fetched
with the same SSRF rules, size and time limits as metadata documents, cached
by their HTTP caching headers and fetched again once on an unknown ``kid``.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any

import jwt
import structlog

from sidecar.expiring import ExpiringCache
from sidecar.oauth.cimd import MetadataDocuments
from sidecar.oauth.client_model import ALGORITHMS, Client, parse_key_set
from sidecar.oauth.errors import InvalidClient
from sidecar.store import Store

log = structlog.get_logger("sidecar.oauth")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The key types each algorithm may be used with: a header naming RS256 over
# an EC key, or any algorithm over an "oct" key, is refused.
KEY_TYPES = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
MAX_LIFETIME = 300  # seconds from iat to exp
SKEW = 30  # seconds of clock difference allowed
MAX_ASSERTION = 8192  # bytes
NS_JTI = "assertion_jti"
REFETCH_PAUSE = 30.0  # seconds between fetches of one jwks_uri for unknown kids
CACHE_SIZE = 1000
JWKS_TYPES = ("application/json", "application/jwk-set+json")


class ClientKeys:
    """Public keys of clients that authenticate with ``private_key_jwt``."""

    def __init__(self, documents: MetadataDocuments | None) -> None:
        self.documents = documents
        # jwks_uri -> (keys by kid, fresh until, last fetched)
        self._cache: OrderedDict[str, tuple[dict[str, jwt.PyJWK], float, float]] = OrderedDict()
        self._inline_cache: ExpiringCache[str, dict[str, jwt.PyJWK]] = ExpiringCache(CACHE_SIZE)

    async def key(self, client: Client, kid: str) -> jwt.PyJWK | None:
        if client.jwks is not None:
            return self._inline(client.jwks).get(kid)
        if not client.jwks_uri:
            return None
        keys = await self._keys(client.jwks_uri, refresh=False)
        if kid not in keys:
            # The client may have rotated its keys: one fetch more, at most
            # once per REFETCH_PAUSE, so made-up kids cannot make us fetch.
            keys = await self._keys(client.jwks_uri, refresh=True)
        return keys.get(kid)

    def _inline(self, jwks: dict[str, Any]) -> dict[str, jwt.PyJWK]:
        """Registered keys, parsed once (a key object costs about as much to
        build as a signature check)."""
        text = json.dumps(jwks, sort_keys=True)
        parsed = self._inline_cache.get(text, 0.0)
        if parsed is None:
            parsed = parse_key_set(jwks)
            self._inline_cache.put(text, parsed, float("inf"))
        return parsed

    async def _keys(self, uri: str, *, refresh: bool) -> dict[str, jwt.PyJWK]:
        now = time.monotonic()
        cached = self._cache.get(uri)
        if cached is not None:
            keys, fresh_until, fetched = cached
            if (not refresh and now < fresh_until) or (refresh and now - fetched < REFETCH_PAUSE):
                return keys
        if self.documents is None:
            raise InvalidClient("the client's keys cannot be fetched")
        try:
            document, ttl = await self.documents.fetch(uri, JWKS_TYPES)
            keys = parse_key_set(document)
        except Exception as exc:  # any failure to get keys is the client's
            if cached is not None:
                return cached[0]
            log.warning("client keys unavailable", jwks_uri=uri, reason=str(exc))
            raise InvalidClient("the client's keys could not be fetched") from None
        self._cache[uri] = (keys, now + ttl, now)
        self._cache.move_to_end(uri)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return keys


class AssertionVerifier:
    def __init__(self, issuer: str, store: Store, keys: ClientKeys) -> None:
        self.audiences = (issuer, f"{issuer}/token")
        self.store = store
        self.keys = keys

    async def verify(self, client: Client, assertion: str) -> None:
        """Raises InvalidClient unless ``assertion`` authenticates ``client``."""
        if len(assertion) > MAX_ASSERTION:
            raise InvalidClient("client_assertion is too large")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise InvalidClient("client_assertion is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise InvalidClient(f"client_assertion alg must be one of {', '.join(ALGORITHMS)}")
        if client.token_endpoint_auth_signing_alg and alg != client.token_endpoint_auth_signing_alg:
            raise InvalidClient("client_assertion alg is not the one the client registered")
        kid = header.get("kid", "")
        key = await self.keys.key(client, str(kid) if isinstance(kid, str) else "")
        if key is None:
            raise InvalidClient("client_assertion is signed with an unknown key")
        if key.key_type != KEY_TYPES[alg]:
            raise InvalidClient("client_assertion alg does not fit its key")
        try:
            claims = jwt.decode(
                assertion,
                key.key,
                algorithms=[alg],
                audience=list(self.audiences),
                issuer=client.client_id,
                leeway=SKEW,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidClient(f"client_assertion refused: {exc}") from None
        if claims["sub"] != client.client_id:
            raise InvalidClient("client_assertion sub must be the client_id")
        aud = claims["aud"]
        if isinstance(aud, list) and not set(aud) <= set(self.audiences):
            raise InvalidClient("client_assertion aud names another audience")
        now = time.time()
        exp = _number(claims["exp"])
        issued = _number(claims.get("iat", now))
        if exp - min(issued, now) > MAX_LIFETIME + SKEW:
            raise InvalidClient(f"client_assertion must expire within {MAX_LIFETIME} seconds")
        if issued > now + SKEW:
            raise InvalidClient("client_assertion iat is in the future")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidClient("client_assertion jti must be a short string")
        # Single use until it expires, on every replica (RFC 7523 section 3).
        key_id = json.dumps([client.client_id, jti])
        fresh = await self.store.put_if_absent(
            NS_JTI, key_id, {"exp": exp}, ttl=max(1.0, exp - now + SKEW)
        )
        if not fresh:
            raise InvalidClient("client_assertion was used before")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidClient("client_assertion times must be numbers")
    return float(value)
