"""Codes, grants, refresh-token families, consents and revocations.

A *grant* is what one authorization produced: its code, the access tokens and
the refresh-token family that descend from it. Every token carries its grant
id, so revoking a grant (a replayed code, a replayed refresh token, a
revocation request) stops all of them at once.

Single use is one atomic ``swap`` in the store: of any number of concurrent
redemptions of one code, exactly one sees it unused. A refresh token is
rotated by one atomic ``put_if_absent`` of its rotation record, which names
its successor (see :meth:`Grants.rotate_refresh` for the grace period).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidecar.config import Settings
from sidecar.keys import KeySet
from sidecar.oauth.errors import InvalidGrant, InvalidToken
from sidecar.observability.metrics import token_event
from sidecar.store import Store

CODES, GRANTS, REFRESH, REVOKED, CONSENTS = "codes", "grants", "refresh", "revoked_jti", "consents"
# Last refresh per grant, apart from the grant record: a refresh never
# rewrites the record that holds ``revoked``, so it cannot undo a revocation.
ACTIVITY = "grant_activity"
# digest(refresh token) -> its rotation: when, and its successor sealed under
# a key only the holder of the rotated token can derive.
ROTATED = "refresh_rotated"

log = structlog.get_logger("sidecar.oauth")
CONSENT_TTL = 180 * 86400
ACCESS_TOKEN_TYPE = "at+jwt"  # RFC 9068 section 2.1
LEEWAY = 5


def digest(token: str) -> str:
    """Codes and refresh tokens are stored hashed: a store dump holds none."""
    return hashlib.sha256(token.encode()).hexdigest()


def _successor_key(token: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"sidecar refresh successor"
    ).derive(token.encode())


def seal_successor(successor: str, token: str) -> str:
    """The successor, readable only with the token it replaced: a store dump
    holds no usable refresh token (the store keeps hashes otherwise)."""
    nonce = os.urandom(12)
    sealed = AESGCM(_successor_key(token)).encrypt(
        nonce, successor.encode(), digest(token).encode()
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def open_successor(sealed: str, token: str) -> str:
    raw = base64.urlsafe_b64decode(sealed)
    plain = AESGCM(_successor_key(token)).decrypt(raw[:12], raw[12:], digest(token).encode())
    return plain.decode()


@dataclass(frozen=True)
class Rotation:
    record: dict[str, Any]  # the presented refresh token's record
    successor: str  # the refresh token to answer with
    grace: bool  # a retry or race answered with the first answer's successor


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    scope: list[str]
    refresh_token: str | None
    id_token: str | None


class Grants:
    def __init__(self, settings: Settings, store: Store, keyset: KeySet) -> None:
        self.settings = settings
        self.store = store
        self.keys = keyset
        self.issuer = settings.issuer
        self.resource_urls = {r.url for r in settings.resources} | {settings.default_resource.url}

    # -- codes ------------------------------------------------------------------

    async def new_code(self, details: dict[str, Any]) -> str:
        code = secrets.token_urlsafe(32)
        record = {**details, "grant_id": uuid.uuid4().hex, "used": False}
        await self.store.put(CODES, digest(code), record, ttl=self.settings.code_ttl)
        return code

    async def redeem_code(self, code: str) -> dict[str, Any]:
        """The code's details, once. A second redemption revokes everything
        the first one issued (RFC 9700 section 4.2.4)."""
        if not code or len(code) > 512:
            raise InvalidGrant("invalid authorization code")
        key = digest(code)
        # Peek first: an unknown code leaves nothing behind, and the grant id
        # (fixed at issue) goes on the used marker in the same atomic swap.
        peek = await self.store.get(CODES, key)
        if peek is None or "grant_id" not in peek:
            raise InvalidGrant("invalid or expired authorization code")
        marker = {"used": True, "grant_id": peek["grant_id"]}
        old = await self.store.swap(CODES, key, marker, ttl=self.settings.refresh_token_ttl)
        if old is None:
            raise InvalidGrant("invalid or expired authorization code")
        if old.get("used"):
            await self.revoke_grant(old["grant_id"])
            raise InvalidGrant("authorization code already used; its tokens are revoked")
        return old

    # -- grants -----------------------------------------------------------------

    async def start_grant(self, grant_id: str, details: dict[str, Any]) -> None:
        record = {
            k: details.get(k)
            for k in ("client_id", "sub", "email", "name", "scope", "resource", "auth_time")
        }
        record["revoked"] = False
        record["created"] = int(time.time())
        # put_if_absent, never a plain put: when a replay of the code raced
        # ahead and revoked the grant, the revocation must stay. The one
        # redemption that won still gets its answer, but every token in it
        # carries the grant id and is refused from the start.
        await self.store.put_if_absent(
            GRANTS, grant_id, record, ttl=self.settings.refresh_token_ttl
        )
        # The person -> grants index: one record per grant in the person's own
        # namespace, so each write is one store operation (one SET on Redis).
        await self.store.put(
            user_index(str(record["sub"])),
            grant_id,
            {"client_id": record["client_id"]},
            ttl=self.settings.refresh_token_ttl,
        )

    async def note_refresh(self, grant_id: str) -> None:
        await self.store.put(
            ACTIVITY, grant_id, {"at": int(time.time())}, ttl=self.settings.refresh_token_ttl
        )

    async def live_grant(self, grant_id: str) -> dict[str, Any] | None:
        record = await self.store.get(GRANTS, grant_id)
        if record is None or record.get("revoked"):
            return None
        activity = await self.store.get(ACTIVITY, grant_id)
        return {
            **record,
            "grant_id": grant_id,
            "last_refreshed": activity["at"] if activity else None,
        }

    async def grants_of(self, sub: str) -> list[dict[str, Any]]:
        """The person's live grants, oldest first."""
        found = []
        for grant_id, _ in await self.store.scan(user_index(sub)):
            record = await self.live_grant(grant_id)
            if record is not None and record.get("sub") == sub:
                found.append(record)
        return sorted(found, key=lambda g: g.get("created") or 0)

    async def all_grants(self) -> list[dict[str, Any]]:
        """Every live grant (operators' listing; walks the whole namespace)."""
        found = []
        for grant_id, record in await self.store.scan(GRANTS):
            if not record.get("revoked"):
                activity = await self.store.get(ACTIVITY, grant_id)
                found.append(
                    {**record, "grant_id": grant_id, "last_refreshed": activity and activity["at"]}
                )
        return sorted(found, key=lambda g: g.get("created") or 0)

    async def end_grant(self, record: dict[str, Any]) -> None:
        """Revoke a grant (its refresh tokens and, through ``gid``, its access
        tokens on every replica) and forget the consent behind it, so the next
        authorization of that client asks the person again."""
        await self.revoke_grant(record["grant_id"])
        await self.store.delete(user_index(str(record["sub"])), record["grant_id"])
        await self.forget_consent(str(record["sub"]), str(record["client_id"]))

    async def forget_consent(self, sub: str, client_id: str) -> None:
        resources = {r.url for r in self.settings.resources} | {self.settings.default_resource.url}
        for resource in resources:
            await self.store.delete(CONSENTS, self._consent_key(sub, client_id, resource))
        await self.store.delete(CONSENTS, self._approved_key(sub, client_id))

    async def grant(self, grant_id: str) -> dict[str, Any] | None:
        return await self.store.get(GRANTS, grant_id)

    async def revoke_grant(self, grant_id: str) -> None:
        existing = await self.store.get(GRANTS, grant_id) or {}
        await self.store.put(
            GRANTS, grant_id, {**existing, "revoked": True}, ttl=self.settings.refresh_token_ttl
        )

    async def is_grant_revoked(self, grant_id: str) -> bool:
        record = await self.store.get(GRANTS, grant_id)
        return record is not None and bool(record.get("revoked"))

    # -- tokens -----------------------------------------------------------------

    async def issue(
        self,
        *,
        grant_id: str,
        client_id: str,
        sub: str,
        scope: list[str],
        resource: str,
        with_refresh: bool,
        user: dict[str, Any],
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
            refresh_token = f"{grant_id}.{secrets.token_urlsafe(32)}"
        if refresh_token is not None:
            await self.store.put_if_absent(
                REFRESH,
                digest(refresh_token),
                {
                    "grant_id": grant_id,
                    "client_id": client_id,
                    "sub": sub,
                    "scope": scope,
                    "resource": resource,
                    "used": False,
                    "user": user,
                    "auth_time": auth_time,
                },
                ttl=self.settings.refresh_token_ttl,
            )
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

    async def rotate_refresh(self, token: str, client_id: str) -> Rotation:
        """Rotate a refresh token (RFC 9700 section 4.14.2), surviving what
        real clients do. The first use records the rotation and its successor
        in one atomic ``put_if_absent``; of any number of concurrent uses,
        exactly one wins. Presented again within
        ``refresh_reuse_grace_seconds`` (a lost answer retried, two processes
        sharing one credentials file), while its successor has not been
        rotated in turn, it is answered with that same successor, so every
        racer ends up holding the one live token. Later, or for any older
        token, the reuse is read as theft and the grant is revoked."""
        grant_id, sep, _ = token.partition(".")
        if not sep or len(token) > 512:
            raise InvalidGrant("invalid refresh token")
        key = digest(token)
        record = await self.store.get(REFRESH, key)
        if record is None:
            raise InvalidGrant("invalid or expired refresh token")
        # A revoked grant is refused first, so that a replay that revoked it
        # cannot be followed by a grace answer.
        if await self.is_grant_revoked(grant_id):
            raise InvalidGrant("this grant has been revoked")
        if record.get("used"):
            # Rotated by a version without rotation records: strict as then.
            await self.revoke_for_reuse(grant_id, client_id, "rotated before grace existed")
        if record["client_id"] != client_id:
            await self.revoke_for_reuse(
                grant_id,
                client_id,
                "presented by another client",
                "refresh token was issued to another client; its grant is revoked",
            )
        successor = f"{grant_id}.{secrets.token_urlsafe(32)}"
        now = time.time()
        rotation = {"grant_id": grant_id, "at": now, "sealed": seal_successor(successor, token)}
        if await self.store.put_if_absent(
            ROTATED, key, rotation, ttl=self.settings.refresh_token_ttl
        ):
            return Rotation(record, successor, grace=False)
        first = await self.store.get(ROTATED, key)
        if first is None:
            raise InvalidGrant("invalid or expired refresh token")
        grace = self.settings.refresh_reuse_grace_seconds
        if grace <= 0 or now - float(first["at"]) > grace:
            await self.revoke_for_reuse(grant_id, client_id, "reused after the grace period")
        try:
            successor = open_successor(str(first["sealed"]), token)
        except (InvalidTag, ValueError):
            raise InvalidGrant("invalid refresh token") from None
        if await self.store.get(ROTATED, digest(successor)) is not None:
            # Its successor was rotated too: this is an older token.
            await self.revoke_for_reuse(grant_id, client_id, "an older token reused")
        return Rotation(record, successor, grace=True)

    async def revoke_for_reuse(
        self,
        grant_id: str,
        client_id: str,
        why: str,
        message: str = "refresh token already used; the whole grant is revoked",
    ) -> None:
        """The grant of a reused refresh token ends (and only that grant)."""
        await self.revoke_grant(grant_id)
        token_event("revoked", "refresh_reuse")
        log.warning(
            "refresh token reuse; grant revoked", client_id=client_id, grant_id=grant_id, why=why
        )
        raise InvalidGrant(message)

    async def revoke_refresh(self, token: str) -> bool:
        _grant_id, sep, _ = token.partition(".")
        record = await self.store.get(REFRESH, digest(token)) if sep else None
        if record is None:
            return False
        await self.revoke_grant(record["grant_id"])
        return True

    # -- access tokens ----------------------------------------------------------

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
        if claims.get("gid") and await self.is_grant_revoked(claims["gid"]):
            raise InvalidToken("token revoked")

    async def revoke_access_token(self, claims: dict[str, Any]) -> None:
        ttl = max(1, int(claims["exp"]) - int(time.time()) + LEEWAY)
        await self.store.put(REVOKED, claims["jti"], {}, ttl=ttl)

    # -- consent ----------------------------------------------------------------

    @staticmethod
    def _approved_key(sub: str, client_id: str) -> str:
        return digest(f"{sub}\x00{client_id}")

    @staticmethod
    def _consent_key(sub: str, client_id: str, resource: str) -> str:
        return digest(f"{sub}\x00{client_id}\x00{resource}")

    async def remembered_consent(
        self, sub: str, client_id: str, resource: str, scope: list[str]
    ) -> bool:
        return set(scope) <= await self.consented_scopes(sub, client_id, resource)

    async def consented_scopes(self, sub: str, client_id: str, resource: str) -> set[str]:
        """What this person already allowed this client on this resource
        (with what those scopes include)."""
        record = await self.store.get(CONSENTS, self._consent_key(sub, client_id, resource))
        return self.settings.expand_scopes(record.get("scope", [])) if record else set()

    async def has_approved(self, sub: str, client_id: str) -> bool:
        """Whether this person has ever approved this client (any resource)."""
        return await self.store.get(CONSENTS, self._approved_key(sub, client_id)) is not None

    async def remember_consent(
        self, sub: str, client_id: str, resource: str, scope: list[str]
    ) -> None:
        key = self._consent_key(sub, client_id, resource)
        existing = await self.store.get(CONSENTS, key) or {}
        merged = sorted(set(existing.get("scope", [])) | set(scope))
        await self.store.put(CONSENTS, key, {"scope": merged}, ttl=CONSENT_TTL)
        await self.store.put(
            CONSENTS, self._approved_key(sub, client_id), {"approved": True}, ttl=CONSENT_TTL
        )


def user_index(sub: str) -> str:
    """The namespace of one person's grant index (hashed: a user id never
    becomes part of a store key pattern)."""
    return f"user_grants:{digest(sub)[:32]}"


def user_claims(user: dict[str, Any], scope: list[str]) -> dict[str, Any]:
    """OpenID Connect Core section 5.4: claims by scope."""
    claims: dict[str, Any] = {}
    if "email" in scope and user.get("email"):
        claims["email"] = user["email"]
    if "profile" in scope and user.get("name"):
        claims["name"] = user["name"]
    return claims
