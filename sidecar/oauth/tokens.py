"""Access and ID tokens: issued, decoded, verified, checked for revocation.

Access tokens are JWTs of type ``at+jwt`` (RFC 9068) carrying their grant id
(``gid``), so revoking a grant stops them on every replica sharing the store;
one token is revoked by its ``jti`` (RFC 7009) until it would have expired.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from sidecar.keys import KeySet
from sidecar.oauth.errors import InvalidToken
from sidecar.oauth.grants import Grants, new_refresh_token
from sidecar.oauth.records import Profile, RefreshRecord
from sidecar.oauth.scopes import resource_urls

REVOKED = "revoked_jti"
ACCESS_TOKEN_TYPE = "at+jwt"  # RFC 9068 section 2.1
LEEWAY = 5


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    scope: list[str]
    refresh_token: str | None
    id_token: str | None


def user_claims(user: Profile, scope: list[str]) -> dict[str, Any]:
    """OpenID Connect Core section 5.4: claims by scope."""
    claims: dict[str, Any] = {}
    if "email" in scope and user.email:
        claims["email"] = user.email
    if "profile" in scope and user.name:
        claims["name"] = user.name
    return claims


class Tokens:
    def __init__(self, grants: Grants, keys: KeySet) -> None:
        self.grants = grants
        self.settings = grants.settings
        self.store = grants.store
        self.keys = keys
        self.issuer = self.settings.issuer
        self.resource_urls = resource_urls(self.settings)

    async def issue(
        self,
        *,
        grant_id: str,
        client_id: str,
        sub: str,
        scope: list[str],
        resource: str,
        with_refresh: bool,
        user: Profile,
        nonce: str | None = None,
        auth_time: int | None = None,
        with_id_token: bool = True,
        refresh_token: str | None = None,
    ) -> IssuedTokens:
        """``refresh_token``: the successor a rotation chose (its record is
        written only if absent: a grace answer repeats the first one)."""
        now = int(time.time())
        ttl = self.settings.access_token_ttl
        claims = {
            "iss": self.issuer,
            "sub": sub,
            "aud": resource,
            "client_id": client_id,
            "scope": " ".join(scope),
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + ttl,
            "gid": grant_id,
        }
        access_token = self.keys.sign(claims, typ=ACCESS_TOKEN_TYPE)
        if not with_refresh:
            refresh_token = None
        elif refresh_token is None:
            refresh_token = new_refresh_token(grant_id)
        if refresh_token is not None:
            record = RefreshRecord(
                grant_id, client_id, sub, tuple(scope), resource, user, auth_time
            )
            await self.grants.keep_refresh(refresh_token, record)
        id_token = None
        if with_id_token and "openid" in scope:
            id_claims: dict[str, Any] = {
                "iss": self.issuer,
                "sub": sub,
                "aud": client_id,
                "iat": now,
                "exp": now + ttl,
            }
            if auth_time:
                id_claims["auth_time"] = auth_time
            if nonce:
                id_claims["nonce"] = nonce
            id_claims.update(user_claims(user, scope))
            id_token = self.keys.sign(id_claims, typ="JWT")
        return IssuedTokens(access_token, ttl, scope, refresh_token, id_token)

    def decode_access_token(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """Signature, issuer, audience, expiry and type of one of our access
        tokens. A Convex session JWT fails here: wrong issuer, audience and type."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidToken("not an access token (typ must be at+jwt)")
        entry = self.keys.verifying.get(str(header.get("kid")))
        if entry is None or header.get("alg") != entry[0]:
            raise InvalidToken("unknown signing key")
        alg, key = entry
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self.issuer,
                leeway=LEEWAY,
                options={
                    "verify_aud": False,
                    "require": ["exp", "iat", "sub", "iss", "aud", "jti", "client_id"],
                },
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        allowed = {audience} if audience else self.resource_urls
        if claims["aud"] not in allowed:
            raise InvalidToken("token is for another audience")
        return claims

    async def verify_access_token(self, token: str, audience: str | None = None) -> dict[str, Any]:
        claims = self.decode_access_token(token, audience)
        await self.check_not_revoked(claims)
        return claims

    async def check_not_revoked(self, claims: dict[str, Any]) -> None:
        """Revoked by id, or through its grant (a replay or a refresh-token
        revocation): either way refused on every replica sharing the store."""
        if await self.store.get(REVOKED, claims["jti"]) is not None:
            raise InvalidToken("token revoked")
        if claims.get("gid") and await self.grants.is_grant_revoked(claims["gid"]):
            raise InvalidToken("token revoked")

    async def revoke_access_token(self, claims: dict[str, Any]) -> None:
        ttl = max(1, int(claims["exp"]) - int(time.time()) + LEEWAY)
        await self.store.put(REVOKED, claims["jti"], {}, ttl=ttl)
