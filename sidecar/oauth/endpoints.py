"""Token, registration, revocation, introspection, userinfo, JWKS and the
discovery documents. Each handler is a method of one dataclass of its
dependencies; errors become RFC 6749 section 5.2 JSON in one place."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sidecar.config import Resource, Settings
from sidecar.convex import ConvexTokens
from sidecar.keys import KeySet
from sidecar.oauth import pkce
from sidecar.oauth.client_model import ALGORITHMS as ASSERTION_ALGORITHMS
from sidecar.oauth.client_model import Client, client_family, client_from_metadata
from sidecar.oauth.clients import ClientRegistry, authenticate_client, basic_credentials
from sidecar.oauth.errors import (
    NO_STORE,
    InvalidClientMetadata,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    InvalidToken,
    OAuthError,
    SlowDown,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
    error_response,
)
from sidecar.oauth.grants import Grants
from sidecar.oauth.params import form_params, read_body
from sidecar.oauth.ratelimit import RateLimiter, client_ip, is_trusted_egress
from sidecar.oauth.records import Grant, Profile, RefreshRecord
from sidecar.oauth.tokens import IssuedTokens, Tokens, user_claims
from sidecar.observability.metrics import token_event
from sidecar.store import StoreUnavailable
from sidecar.urls import InvalidURL, canonical_url

log = structlog.get_logger("sidecar.oauth")

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE_URN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE_URN = "urn:ietf:params:oauth:token-type:jwt"

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
    "Access-Control-Max-Age": "86400",
}

Handler = Callable[[Request], Awaitable[Response]]


def oauth_json(handler: Handler) -> Handler:
    """OAuthError -> JSON error; store away -> 503 with Retry-After; every
    answer carries CORS for browser-based clients."""

    async def wrapped(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=CORS)
        try:
            response = await handler(request)
        except OAuthError as exc:
            response = error_response(exc)
        except StoreUnavailable as exc:
            log.warning("store unavailable", error=str(exc))
            response = error_response(
                TemporarilyUnavailable("try again shortly", headers={"Retry-After": "5"})
            )
        response.headers.update(CORS)
        return response

    return wrapped


def token_response(tokens: IssuedTokens) -> JSONResponse:
    body: dict[str, Any] = {
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in,
        "scope": " ".join(tokens.scope),
    }
    if tokens.refresh_token:
        body["refresh_token"] = tokens.refresh_token
    if tokens.id_token:
        body["id_token"] = tokens.id_token
    return JSONResponse(body, headers=NO_STORE)


@dataclass
class OAuthEndpoints:
    settings: Settings
    clients: ClientRegistry
    grants: Grants
    tokens: Tokens
    keys: KeySet
    limiter: RateLimiter
    convex: ConvexTokens

    async def form(self, request: Request) -> dict[str, str]:
        return await form_params(request, self.settings.max_body_bytes, self.settings.body_timeout)

    def peer(self, request: Request) -> str:
        return client_ip(request, self.settings)

    # -- POST /oauth/token ------------------------------------------------------

    async def token(self, request: Request) -> Response:
        """RFC 6749 section 3.2. Limits: refused requests per address and per
        client (guessing codes, refresh tokens, secrets or assertions), and
        refreshes per grant; a success never counts against an address or a
        client_id, which a popular client's users and a hosted client's egress
        pool share."""
        peer = self.peer(request)
        trusted = is_trusted_egress(peer, self.settings.trusted_client_egress)
        family = "unknown"
        client_id = ""
        try:
            if not trusted:
                await self.limiter.refuse_if_blocked("token-failures-ip", peer)
            form = await self.form(request)
            basic = basic_credentials(request.headers.get("authorization"))
            client_id = (basic[0] if basic else form.get("client_id", ""))[:200]
            if client_id and not trusted:
                await self.limiter.refuse_if_blocked("token-failures-client", client_id)
            client = await authenticate_client(
                self.clients, form, request.headers.get("authorization")
            )
            family = client_family(client)
            client_id = client.client_id[:200]
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                response = token_response(await self.exchange_code(form, client))
                token_event("issued", family=family)
                return response
            if grant_type == "refresh_token":
                # A refresh token starts with its grant's id: the loop of one
                # grant is limited, not the client it belongs to.
                grant = form.get("refresh_token", "").partition(".")[0][:64]
                await self.limiter.check(
                    "token-refreshes-grant", grant, self.settings.rate_limit_per_grant, family
                )
                return token_response(await self.refresh(form, client, family))
            if grant_type == TOKEN_EXCHANGE:
                exchanged = await self.exchange_token(form, request)
                token_event("exchanged", family=family)
                return exchanged
            if not grant_type:
                raise InvalidRequest("grant_type is required")
            raise UnsupportedGrantType(f"grant_type {grant_type} is not supported")
        except SlowDown:
            token_event("refused", "slow_down", family)
            raise
        except OAuthError as exc:
            token_event("refused", exc.error, family)
            if not trusted:
                await self.limiter.count_failure(
                    "token-failures-ip", peer, self.settings.rate_limit_per_ip
                )
            if client_id:
                await self.limiter.count_failure(
                    "token-failures-client", client_id, self.settings.rate_limit_per_client
                )
            raise

    async def exchange_code(self, form: dict[str, str], client: Client) -> IssuedTokens:
        code, verifier = form.get("code"), form.get("code_verifier")
        if not code:
            raise InvalidRequest("code is required")
        if not verifier:
            # A verifier is required whenever a challenge was (always, here).
            raise InvalidRequest("code_verifier is required (PKCE)")
        details = await self.grants.redeem_code(code)
        if details.client_id != client.client_id:
            raise InvalidGrant("the code was issued to another client")
        if form.get("redirect_uri", details.redirect_uri) != details.redirect_uri:
            raise InvalidGrant("redirect_uri differs from the authorization request")
        if not pkce.verify(verifier, details.code_challenge):
            raise InvalidGrant("code_verifier does not match the code_challenge")
        resource = form.get("resource")
        if resource and _canonical_or_none(resource) != details.resource:
            raise InvalidTarget("resource differs from the one the user consented to")
        await self.grants.start_grant(Grant.from_code(details))
        await self.clients.mark_in_use(client)
        return await self.tokens.issue(
            grant_id=details.grant_id,
            client_id=client.client_id,
            sub=details.sub,
            scope=list(details.scope),
            resource=details.resource,
            with_refresh="refresh_token" in client.grant_types,
            user=details.user,
            nonce=details.nonce,
            auth_time=details.auth_time,
        )

    async def refresh(self, form: dict[str, str], client: Client, family: str = "") -> IssuedTokens:
        if "refresh_token" not in client.grant_types:
            raise UnauthorizedClient("this client did not register the refresh_token grant")
        token = form.get("refresh_token")
        if not token:
            raise InvalidRequest("refresh_token is required")

        def asked(record: RefreshRecord) -> list[str]:
            """The scope this refresh asks for; checked before the rotation,
            so a refused request leaves the token as it was."""
            scope = list(record.scope)
            if form.get("scope"):
                narrowed = form["scope"].split()
                if not set(narrowed) <= set(scope):
                    raise InvalidScope("a refresh may only narrow the scope")
                scope = narrowed
            resource = form.get("resource")
            if resource and _canonical_or_none(resource) != record.resource:
                raise InvalidTarget("a refresh token keeps its resource")
            return scope

        rotation = await self.grants.rotate_refresh(token, client.client_id, asked)
        record = rotation.record
        await self.grants.note_refresh(record.grant_id)
        scope = asked(record)
        tokens = await self.tokens.issue(
            grant_id=record.grant_id,
            client_id=client.client_id,
            sub=record.sub,
            scope=scope,
            resource=record.resource,
            with_refresh=True,
            user=record.user,
            auth_time=record.auth_time,
            with_id_token=False,
            refresh_token=rotation.successor,
        )
        # Grace answers are counted apart: a steady stream of them is a client
        # that loses answers or races itself.
        token_event("refreshed", "grace" if rotation.grace else "", family)
        return tokens

    async def exchange_token(self, form: dict[str, str], request: Request) -> Response:
        """RFC 8693 for apps that check tokens themselves: a valid, unrevoked
        access token of the sidecar for the Convex token the gateway would
        have sent, asked by a confidential client an operator allowed to."""
        # A confidential client's secret, always (never the DCR leniency).
        client = await authenticate_client(
            self.clients, form, request.headers.get("authorization"), require_confidential=True
        )
        if not client.token_exchange:
            raise UnauthorizedClient(
                "this client may not exchange tokens (sidecar clients add --token-exchange)"
            )
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE_URN:
            raise InvalidRequest(f"subject_token_type must be {ACCESS_TOKEN_TYPE_URN}")
        if form.get("actor_token") or form.get("actor_token_type"):
            raise InvalidRequest("delegation (actor_token) is not supported")
        requested = form.get("requested_token_type")
        if requested and requested != JWT_TOKEN_TYPE_URN:
            raise InvalidRequest(f"requested_token_type must be {JWT_TOKEN_TYPE_URN}")
        audience = form.get("audience")
        if audience != self.settings.convex_audience or form.get("resource"):
            # RFC 8693 section 2.2.2: an audience this server will not issue for.
            raise InvalidTarget(f"audience must be {self.settings.convex_audience}")
        subject = form.get("subject_token", "")
        try:
            claims = await self.tokens.verify_access_token(subject)
        except InvalidToken as exc:
            # RFC 8693 section 2.2.2: an invalid subject token is invalid_request.
            raise InvalidRequest(f"subject_token is not usable: {exc.description}") from None
        token, exp = self.convex.mint(claims)
        body = {
            "access_token": token,
            "issued_token_type": JWT_TOKEN_TYPE_URN,
            "token_type": "Bearer",
            "expires_in": max(0, int(exp - time.time())),
            "scope": claims.get("scope", ""),
        }
        log.info("token exchanged for Convex", client_id=client.client_id, sub=claims["sub"])
        return JSONResponse(body, headers=NO_STORE)

    # -- POST /oauth/register ---------------------------------------------------

    async def register(self, request: Request) -> Response:
        await self.limiter.check(
            "register", self.peer(request), self.settings.registration_rate_limit
        )
        body = await read_body(
            request, self.settings.max_registration_bytes, self.settings.body_timeout
        )
        try:
            metadata = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidClientMetadata("the body must be JSON") from None
        client, secret = client_from_metadata(
            metadata, self.settings.scopes, max_redirect_uris=self.settings.max_redirect_uris
        )
        unused = self.settings.registration_unused_ttl
        await self.clients.add(client, ttl=unused or None)
        log.info(
            "client registered",
            client_id=client.client_id,
            client_name=client.client_name,
            auth_method=client.token_endpoint_auth_method,
        )
        response = client.public_metadata()
        if secret:
            response["client_secret"] = secret
            response["client_secret_expires_at"] = 0
        return JSONResponse(response, status_code=201, headers=NO_STORE)

    # -- POST /oauth/revoke (RFC 7009) ------------------------------------------

    async def revoke(self, request: Request) -> Response:
        form = await self.form(request)
        client = await authenticate_client(self.clients, form, request.headers.get("authorization"))
        token = form.get("token")
        if not token:
            raise InvalidRequest("token is required")
        hint = form.get("token_type_hint")
        if hint != "access_token" and "." in token and token.count(".") == 1:
            revoked = await self.revoke_refresh_of(client, token)
        else:
            try:
                claims = self.tokens.decode_access_token(token)
            except InvalidToken:
                revoked = await self.revoke_refresh_of(client, token)
            else:
                # RFC 7009 section 2.1: only a token issued to the client
                # asking; another client's is left alone.
                revoked = claims.get("client_id") == client.client_id
                if revoked:
                    await self.tokens.revoke_access_token(claims)
        if revoked:
            token_event("revoked")
        else:
            log.info(
                "revocation changed nothing (unknown, or not this client's)",
                client_id=client.client_id,
            )
        # RFC 7009 section 2.2: 200 whether or not the token was known or
        # the caller's, so the answer says nothing about another's token.
        return Response(status_code=200, headers=NO_STORE)

    async def revoke_refresh_of(self, client: Client, token: str) -> bool:
        """Ends the grant of a refresh token issued to ``client`` (RFC 7009
        section 2.1); an unknown token or another client's: nothing."""
        record = await self.grants.refresh_record(token)
        if record is None or record.client_id != client.client_id:
            return False
        return await self.grants.revoke_refresh(token)

    # -- POST /oauth/introspect (RFC 7662) --------------------------------------

    async def introspect(self, request: Request) -> Response:
        form = await self.form(request)
        await authenticate_client(
            self.clients, form, request.headers.get("authorization"), require_confidential=True
        )
        token = form.get("token")
        if not token:
            raise InvalidRequest("token is required")
        try:
            claims = await self.tokens.verify_access_token(token)
        except InvalidToken:
            return JSONResponse({"active": False}, headers=NO_STORE)
        body = {
            "active": True,
            "token_type": "Bearer",
            **{k: v for k, v in claims.items() if k != "gid"},
        }
        return JSONResponse(body, headers=NO_STORE)

    # -- GET /oauth/userinfo ----------------------------------------------------

    async def userinfo(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            raise InvalidToken(
                "a bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="oauth"'}
            )
        try:
            claims = await self.tokens.verify_access_token(auth[7:].strip())
        except InvalidToken as exc:
            exc.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            raise
        scope = claims["scope"].split()
        grant = await self.grants.grant(claims.get("gid", ""))
        user = Profile(grant.email, grant.name) if grant is not None else Profile()
        return JSONResponse({"sub": claims["sub"], **user_claims(user, scope)}, headers=NO_STORE)

    # -- documents ---------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 section 2 (and OpenID Connect Discovery)."""
        issuer = self.settings.issuer
        return {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "registration_endpoint": f"{issuer}/register",
            "revocation_endpoint": f"{issuer}/revoke",
            "introspection_endpoint": f"{issuer}/introspect",
            "userinfo_endpoint": f"{issuer}/userinfo",
            "jwks_uri": f"{issuer}/jwks",
            # offline_access is accepted but not listed unless asked for: the
            # MCP TypeScript SDK adds it, and then prompt=consent, to every
            # authorization when it is listed, while refresh tokens here
            # follow the client's registered refresh_token grant anyway.
            "scopes_supported": [
                s
                for s in self.settings.scopes
                if s != "offline_access" or self.settings.advertise_offline_access
            ],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            # Token exchange is listed always: it needs a client an operator
            # allowed (sidecar clients add --token-exchange), which metadata
            # cannot say; every other client is told unauthorized_client.
            "grant_types_supported": ["authorization_code", "refresh_token", TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "revocation_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": True,
            "authorization_response_iss_parameter_supported": True,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.keys.signing.alg],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "email",
                "name",
            ],
            "prompt_values_supported": ["none", "login", "consent"],
        }

    def protected_resource_metadata(self, resource: Resource) -> dict[str, Any]:
        """RFC 9728 section 2. ``scopes_supported`` is the resource's own set
        (MCP 2026-07-28: the minimal set for basic functionality, never
        offline_access), not the server's whole list: clients ask for all of
        it when a challenge names no scope."""
        return {
            "resource": resource.url,
            "authorization_servers": [self.settings.issuer],
            "scopes_supported": list(resource.advertised_scopes),
            "bearer_methods_supported": ["header"],
        }


def _canonical_or_none(url: str) -> str | None:
    try:
        return canonical_url(url)
    except InvalidURL:
        return None


def document(data: dict[str, Any], max_age: int) -> Handler:
    """A document built once and served from memory."""
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = {**CORS, "Cache-Control": f"public, max-age={max_age}"}

    async def serve(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=CORS)
        return Response(body, media_type="application/json", headers=headers)

    return serve
