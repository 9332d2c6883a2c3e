"""The durable client registry and client authentication at the token,
revocation and introspection endpoints (RFC 6749 section 2.3, RFC 7523)."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import asdict
from urllib.parse import unquote

import jwt

from sidecar.oauth.assertions import ASSERTION_TYPE, AssertionVerifier, ClientKeys
from sidecar.oauth.cimd import MetadataDocuments, looks_like_metadata_url
from sidecar.oauth.client_model import Client, is_valid_client_id
from sidecar.oauth.errors import InvalidClient
from sidecar.store import Store

NS = "clients"


class ClientRegistry:
    """Durable clients in the store (no expiry): a client that registered
    once keeps working across restarts and replicas. A client_id that is a
    URL is looked up as a Client ID Metadata Document when enabled."""

    def __init__(self, store: Store, documents: MetadataDocuments | None = None) -> None:
        self.store = store
        self.documents = documents
        # Client assertions are checked where the keys can be fetched: with
        # the document fetcher's SSRF rules (the operator CLI has none).
        self.assertions: AssertionVerifier | None = (
            AssertionVerifier(documents.settings.issuer, store, ClientKeys(documents))
            if documents is not None
            else None
        )

    async def get(self, client_id: str) -> Client | None:
        if not is_valid_client_id(client_id):
            return None  # never looked up, fetched or stored
        record = await self.store.get(NS, client_id)
        if record:
            return Client(**record)
        if self.documents is not None and "://" in client_id and looks_like_metadata_url(client_id):
            return await self.documents.client(client_id)
        return None

    async def add(self, client: Client, ttl: float | None = None) -> None:
        """``ttl``: a self-registered client is forgotten unless it is used
        (``registration_unused_ttl``); operators' clients are kept."""
        await self.store.put(NS, client.client_id, asdict(client), ttl=ttl)

    async def mark_in_use(self, client: Client) -> None:
        """A self-registered client completed an authorization: keep it.
        Clients pile up otherwise (one per re-registration of every install)."""
        if client.source == "dcr" and not client.in_use:
            client.in_use = True
            await self.store.put(NS, client.client_id, asdict(client))

    async def prune(self, unused_for: float, in_use: set[str]) -> list[str]:
        """Forget self-registered clients never used for ``unused_for``
        seconds (those registered before registrations expired by themselves
        too); a client named in ``in_use`` (it holds a live grant) is kept."""
        cutoff = time.time() - unused_for
        removed = []
        for client in await self.all():
            if (
                client.source == "dcr"
                and not client.in_use
                and client.client_id not in in_use
                and client.client_id_issued_at < cutoff
            ):
                await self.store.delete(NS, client.client_id)
                removed.append(client.client_id)
        return removed

    async def remove(self, client_id: str) -> bool:
        existed = await self.store.get(NS, client_id) is not None
        await self.store.delete(NS, client_id)
        return existed

    async def all(self) -> list[Client]:
        return [Client(**record) for _, record in await self.store.scan(NS)]


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """RFC 6749 section 2.3.1: form-encoded id and secret in HTTP Basic."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise InvalidClient("malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient("malformed Basic credentials")
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


async def authenticate_client(
    registry: ClientRegistry,
    form: Mapping[str, str],
    authorization: str | None,
    *,
    require_confidential: bool = False,
) -> Client:
    """The client making a token, revocation or introspection request, as
    registered: public clients send only client_id; confidential ones their
    secret, by the method they registered."""
    basic = basic_credentials(authorization)
    challenge = {"WWW-Authenticate": 'Basic realm="oauth"'} if basic else {}
    if "client_assertion" in form or "client_assertion_type" in form:
        return await _authenticate_by_assertion(
            registry, form, basic is not None, require_confidential=require_confidential
        )
    if basic:
        client_id, secret = basic
        method = "client_secret_basic"
        if form.get("client_id") and form["client_id"] != client_id:
            raise InvalidClient("client_id differs from the Basic credentials", challenge)
    else:
        client_id = form.get("client_id", "")
        secret = form.get("client_secret", "")
        method = "client_secret_post" if secret else "none"
    client = await registry.get(client_id)
    if client is None:
        raise InvalidClient("unknown client", challenge)
    if require_confidential and client.is_public:
        raise InvalidClient("this endpoint needs a confidential client", challenge)
    if client.token_endpoint_auth_method == "private_key_jwt":
        # Its keys are its only credential: no assertion, no access.
        raise InvalidClient("this client authenticates with a client_assertion", challenge)
    if client.is_public:
        if secret:
            # claude.ai may register as confidential then act public; the
            # reverse (a secret for a public client) is refused.
            raise InvalidClient("this client has no secret", challenge)
        return client
    if method == "none":
        # claude.ai registers with client_secret_post and may then act as a
        # public client. A dynamically registered client gets
        # no more than a public client would: PKCE still binds every code and
        # refresh tokens still rotate. Pre-registered confidential clients and
        # introspection always need the secret.
        if client.source == "dcr" and not require_confidential:
            return client
        raise InvalidClient("client authentication required", challenge)
    if not client.check_secret(secret):
        raise InvalidClient("client authentication failed", challenge)
    return client


async def _authenticate_by_assertion(
    registry: ClientRegistry,
    form: Mapping[str, str],
    with_basic: bool,
    *,
    require_confidential: bool,
) -> Client:
    """RFC 7523 section 2.2. RFC 6749 section 2.3: one authentication method
    per request, so an assertion beside a secret is refused."""
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise InvalidClient(f"client_assertion_type must be {ASSERTION_TYPE}")
    assertion = form.get("client_assertion", "")
    if not assertion:
        raise InvalidClient("client_assertion is missing")
    if with_basic or form.get("client_secret"):
        raise InvalidClient("use one client authentication method per request")
    client_id = form.get("client_id") or _unverified_issuer(assertion)
    client = await registry.get(client_id)
    if client is None:
        raise InvalidClient("unknown client")
    if client.token_endpoint_auth_method != "private_key_jwt":
        raise InvalidClient("this client does not authenticate with a client_assertion")
    if registry.assertions is None:
        raise InvalidClient("client assertions are not accepted here")
    await registry.assertions.verify(client, assertion)
    return client


def _unverified_issuer(assertion: str) -> str:
    """The client_id an assertion claims, to find the keys that must verify
    it (RFC 7523 section 3: iss is the client_id)."""
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise InvalidClient("client_assertion is not a JWT") from None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else ""
